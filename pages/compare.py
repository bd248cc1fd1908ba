"""Compare: the runs of one experiment (or any runs) side by side, and what the numbers say.

Curves (val accuracy and loss against epochs and wall-clock time, train vs val), the fine-tuning
timeline, whether each difference between strategies is real (paired t-intervals, Holm-corrected
over the pairs shown, with the seeds that would settle the rest), how much data each needs (a data-efficiency chart when the experiment varied the train fraction), what
fine-tuning changed (each layer group's drift, knowledge kept against accuracy, the target
domain's accuracy, when recorded), a summary and the settings that differ, per-class results for
the runs picked, and image by image what one run fixed and broke against a reference run. Past a
dozen runs, runs that differ only by seed are drawn as one group (a mean and a band). Every table
and chart reads each run at its best epoch or its last, as chosen; the URL keeps the selection.
Summary, statistics, data efficiency and the report compare one score: accuracy, macro-F1 or
balanced accuracy, on the test split when every run measured it (switchable to validation), else
on validation; a grid over LRs can be compared with each strategy at its best LR (chosen on
validation). The curves and per-class results are validation's. After an experiment over backbones
ranked before it (rank-backbones), how well the ranking predicted them: the rank correlation.
"""

import streamlit as st

from tl_core import service
from ui import backbone_ranking, charts, per_class, report, run_diff, session, verdicts
from ui import format as fmt

session.through_router("compare")  # a deep link on a fresh server goes through app.py

store = session.store()
GROUP_AT = 12  # more runs than this are drawn as groups of seeds


def from_url(key: str, param: str, cast=str) -> None:
    """Seed a widget from the URL on the first run of a session (a shared link reopens the view)."""
    if key not in st.session_state and param in st.query_params:
        try:
            st.session_state[key] = cast(st.query_params[param])
        except (ValueError, KeyError):
            return  # a malformed link falls back to the default view


st.title("Compare runs")
st.caption(
    "Pick an experiment to compare its runs (everything but the strategy or seed equal), or pick "
    "any runs. ◆ on a curve marks an epoch where the strategy unfroze more layer groups; hover any "
    "epoch to see what trained then."
)

# --- what to compare (kept in the URL) ------------------------------------------------------------
experiments = store.list_experiments()[::-1]  # newest first
from_url("compare_mode", "runs", lambda v: "Any runs")
from_url("compare_runs", "runs", lambda v: [int(i) for i in v.split(",") if i])
from_url("compare_experiment", "experiment")
from_url("compare_which", "which", lambda v: {"best": "best epoch", "last": "last epoch"}[v])
from_url("compare_smooth", "smooth", float)
mode = st.segmented_control("Compare", ["An experiment", "Any runs"], default="An experiment", key="compare_mode")
pick, tags = st.columns([3, 1])
tag = tags.selectbox("Tag", store.tags(), index=None, key="compare_tag", placeholder="any tag")
if mode == "Any runs":
    everything = {r.id: r for r in store.list_runs(tag=tag)}
    st.session_state["compare_runs"] = [i for i in st.session_state.get("compare_runs", []) if i in everything]
    chosen = pick.multiselect(
        "Runs",
        list(everything),
        key="compare_runs",
        format_func=lambda i: f"#{i} {everything[i].name} · {everything[i].experiment}",
        placeholder="Choose runs to compare",
    )
    runs = sorted((everything[i] for i in chosen), key=lambda r: r.id)
    st.query_params.from_dict({"runs": ",".join(str(r.id) for r in runs)})
else:
    if st.session_state.get("compare_experiment") not in experiments:
        st.session_state.pop("compare_experiment", None)
    experiment = pick.selectbox("Experiment", experiments, key="compare_experiment", placeholder="No experiments yet")
    runs = sorted(store.list_runs(experiment=experiment, tag=tag), key=lambda r: r.id) if experiment else []
    st.query_params.from_dict({"experiment": experiment} if experiment else {})

if not runs:
    st.info("Nothing to compare yet: launch an experiment on **New run**, or pick runs above.", icon=":material/info:")
    st.stop()

view = st.columns([2, 2, 2])
which = {"best epoch": "best", "last epoch": "last"}[
    view[0].segmented_control(
        "Read each run at its",
        ["best epoch", "last epoch"],
        default="best epoch",
        key="compare_which",
        help="Every table, chart and statistic below uses the same choice",
    )
    or "best epoch"
]
smoothing = view[1].slider(
    "Smoothing",
    0.0,
    0.95,
    0.0,
    0.05,
    key="compare_smooth",
    help="An exponential moving average over epochs, for noisy curves (the table is not smoothed)",
)
groups = service.group_runs(runs)
grouped = len(runs) > GROUP_AT and len(groups) < len(runs)
if grouped:
    grouped = not view[2].toggle(
        "Show single runs",
        key="compare_single",
        help=f"{len(runs)} runs are drawn as groups (mean and band over seeds); show every run instead",
    )
differing = service.differing_keys(runs)
keys = differing
if grouped and len(differing) > 1:
    # A grid's every cell on one chart is a hundred lines: group by the first setting that differs
    # until the reader asks for more (the statistics below still compare cell by cell).
    default_keys = differing if len(groups) <= 2 * GROUP_AT else differing[:1]
    keys = st.multiselect(
        "Group the curves by",
        differing,
        default=default_keys,
        key="compare_group_by",
        help="Runs equal in these settings are one line (their mean) with a band (± one std)",
    )
    keys = keys or differing[:1]
    groups = service.group_runs(runs, keys)
st.query_params.update({"which": which, **({"smooth": f"{smoothing:g}"} if smoothing else {})})

# What the summary, the statistics, the data-efficiency chart and the report compare: test when every
# completed run measured it (the checkpoint was chosen on validation), else validation.
scored = st.columns([2, 2, 2])
if service.has_test(runs):
    split = {"test": "test", "validation": "val"}[
        scored[0].segmented_control(
            "Report on",
            ["test", "validation"],
            default="test",
            key="compare_split",
            help="Test: each run's checkpoint chosen on validation, measured once on the test split (an honest "
            "number). Validation: the same data that chose the best epoch, so it flatters every run",
        )
        or "test"
    ]
else:
    split = "val"
    scored[0].caption(
        "Reported on **validation**: not every run measured a test split (train with a `test/` "
        "folder or `--test-fraction` for an unbiased number)."
    )
metric = scored[1].selectbox(
    "Metric",
    list(service.METRICS),
    format_func=service.METRICS.get,
    key="compare_metric",
    help="Macro-F1 and balanced accuracy weigh every class alike: use them on imbalanced data",
)
measure = service.describe(metric, split, which)
measure_short = service.describe(metric, split, which, short=True)

metrics = store.epoch_metrics([r.id for r in runs])
target = st.session_state.get("target_acc", 0.8)
summary = service.summary_rows(runs, metrics, target)
values = {r.id: service.score(r, metrics.get(r.id, {}), which, metric, split) for r in runs}
val_values = {r.id: service.value(r, metrics.get(r.id, {}), which) for r in runs}
target_values = {r.id: service.value(r, metrics.get(r.id, {}), which, "target_acc") for r in runs}
for row in summary:
    row["score"], row["val_acc"], row["target_acc"] = values[row["id"]], val_values[row["id"]], target_values[row["id"]]
with_target = any(v is not None for v in target_values.values())
scored_apart = (metric, split) != ("acc", "val")  # the compared score is not val accuracy: show both

# --- headline numbers --------------------------------------------------------------------------
top = max((r for r in runs if values[r.id] is not None), key=lambda r: values[r.id], default=None)
done = [row for row in summary if row["total_seconds"]]
fastest = min(done, key=lambda row: row["total_seconds"], default=None)
m = st.columns(4)
m[0].metric(
    "Runs",
    len(runs),
    f"{sum(r.status == 'completed' for r in runs)} completed",
    delta_color="off",
    delta_arrow="off",
    border=True,
)
m[1].metric(
    f"{measure_short.capitalize()} ({which} epoch)",
    f"{values[top.id]:.1%}" if top else "–",
    top.name if top else None,
    delta_color="off",
    delta_arrow="off",
    border=True,
    help=f"The best run's {measure}",
)
m[2].metric(
    "Fastest run",
    fmt.format_seconds(fastest["total_seconds"]) if fastest else "–",
    fastest["name"] if fastest else None,
    delta_color="off",
    delta_arrow="off",
    border=True,
)
m[3].metric("Still training", sum(r.status in ("queued", "running") for r in runs), border=True)
if any(r.status in ("queued", "running") for r in runs):
    st.button(
        "Refresh",
        icon=":material/refresh:",
        key="compare_refresh",
        help="Some runs are still training: read their latest epochs",
    )
if not any(metrics.get(r.id) for r in runs):
    st.info("No epoch has finished yet; curves appear after the first one.", icon=":material/hourglass_top:")

# --- curves -----------------------------------------------------------------------------------
bands = [(g.label, g.runs) for g in groups]


timelines = {tuple(service.phases(metrics.get(r.id, {}))) for r in runs if metrics.get(r.id)}


def curve(y: str, x: str = "epoch", among: list | None = None):
    """`y`'s curves of every run, or only of those `among` (groups without a value are left out)."""
    fig = (
        charts.group_bands(bands, metrics, y, smoothing=smoothing)
        if grouped and x == "epoch"
        else charts.curves(runs if among is None else among, metrics, y, x, smoothing=smoothing)
    )
    if x == "epoch" and len(timelines) == 1:  # every run fine-tuned in the same phases: shade them
        fig = charts.shade_phases(fig, metrics[next(r.id for r in runs if metrics.get(r.id))])
    return fig


figures = {"val_acc_epoch": curve("val_acc"), "val_loss_epoch": curve("val_loss")}
left, right = st.columns(2)
left.plotly_chart(figures["val_acc_epoch"], key="val_acc_epoch")
right.plotly_chart(figures["val_loss_epoch"], key="val_loss_epoch")

several = any(len(g.runs) > 1 for g in groups)
views = ["Fine-tuning timeline", "Wall-clock time", "Overfitting gap"] + (["Seeds: mean ± std"] if several else [])
# One view drawn at a time: a grid's page stays quick however many views there are.
shown_view = st.segmented_control("More views", views, default=views[0], key="compare_view") or views[0]
if shown_view == "Fine-tuning timeline":
    st.caption(
        "What trains, epoch by epoch: a bar per phase, darker as more layer groups train; hover for the "
        "trainable parameters and each group's LR."
        + (" One row per strategy: its phases are the same at every setting." if grouped else "")
    )
    by_strategy = service.group_runs(runs, ["strategy"])
    rows = [(g.label, g.runs) for g in by_strategy] if grouped else [(r.name, [r]) for r in runs]
    figures["timeline"] = charts.timeline(rows, metrics)
    st.plotly_chart(figures["timeline"], key="timeline")
elif shown_view == "Wall-clock time":
    st.caption("The same curves against seconds since each run started: what a strategy costs in time.")
    if grouped:
        st.caption("Drawn per run: turn on **Show single runs** above to see them.")
    else:
        a, b = st.columns(2)
        a.plotly_chart(curve("val_acc", "wall_seconds"), key="val_acc_time")
        b.plotly_chart(curve("val_loss", "wall_seconds"), key="val_loss_time")
elif shown_view == "Overfitting gap":
    st.caption("Train (dotted) against val (solid): a widening gap is overfitting.")
    a, b = st.columns(2)
    a.plotly_chart(charts.train_val_gap(runs, metrics, "acc", bands if grouped else None), key="gap_acc")
    b.plotly_chart(charts.train_val_gap(runs, metrics, "loss", bands if grouped else None), key="gap_loss")
else:
    st.caption("Groups run with several seeds: mean and one standard deviation per epoch.")
    a, b = st.columns(2)
    a.plotly_chart(charts.group_bands(bands, metrics, "val_acc", min_runs=2), key="bands_acc")
    b.plotly_chart(charts.group_bands(bands, metrics, "val_loss", min_runs=2), key="bands_loss")

# --- is the difference real? -------------------------------------------------------------------
shown = verdicts.is_the_difference_real(store, runs, metrics, differing, which, metric, split)
best_lr, differences, choices = shown.best_lr, shown.differences, shown.choices

if mode != "Any runs" and (verdict := service.probe_verdict(store, st.session_state["compare_experiment"], which)):
    st.markdown(f":material/science: **The probe before training** recommended a strategy; {verdict}.")
if mode != "Any runs":  # an experiment over backbones ranked before it: was the ranking right?
    backbone_ranking.agreement(st.session_state["compare_experiment"], which, metric, split)

# --- how much data? ----------------------------------------------------------------------------
if len({r.config.get("train_fraction") for r in runs}) > 1:
    st.subheader("How much data do I need?")
    if best_lr:  # each strategy at its best LR at each data size, as the statistics compare them
        efficiency = service.data_efficiency(
            service.at_best_lr(runs, metrics, which, metric),
            metrics,
            which,
            [k for k in keys if k != "lr"],
            metric,
            split,
        )
        st.caption("Each strategy at its best LR (chosen on validation) at each data size.")
    else:
        efficiency = service.data_efficiency(runs, metrics, which, keys, metric, split)  # grouped as the curves are
    figures["data_efficiency"] = charts.data_efficiency(efficiency, measure_short + f" ({which} epoch)")
    st.plotly_chart(figures["data_efficiency"], key="data_efficiency")
    for c in efficiency["crossovers"]:
        st.markdown(f":material/swap_horiz: {c['text']}")
    if not efficiency["crossovers"]:
        st.caption("No curves cross: the order of the groups holds at every data size measured.")

# --- what fine-tuning changed: layer drift, forgetting, the target domain ------------------------
drift = service.drift_profiles(bands if grouped else [(r.name, [r]) for r in runs], metrics, which)
forgetting = service.forgetting_points(runs, metrics, which)
if drift["profiles"] or forgetting["points"] or with_target:
    st.subheader("What fine-tuning changed")
    st.caption(
        "How far each layer group moved from its pretrained weights, how much ImageNet knowledge the body "
        "kept, and accuracy on the target domain, where the runs recorded them."
    )
    if drift["profiles"]:
        figures["drift_overlay"] = charts.drift_overlay(drift, runs, which)
    if forgetting["points"]:
        figures["forgetting"] = charts.forgetting_scatter(forgetting["points"], runs, which)
    if with_target:
        figures["target_acc_epoch"] = curve("target_acc", among=[r for r in runs if target_values[r.id] is not None])
    drawn = [k for k in ("drift_overlay", "forgetting", "target_acc_epoch") if k in figures]
    for start in range(0, len(drawn), 2):
        for col, key in zip(st.columns(2), drawn[start : start + 2]):
            col.plotly_chart(figures[key], key=key)
    if forgetting["skipped"]:
        st.caption(
            "Knowledge kept not measured for "
            + "; ".join(f"{f['name']} ({f['reason']})" for f in forgetting["skipped"][:3])
            + (f"; and {len(forgetting['skipped']) - 3} more" if len(forgetting["skipped"]) > 3 else "")
        )

# --- summary and settings ------------------------------------------------------------------------
st.subheader("Summary")
c1, c2 = st.columns([1, 4])
c1.number_input(
    "Target accuracy",
    0.0,
    1.0,
    0.8,
    0.05,
    key="target_acc",
    format="%.2f",
    help="The table shows how long each run took to first reach it",
)
c2.caption(
    f"{measure.capitalize()}"
    + (f", val accuracy at each run's {which} epoch" if scored_apart else "")
    + ", when its best came, time to the target val accuracy, total time, trainable parameters at the last "
    "epoch (and their share of the model) and training throughput."
)
several_seeds = len({row["seed"] for row in summary}) > 1
st.dataframe(
    summary,
    hide_index=True,
    column_order=[
        "name",
        *(["backbone"] if "backbone" in differing else []),
        "strategy",
        *(["seed"] if several_seeds else []),
        "status",
        *(["score"] if scored_apart else []),
        "val_acc",
        *(["target_acc"] if with_target else []),
        "best_epoch",
        "time_to_target_s",
        "total_seconds",
        "trainable_params",
        "trainable_share",
        "images_per_sec",
    ],
    column_config={
        "id": st.column_config.NumberColumn("ID", width="small"),
        "name": "Run",
        "backbone": "Backbone",
        "strategy": "Strategy",
        "seed": st.column_config.NumberColumn("Seed", width="small"),
        "status": st.column_config.TextColumn("Status", width="small"),
        "score": st.column_config.NumberColumn(
            f"{measure_short.capitalize()} ({which})", format="percent", width="small", help=measure
        ),
        "val_acc": st.column_config.NumberColumn(f"Val acc ({which})", format="percent", width="small"),
        "target_acc": st.column_config.NumberColumn(
            f"Target acc ({which})", format="percent", width="small", help="On the target-domain folder (--target-data)"
        ),
        "best_epoch": st.column_config.NumberColumn("Best epoch", width="small"),
        "time_to_target_s": st.column_config.NumberColumn(
            f"Time to {target:.0%}", format="%.1f s", width="small", help="None: never reached"
        ),
        "total_seconds": st.column_config.NumberColumn("Total time", format="%.1f s", width="small"),
        "trainable_params": st.column_config.NumberColumn(
            "Trainable", format="compact", width="small", help="Trainable parameters at the last epoch"
        ),
        "trainable_share": st.column_config.NumberColumn(
            "Trainable share",
            format="percent",
            width="small",
            help="Their share of all the model's parameters (LoRA's adapters counted in both); "
            "none for runs recorded before it was",
        ),
        "images_per_sec": st.column_config.NumberColumn("Images/s", format="%.0f", width="small"),
    },
)
differs_only = st.toggle("Only settings that differ", value=True, key="compare_differs")
settings_rows = service.config_table(runs, differs_only=differs_only)
st.dataframe(settings_rows, hide_index=True)
downloads = st.container(horizontal=True)
downloads.download_button(
    "Summary CSV", lambda: report.csv_text(summary), "summary.csv", "text/csv", icon=":material/download:"
)
downloads.download_button(
    "Per-epoch metrics CSV",
    lambda: report.csv_text(service.metric_rows(runs, metrics)),
    "metrics.csv",
    "text/csv",
    icon=":material/download:",
)  # made when clicked: every epoch of every run
title = st.session_state.get("compare_experiment") if mode != "Any runs" else f"{len(runs)} runs"
downloads.download_button(
    "HTML report",
    lambda: report.build(
        f"TransferLab: {title}",
        f"{len(runs)} runs, each read at its {which} epoch; compared: {measure}",
        [
            (
                "Curves",
                [
                    figures["val_acc_epoch"],
                    figures["val_loss_epoch"],
                    charts.timeline([(g.label, g.runs) for g in service.group_runs(runs, ["strategy"])], metrics),
                ],
            ),
            (
                "Is the difference real?",
                [
                    fmt.verdict_method(measure, differences, best_lr),
                    *(
                        [
                            [
                                {
                                    **c["cell"],
                                    "strategy": c["strategy"],
                                    "best LR": service.lr_text(c["lr"]),
                                    "val mean": c["val_mean"],
                                    "runs": c["n"],
                                }
                                for c in choices
                            ]
                        ]
                        if best_lr
                        else []
                    ),
                    *(d["text"] for d in differences),
                ]
                if differences
                else ["one strategy, or one seed each"],
            ),
            *(
                [("How much data", [figures["data_efficiency"], *(c["text"] for c in efficiency["crossovers"])])]
                if "data_efficiency" in figures
                else []
            ),
            *(
                [
                    (
                        "What fine-tuning changed",
                        [figures[k] for k in ("drift_overlay", "forgetting", "target_acc_epoch") if k in figures],
                    )
                ]
                if drift["profiles"] or forgetting["points"] or with_target
                else []
            ),
            ("Summary", [summary]),
            ("Settings", [service.config_table(runs, differs_only=False)]),
        ],
    ),
    "transferlab-report.html",
    "text/html",
    icon=":material/description:",
    help="One HTML file with these charts, tables, statistics and every setting; opens offline",
)

names = [r.name for r in runs]
label = {r.id: r.name if names.count(r.name) == 1 else f"{r.name} (#{r.id})" for r in runs}

# --- image by image: what one run fixed and broke against a reference -------------------------------
run_diff.image_by_image(store, runs, label)

# --- per-class results, for the runs picked ----------------------------------------------------------
per_class.per_class(store, runs, groups, values, label, which, split)
