"""Runs: every run with its live progress, who launched it and where it ran; cancel, resume, delete,
or open one.

The table refreshes itself every 2 s from the run records alone (no metric rows), so it stays
cheap however long the runs are.
"""

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from tl_core import service
from tl_core.errors import UserError
from ui import format as fmt
from ui import session

session.through_router("runs")  # a deep link on a fresh server goes through app.py

store = session.store()

st.title("Runs")
st.caption(
    "Every queued, running and finished run. The table updates by itself; training goes on "
    "in the background worker whether or not this page is open."
)

left, middle, right, who = st.columns([2, 3, 2, 2])
experiments = store.list_experiments()
experiment = left.selectbox(
    "Experiment", experiments[::-1], index=None, key="runs_experiment", placeholder="All experiments"
)
statuses = middle.multiselect("Status", service.STATUSES, key="runs_statuses", placeholder="All statuses")
tag = right.selectbox(
    "Tag", store.tags(), index=None, key="runs_tag", placeholder="Any tag", help="Tags are set on a run's detail page"
)
people = who.multiselect(
    "Launched by",
    store.launchers(experiment),
    key="runs_launched_by",
    placeholder="Anyone",
    help="The signed-in person (or the OS user at the command line) who launched the run",
)

COLUMNS = {
    "name": st.column_config.TextColumn("Run"),
    "experiment": st.column_config.TextColumn("Experiment"),
    "strategy": st.column_config.TextColumn("Strategy"),
    "backbone": st.column_config.TextColumn("Backbone"),
    "status": st.column_config.TextColumn("Status", width="small"),
    "epoch": st.column_config.TextColumn("Epoch", width="small", help="Epochs done of the run's total"),
    "progress": st.column_config.ProgressColumn(
        "Progress", min_value=0.0, max_value=1.0, format="percent", width="small"
    ),
    "eta": st.column_config.TextColumn("ETA", width="small", help="Time left at the pace so far"),
    "best_val_acc": st.column_config.NumberColumn("Best val acc", format="percent", width="small"),
    "test_acc": st.column_config.NumberColumn(
        "Test acc",
        format="percent",
        width="small",
        help="On the held-out test split, at the epoch chosen on val (blank: the run has no test split)",
    ),
    "duration": st.column_config.TextColumn("Duration", width="small"),
    "tags": st.column_config.ListColumn("Tags"),
    "launched_by": st.column_config.TextColumn("Launched by"),
    "where": st.column_config.TextColumn(
        "Ran on", help="The executor (local worker, ray, or here: the command line) and the host that trained the run"
    ),
}


@st.fragment(run_every=2)
def live_runs(experiment: str | None, statuses: list[str], tag: str | None, people: list[str]) -> None:
    """Counts, the table and the actions, re-read every 2 s (run records only)."""
    runs = store.list_runs(experiment, statuses or None, tag=tag, launched_by=people)
    counts = service.status_counts(runs)
    for col, status in zip(st.columns(5), service.STATUSES):
        col.metric(status.capitalize(), counts[status], border=True)
    if not runs:
        st.info("No runs here yet. Start some on **New run**.", icon=":material/info:")
        return
    order = [c for c in COLUMNS if c != "experiment" or experiment is None]
    st.dataframe(fmt.runs_rows(runs), hide_index=True, column_config=COLUMNS, column_order=order)
    manage(runs)


def act(bar, label: str, icon: str, key: str, allowed: bool, help: str, do, done: str) -> None:
    """A button for a service action: a toast when done, the reason when refused."""
    if bar.button(label, icon=icon, key=key, disabled=not allowed, help=help):
        try:
            do()
            st.toast(done, icon=icon)
        except UserError as e:
            st.error(fmt.form_message(e))


def manage(runs: list) -> None:
    st.subheader("Manage a run")
    by_id = {r.id: r for r in runs}
    picked = st.selectbox(
        "Run", list(by_id), key="runs_pick", format_func=lambda i: f"#{i}  {by_id[i].name}  ·  {by_id[i].experiment}"
    )
    run = by_id[picked]
    st.caption(f"**{run.name}** is {run.status}" + (f": {run.error}" if run.error else "."))
    bar = st.container(horizontal=True)
    if bar.button("Open details", icon=":material/insights:", key="open_run"):
        try:
            st.switch_page("pages/run_detail.py", query_params={"run": str(run.id)})
        except StreamlitPageNotFoundError:  # this page run on its own, without app.py's navigation
            st.markdown(f"[Run {run.id} details](run_detail?run={run.id})")
    act(
        bar,
        "Cancel run",
        ":material/stop_circle:",
        "cancel_run",
        run.status in ("queued", "running"),
        "Queued runs are cancelled at once; running ones stop at their next batch",
        lambda: service.cancel_run(store, run.id),
        f"Run {run.id}: cancel requested",
    )
    act(
        bar,
        "Resume run",
        ":material/replay:",
        "resume_run",
        run.status in ("failed", "cancelled"),
        "Queue a failed or cancelled run to continue from its last checkpoint",
        lambda: service.resume_run(store, run.id),
        f"Run {run.id}: queued to resume",
    )
    if bar.button(
        "Delete run",
        icon=":material/delete:",
        key="delete_run",
        disabled=run.status not in service.FINISHED,
        help="Only finished runs can be deleted; cancel a running one first",
    ):
        st.session_state["confirm_delete"] = run.id
    # A two-step delete whose state lives in the session, so the 2 s refresh cannot lose it.
    if st.session_state.get("confirm_delete") == run.id:
        with st.container(border=True):
            st.warning(
                f"Delete run **#{run.id} {run.name}** with its metrics, checkpoints and log? This cannot be undone.",
                icon=":material/warning:",
            )
            yes_no = st.container(horizontal=True)
            if yes_no.button("Delete for good", type="primary", key="delete_confirm"):
                st.session_state.pop("confirm_delete")
                try:
                    service.delete_run(store, run.id)
                except UserError as e:
                    st.error(str(e))
                else:
                    st.toast(f"Deleted run {run.id}", icon=":material/delete:")
                    st.rerun()
            if yes_no.button("Keep it", key="delete_cancel"):
                st.session_state.pop("confirm_delete")
                st.rerun()


live_runs(experiment, statuses, tag, people)
