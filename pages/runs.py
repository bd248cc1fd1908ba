"""Runs: every run with its live progress; cancel, delete, or open one.

The table refreshes itself every 2 s from the run records alone (no metric rows), so it stays
cheap however long the runs are.
"""

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from tl_core import dashboard
from tl_core.errors import UserError

store = dashboard.open_store()

st.title("Runs")
st.caption("Every queued, running and finished run. The table updates by itself; training goes on "
           "in the background worker whether or not this page is open.")

left, right = st.columns([2, 3])
experiments = store.list_experiments()
experiment = left.selectbox("Experiment", experiments[::-1], index=None, key="runs_experiment",
                            placeholder="All experiments")
statuses = right.multiselect("Status", dashboard.STATUSES, key="runs_statuses", placeholder="All statuses")

COLUMNS = {
    "id": st.column_config.NumberColumn("ID", width="small"),
    "name": st.column_config.TextColumn("Name"),
    "experiment": st.column_config.TextColumn("Experiment"),
    "backbone": st.column_config.TextColumn("Backbone"),
    "strategy": st.column_config.TextColumn("Strategy"),
    "seed": st.column_config.NumberColumn("Seed", width="small"),
    "status": st.column_config.TextColumn("Status"),
    "epoch": st.column_config.TextColumn("Epoch", help="Epochs done of the run's total"),
    "progress": st.column_config.ProgressColumn("Progress", min_value=0.0, max_value=1.0, format="percent"),
    "eta": st.column_config.TextColumn("ETA", help="Time left at the pace so far"),
    "best_val_acc": st.column_config.NumberColumn("Best val acc", format="percent"),
    "duration": st.column_config.TextColumn("Duration"),
    "created": st.column_config.TextColumn("Queued at"),
}
ICONS = {"queued": "⏳ queued", "running": "▶️ running", "completed": "✅ completed", "failed": "❌ failed",
         "cancelled": "⏹️ cancelled"}


@st.fragment(run_every=2)
def live_table(experiment: str | None, statuses: list[str]) -> None:
    runs = store.list_runs(experiment, statuses or None)
    counts = dashboard.status_counts(runs)
    cols = st.columns(5)
    for col, status in zip(cols, dashboard.STATUSES):
        col.metric(status.capitalize(), counts[status], border=True)
    if not runs:
        st.info("No runs here yet. Start some on **New run**.", icon=":material/info:")
        return
    rows = dashboard.runs_rows(runs)
    for row in rows:
        row["status"] = ICONS.get(row["status"], row["status"])
    st.dataframe(rows, hide_index=True, column_config=COLUMNS, column_order=list(COLUMNS))


live_table(experiment, statuses)

# --- actions on one run -------------------------------------------------------------------------
st.subheader("Manage a run")
runs = store.list_runs(experiment, statuses or None)
if not runs:
    st.caption("No runs to manage.")
    st.stop()
by_id = {r.id: r for r in runs}
picked = st.selectbox("Run", list(by_id), key="runs_pick",
                      format_func=lambda i: f"#{i}  {by_id[i].name}  ·  {by_id[i].experiment}  ·  {by_id[i].status}")
run = by_id[picked]
open_col, cancel_col, delete_col, _ = st.columns([1, 1, 1, 3])
if open_col.button("Open details", icon=":material/insights:", key="open_run"):
    try:
        st.switch_page("pages/run_detail.py", query_params={"run": str(run.id)})
    except StreamlitPageNotFoundError:  # this page run on its own, without app.py's navigation
        st.markdown(f"[Run {run.id} details](run_detail?run={run.id})")
if cancel_col.button("Cancel run", icon=":material/stop_circle:", key="cancel_run",
                     disabled=run.status not in ("queued", "running"),
                     help="Queued runs are cancelled at once; running ones stop at their next batch"):
    try:
        dashboard.cancel_run(store, run.id)
        st.toast(f"Run {run.id}: cancel requested", icon=":material/stop_circle:")
    except UserError as e:
        st.error(str(e))
with delete_col.popover("Delete run", icon=":material/delete:", disabled=run.status not in dashboard.FINISHED,
                        help="Only finished runs can be deleted; cancel a running one first"):
    st.markdown(f"Delete run **#{run.id} {run.name}**, its metrics, checkpoints and log? This cannot be undone.")
    if st.button("Delete for good", type="primary", key="delete_run"):
        try:
            dashboard.delete_run(store, run.id)
        except UserError as e:
            st.error(str(e))
        else:
            st.toast(f"Deleted run {run.id}", icon=":material/delete:")
            st.rerun()
if run.error:
    st.error(f"Run {run.id} {run.status}: {run.error}", icon=":material/error:")
