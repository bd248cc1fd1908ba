"""Compare: the runs of one experiment (or any runs) side by side.

Curves per run (val accuracy and loss against epochs and wall-clock time, train vs val),
mean ± std bands for strategies run with several seeds, a summary table, per-class accuracy
and confusion matrices. Markers on the curves show where a strategy unfroze more layers.
"""

import csv
import io

import streamlit as st

from tl_core import service
from ui import charts, session
from ui import format as fmt

session.through_router("compare")  # a deep link on a fresh server goes through app.py

store = session.store()


def to_csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


st.title("Compare runs")
st.caption("Pick an experiment to compare its runs (everything but the strategy or seed equal), or pick "
           "any runs. ◆ on a curve marks an epoch where the strategy unfroze more layer groups.")

experiments = store.list_experiments()[::-1]  # newest first
wanted = st.query_params.get("experiment")
mode = st.segmented_control("Compare", ["An experiment", "Any runs"], default="An experiment", key="compare_mode")
if mode == "Any runs":
    everything = {r.id: r for r in store.list_runs()}
    chosen = st.multiselect("Runs", list(everything), key="compare_runs",
                            format_func=lambda i: f"#{i} {everything[i].name} · {everything[i].experiment}",
                            placeholder="Choose runs to compare")
    runs = sorted((everything[i] for i in chosen), key=lambda r: r.id)
else:
    experiment = st.selectbox("Experiment", experiments, key="compare_experiment",
                              index=experiments.index(wanted) if wanted in experiments else 0,
                              placeholder="No experiments yet")
    runs = sorted(store.list_runs(experiment=experiment), key=lambda r: r.id) if experiment else []

if not runs:
    st.info("Nothing to compare yet: launch an experiment on **New run**, or pick runs above.",
            icon=":material/info:")
    st.stop()

metrics = store.epoch_metrics([r.id for r in runs])
with_epochs = [r for r in runs if metrics.get(r.id)]
target = st.session_state.get("target_acc", 0.8)
summary = service.summary_rows(runs, metrics, target)

# --- headline numbers --------------------------------------------------------------------------
best = max((r for r in runs if r.best_val_acc is not None), key=lambda r: r.best_val_acc, default=None)
done = [row for row in summary if row["total_seconds"]]
fastest = min(done, key=lambda row: row["total_seconds"], default=None)
m = st.columns(4)
m[0].metric("Runs", len(runs), f"{sum(r.status == 'completed' for r in runs)} completed", delta_color="off",
            delta_arrow="off", border=True)
m[1].metric("Best val accuracy", f"{best.best_val_acc:.1%}" if best else "–", best.name if best else None,
            delta_color="off", delta_arrow="off", border=True)
m[2].metric("Fastest run", fmt.format_seconds(fastest["total_seconds"]) if fastest else "–",
            fastest["name"] if fastest else None, delta_color="off", delta_arrow="off", border=True)
m[3].metric("Still training", sum(r.status in ("queued", "running") for r in runs), border=True)
if any(r.status in ("queued", "running") for r in runs):
    st.button("Refresh", icon=":material/refresh:", key="compare_refresh", help="Some runs are still training: "
              "read their latest epochs")
if not with_epochs:
    st.info("No epoch has finished yet; curves appear after the first one.", icon=":material/hourglass_top:")

# --- curves -----------------------------------------------------------------------------------
left, right = st.columns(2)
left.plotly_chart(charts.curves(runs, metrics, "val_acc", "epoch"), key="val_acc_epoch")
right.plotly_chart(charts.curves(runs, metrics, "val_loss", "epoch"), key="val_loss_epoch")

groups: dict[str, int] = {}
for r in runs:
    groups[r.config.get("strategy", "")] = groups.get(r.config.get("strategy", ""), 0) + 1
tab_names = ["Wall-clock time", "Overfitting gap"] + (["Seeds: mean ± std"] if max(groups.values()) > 1 else [])
tabs = st.tabs(tab_names)
with tabs[0]:
    st.caption("The same curves against seconds since each run started: what a strategy costs in time.")
    a, b = st.columns(2)
    a.plotly_chart(charts.curves(runs, metrics, "val_acc", "wall_seconds"), key="val_acc_time")
    b.plotly_chart(charts.curves(runs, metrics, "val_loss", "wall_seconds"), key="val_loss_time")
with tabs[1]:
    st.caption("Train (dotted) against val (solid): a widening gap is overfitting.")
    a, b = st.columns(2)
    a.plotly_chart(charts.train_val_gap(runs, metrics, "acc"), key="gap_acc")
    b.plotly_chart(charts.train_val_gap(runs, metrics, "loss"), key="gap_loss")
if len(tabs) > 2:
    with tabs[2]:
        st.caption("Strategies run with several seeds: mean and one standard deviation per epoch.")
        a, b = st.columns(2)
        a.plotly_chart(charts.seed_bands(runs, metrics, "val_acc"), key="bands_acc")
        b.plotly_chart(charts.seed_bands(runs, metrics, "val_loss"), key="bands_loss")

# --- summary table -------------------------------------------------------------------------------
st.subheader("Summary")
c1, c2 = st.columns([1, 4])
c1.number_input("Target accuracy", 0.0, 1.0, 0.8, 0.05, key="target_acc", format="%.2f",
                help="The table shows how long each run took to first reach it")
c2.caption("Best val accuracy and when it came, time to the target accuracy, total time, trainable "
           "parameters at the last epoch and training throughput.")
several_seeds = len({row["seed"] for row in summary}) > 1
st.dataframe(summary, hide_index=True, column_order=[
    "name", "strategy", *(["seed"] if several_seeds else []), "status", "best_val_acc", "best_epoch", "final_val_acc",
    "time_to_target_s", "total_seconds", "trainable_params", "images_per_sec"], column_config={
    "id": st.column_config.NumberColumn("ID", width="small"),
    "name": "Run", "strategy": "Strategy", "seed": st.column_config.NumberColumn("Seed", width="small"),
    "status": st.column_config.TextColumn("Status", width="small"),
    "best_val_acc": st.column_config.NumberColumn("Best val acc", format="percent", width="small"),
    "best_epoch": st.column_config.NumberColumn("Best epoch", width="small"),
    "final_val_acc": st.column_config.NumberColumn("Final val acc", format="percent", width="small"),
    "time_to_target_s": st.column_config.NumberColumn(f"Time to {target:.0%}", format="%.1f s", width="small",
                                                      help="None: never reached"),
    "total_seconds": st.column_config.NumberColumn("Total time", format="%.1f s", width="small"),
    "trainable_params": st.column_config.NumberColumn("Trainable", format="compact", width="small",
                                                      help="Trainable parameters at the last epoch"),
    "images_per_sec": st.column_config.NumberColumn("Images/s", format="%.0f", width="small"),
})
downloads = st.container(horizontal=True)
downloads.download_button("Summary CSV", to_csv(summary), "summary.csv", "text/csv", icon=":material/download:")
downloads.download_button("Per-epoch metrics CSV", to_csv(service.metric_rows(runs, metrics)), "metrics.csv", "text/csv",
                   icon=":material/download:")

# --- per-class results -------------------------------------------------------------------------
names = [r.name for r in runs]
label = {r.id: r.name if names.count(r.name) == 1 else f"{r.name} (#{r.id})" for r in runs}
class_rows = {r.id: rows for r in runs if (rows := store.class_metrics(r.id))}
st.subheader("Per class")
if not class_rows:
    st.caption("Per-class results appear when a run completes.")
    st.stop()
st.plotly_chart(charts.per_class_recall(runs, class_rows, label), key="per_class")
st.markdown("**Confusion matrices** at each run's best epoch (rows: true class, columns: predicted)")
items = list(class_rows.items())
for start in range(0, len(items), 3):
    for col, (run_id, rows) in zip(st.columns(3), items[start:start + 3]):
        col.plotly_chart(charts.confusion_heatmap([c.class_name for c in rows], [c.confusion for c in rows],
                                                  title=label[run_id]), key=f"confusion_{run_id}")
