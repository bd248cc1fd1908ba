"""New run: choose a dataset, a backbone (or rank candidates first) and one or more strategies, then queue the runs.

The preview, the data check's findings (excluding images from the runs, or moving them to another class),
the parameter counts, the strategy knobs and the plan (how many runs, about how
long, from earlier runs here) follow every change. Beside the strategies: a regularizer, a target
domain to adapt to, input channels and memory settings, each labelled as its CLI flag. A grid is
one launch: strategies x train fractions x LRs x seeds. Launch queues every run of the plan or, if any is invalid, none.
"""

import time
from pathlib import Path

import streamlit as st

from tl_core import service
from tl_core.config import choices, default, make_config
from tl_core.errors import UserError
from tl_core.service import jobs
from ui import backbone_ranking, charts, data_check, run_form, session
from ui import format as fmt

session.through_router("new_run")  # a deep link on a fresh server goes through app.py

DEFAULT_BACKBONE = default("backbone")
DEFAULT_STRATEGY = default("strategy")


@st.cache_data(show_spinner="Describing backbones…")
def backbone_table() -> list[dict]:
    return service.backbone_table()


@st.cache_data(show_spinner=False)
def strategy_table() -> list[dict]:
    return service.strategy_table()


@st.cache_data(show_spinner="Scanning the dataset…", ttl=60)
def dataset_report(
    path: str, val_fraction: float, split_seed: int, test_fraction: float, exclude: tuple[tuple, ...] = ()
) -> dict:
    entries = [{"path": p, "action": a, "to": to} for p, a, to in exclude]
    return service.dataset_report(path, val_fraction, split_seed, test_fraction, entries)


@st.cache_data(show_spinner=False, ttl=60)
def sample_images(path: str) -> dict[str, list[str]]:
    return service.sample_images(path, per_class=4)


@st.cache_data(show_spinner=False)
def param_counts(backbone: str, strategy: str, settings: tuple, num_classes: int) -> dict:
    return service.strategy_param_counts(backbone, strategy, dict(settings), num_classes)


st.title("New run")
st.caption(
    "Pick a dataset, a backbone and one or more transfer strategies. Launch queues the runs; "
    "a background worker trains them, so you can close this tab."
)

# --- 1. dataset ----------------------------------------------------------------------------------
st.header("1 · Dataset", divider="gray")
roots = service.data_roots()
folders = service.dataset_folders(roots)
left, right = st.columns(2)
chosen = left.selectbox(
    "Dataset folder",
    folders,
    key="dataset_choice",
    format_func=lambda p: f"{Path(p).name}   ({Path(p).parent})",
    placeholder="no dataset folders under the data roots",
    help="Sub-folders of the data roots: "
    "one folder of images per class, or train/ and val/ (and test/) folders holding those.",
)
typed = right.text_input("…or type a folder path", key="dataset_typed", placeholder="/path/inside/a/data/root")
st.caption("Data roots: " + ", ".join(f"`{r}`" for r in roots) + " (set TL_DATA_ROOTS to add more).")

data_path, report = None, None
if not (typed or chosen):
    st.info(
        "No dataset folders under the data roots yet: write the demo datasets with "
        "`python -m tl_core demo-data data`, or put a folder of class sub-folders there.",
        icon=":material/folder_open:",
    )
else:
    try:
        data_path = service.resolve_data_path(typed or chosen, roots)
        report = dataset_report(
            data_path,
            st.session_state.get("val_fraction", default("val_fraction")),
            int(st.session_state.get("split_seed", default("split_seed"))),
            st.session_state.get("test_fraction", default("test_fraction")),
            tuple((e.path, e.action, e.to) for e in service.list_exclusions(session.store(), data_path)),
        )
    except UserError as e:
        st.error(fmt.form_message(e), icon=":material/folder_off:")

folder_name = Path(data_path).name if data_path else "experiment"
st.session_state.setdefault("experiment", f"{folder_name}-{time.strftime('%m%d-%H%M')}")  # the probe's and check's too
if report:
    per_class_train = report["train_images"] / max(1, report["num_classes"])
    m = st.columns(5)
    m[0].metric("Classes", report["num_classes"])
    m[1].metric("Train images", report["train_images"])
    m[2].metric("Val images", report["val_images"], help="Each run's epoch is chosen on these")
    m[3].metric(
        "Test images",
        report["test_images"],
        help="Held out: scored once, after training, at the epoch "
        "chosen on val (a test/ folder, or Test fraction in 5 · Training)",
    )
    m[4].metric("Median image size", "×".join(str(v) for v in report["image_size"]["median"]))
    if (applied := report["applied"])["excluded"] or applied["relabelled"]:
        st.caption(
            f"Counted as the runs you queue will split it: without the {len(applied['excluded'])} excluded "
            f"images, with the {len(applied['relabelled'])} moved ones in their new class (the exclusion list, "
            "in Check the data below)."
        )
    if not report["test_images"]:
        st.caption(
            "No test split: runs are chosen and reported on val alone. Add a test/ folder, or a Test "
            "fraction in 5 · Training, to report on images no choice has seen."
        )
    for warning in report["warnings"]:
        st.warning(warning, icon=":material/warning:")
    chart, thumbs = st.columns([2, 3])
    chart.plotly_chart(charts.split_counts(report["per_class"]), key="split_counts")
    with thumbs:
        st.caption("Sample images per class")
        samples = sample_images(data_path)
        names = list(samples)
        for row in range(0, len(names), 5):
            for col, name in zip(st.columns(5), names[row : row + 5]):
                col.markdown(f"**{name}**")
                col.image(samples[name], width=44)
    if report["skipped"]:
        with st.expander(f"{len(report['skipped'])} skipped files"):
            st.dataframe(report["skipped"], hide_index=True)
    check_on = ("backbone", "image_size", "experiment", "val_fraction", "split_seed", "test_fraction")
    data_check.section(session.store(), data_path, {k: st.session_state[k] for k in check_on if k in st.session_state})
else:
    per_class_train = 0

# --- 2. backbone ---------------------------------------------------------------------------------
st.header("2 · Backbone", divider="gray")
table = backbone_table()
by_name = {row["backbone"]: row for row in table}
names = list(by_name)
zoo = st.segmented_control(
    "From", ["TransferLab's backbones", "timm's models"], default="TransferLab's backbones", key="backbone_from"
)
backbone = st.selectbox(
    "Backbone",
    names,
    index=names.index(DEFAULT_BACKBONE) if DEFAULT_BACKBONE in names else 0,
    key="backbone",
    format_func=lambda n: (
        f"{n}  ·  {by_name[n]['params'] / 1e6:.1f}M params  ·  ImageNet top-1 "
        f"{by_name[n]['imagenet_top1'] or 0:.1f}%  ·  weights {by_name[n]['weights']}"
    ),
    disabled=zoo == "timm's models",
)
weights_here = by_name[backbone]["weights"]
if zoo == "timm's models":
    picked = run_form.timm_picker() or st.stop()
    backbone, weights_here = picked["backbone"], picked["weights"]
    try:
        service.layer_groups(backbone)  # a model TransferLab cannot split into layer groups says why here
    except UserError as e:
        st.error(fmt.form_message(e), icon=":material/error:")
        st.stop()
if weights_here not in ("offline", "cached"):
    st.warning(
        f"{backbone}'s pretrained weights are {weights_here}: without internet "
        f"access its pretrained runs will fail. The EfficientNet-Lite backbones work offline.",
        icon=":material/cloud_off:",
    )
with st.expander("All backbones"):
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "backbone": "Backbone",
            "params": st.column_config.NumberColumn("Params", format="compact"),
            "layer_groups": st.column_config.NumberColumn("Layer groups", help="Groups incl. the new head"),
            "imagenet_top1": st.column_config.NumberColumn("ImageNet top-1 (%)", format="%.1f"),
            "weights": st.column_config.TextColumn(
                "Weights",
                help="offline: ships in a package; cached: downloaded before; needs download: internet required",
            ),
        },
    )
backbones = backbone_ranking.candidates(table, backbone, data_path)  # the plan spans these (one, or the ranked)

# --- 3. strategies -------------------------------------------------------------------------------
st.header("3 · Strategies", divider="gray")
st.caption("Tick one strategy for a single run, or several to compare them in one experiment (everything else equal).")
store = session.store()
recommended: list[str] = []
if report:
    image_size_now = int(st.session_state.get("image_size", default("image_size")))
    session.job_result("probe_job", store)
    # The probe sees the images at the weights' native size, whatever the form's (probe.py).
    probed = jobs.latest(store, st.session_state["experiment"], "probe", data=data_path, backbone=backbone)
    if probed:
        recommended, why = probed["recommendation"]["strategies"], probed["recommendation"]["why"]
        st.info(f"**Recommended: {', '.join(recommended)}.** The probe measured {why}.", icon=":material/science:")
        st.caption(
            f"Probe: linear probe {probed['linear_probe_acc']:.0%}, k-NN {probed['knn_acc']:.0%}, chance "
            f"{probed['chance']:.0%} on {probed['probed_images']['train']} + {probed['probed_images']['val']} "
            f"images at {probed['image_size']} px (the weights' native size) in {probed['seconds']:.1f} s; "
            f"its features are cached for feature extraction runs at that size."
        )
    else:
        recommended, why = service.recommend_strategy(per_class_train)
        st.info(
            f"**Recommended: {', '.join(recommended)}.** Rule of thumb: {why}. Probe the data to measure how "
            f"well pretrained features already separate its classes.",
            icon=":material/lightbulb:",
        )
    if st.button(
        "Probe the data",
        icon=":material/science:",
        key="probe",
        disabled="probe_job" in st.session_state and not probed,
        help="A linear probe and k-NN on frozen pretrained features of up to 50 images per class: how "
        "far the data is from ImageNet, and which strategy to try first (seconds)",
    ):
        try:
            cfg = make_config(
                data=data_path,
                backbone=backbone,
                image_size=image_size_now,
                experiment=st.session_state["experiment"].strip() or "default",
                val_fraction=st.session_state.get("val_fraction", default("val_fraction")),
                split_seed=int(st.session_state.get("split_seed", default("split_seed"))),
                test_fraction=st.session_state.get("test_fraction", default("test_fraction")),
            )
            st.session_state["probe_job"] = jobs.start(store, "probe", cfg)
            st.rerun()
        except UserError as e:
            st.error(fmt.form_message(e), icon=":material/error:")

strategies = strategy_table()
ticked_now = [
    s["strategy"]
    for s in strategies
    if st.session_state.get(f"strategy_{s['strategy']}", s["strategy"] == DEFAULT_STRATEGY)
]
knobs_in_use = {k for s in strategies if s["strategy"] in ticked_now for k in s["knobs"]}

strategy_list = st.container()  # filled below, once the knobs (which change its counts) are read

# The knobs every ticked strategy reads; they shape the parameter counts shown beside each one.
st.markdown("**Settings of the ticked strategies**")
settings: dict = {"epochs": st.session_state.get("epochs", default("epochs"))}
cols = run_form.grid()  # one grid for the head and every knob in use
settings["head"] = next(cols).segmented_control(
    "Head",
    choices("head"),
    default=default("head"),
    key="head",
    help="The new classifier: one Linear layer, or Linear-ReLU-Dropout-Linear",
) or default("head")
if settings["head"] == "mlp":
    settings["hidden"] = next(cols).number_input("Hidden units", 1, 8192, default("hidden"), key="hidden")
    settings["dropout"] = next(cols).number_input("Dropout", 0.0, 0.95, default("dropout"), 0.05, key="dropout")
n_groups = service.layer_groups(backbone)
if "unfreeze" in knobs_in_use:
    if st.session_state.get("unfreeze", 0) > n_groups - 1:  # a smaller backbone than before was chosen
        st.session_state["unfreeze"] = n_groups - 1
    settings["unfreeze"] = next(cols).number_input(
        "Groups to unfreeze (partial)",
        1,
        max(1, n_groups - 1),
        min(default("unfreeze"), n_groups - 1),
        key="unfreeze",
        help=f"Layer groups trained below the head; {backbone} has {n_groups - 1}",
    )
if "lr_decay" in knobs_in_use:
    settings["lr_decay"] = next(cols).number_input(
        "LR decay per group",
        1.0,
        100.0,
        default("lr_decay"),
        0.5,
        key="lr_decay",
        help="partial / discriminative / progressive: the head trains at the LR, each group below it at "
        "the LR of the group above / decay",
    )
if "layer_decay" in knobs_in_use:
    settings["layer_decay"] = next(cols).number_input(
        "Layer decay per block (ViT)",
        0.05,
        1.0,
        default("layer_decay"),
        0.05,
        key="layer_decay",
        help=fmt.flag_help("layer_decay"),
    )
if "head_lr_factor" in knobs_in_use:
    settings["head_lr_factor"] = next(cols).number_input(
        "Head LR factor (full)",
        0.01,
        1000.0,
        default("head_lr_factor"),
        1.0,
        key="head_lr_factor",
        help="full: the new, random head trains at this multiple of the pretrained layers' LR",
    )
if "head_epochs" in knobs_in_use:
    settings["head_epochs"] = next(cols).number_input(
        "Head-only epochs (two_phase)", 1, 1000, default("head_epochs"), key="head_epochs"
    )
    settings["phase2_lr_factor"] = next(cols).number_input(
        "Phase-2 LR factor (two_phase)",
        0.001,
        10.0,
        default("phase2_lr_factor"),
        0.05,
        key="phase2_lr_factor",
        format="%.3f",
    )
if "unfreeze_on" in knobs_in_use:
    settings["unfreeze_on"] = next(cols).selectbox(
        "Unfreeze on (progressive)",
        choices("unfreeze_on"),
        key="unfreeze_on",
        help="schedule: one more group every K epochs; plateau: when val loss stops improving",
    )
    if settings["unfreeze_on"] == "schedule":
        settings["unfreeze_every"] = next(cols).number_input(
            "Unfreeze every (epochs)", 1, 1000, default("unfreeze_every"), key="unfreeze_every"
        )
    else:
        settings["patience"] = next(cols).number_input(
            "Patience (epochs)", 1, 1000, default("patience"), key="patience"
        )
    settings["stage_lr_factor"] = next(cols).number_input(
        "Stage LR factor (progressive)",
        0.01,
        1.0,
        default("stage_lr_factor"),
        0.05,
        key="stage_lr_factor",
        help="progressive: every group's LR is multiplied by this at each unfreezing step (1: unchanged)",
    )
if "lora_rank" in knobs_in_use:
    settings["lora_rank"] = next(cols).number_input(
        "LoRA rank (lora)",
        1,
        1024,
        default("lora_rank"),
        key="lora_rank",
        help=fmt.flag_help("lora_rank"),
    )
    settings["lora_alpha"] = next(cols).number_input(
        "LoRA alpha (lora)",
        0.01,
        10000.0,
        default("lora_alpha"),
        1.0,
        key="lora_alpha",
        help=fmt.flag_help("lora_alpha"),
    )

if "bn" in knobs_in_use:
    settings["bn"] = next(cols).selectbox(
        "BatchNorm of trained layers",
        choices("bn"),
        key="bn",
        help=f"{fmt.flag_help('bn')}. train lets a head that learned on frozen features lose them at an unfreeze "
        f"(two_phase, progressive): see the README",
    )

num_classes = report["num_classes"] if report else 10
for s in strategies:
    name = s["strategy"]
    c_tick, c_text, c_params = strategy_list.columns([2, 6, 3], vertical_alignment="center")
    c_tick.checkbox(f"**{name}**", value=name == DEFAULT_STRATEGY, key=f"strategy_{name}")
    if name in recommended:
        c_tick.badge("recommended", icon=":material/star:", color="green")
    c_text.markdown(f"{s['summary']}  \n:gray[*When:* {s['when']}]")
    counts = param_counts(backbone, name, tuple(sorted(settings.items())), num_classes)
    start = f"{fmt.millions(counts['start_trainable'])} trainable · {fmt.millions(counts['start_frozen'])} frozen"
    if counts["start_groups"] == counts["end_groups"] and not counts["end_is_bound"]:
        c_params.markdown(f"{start}  \n:gray[{counts['start_groups']} of {counts['groups']} groups train]")
    else:
        end = ("up to " if counts["end_is_bound"] else "") + f"{fmt.millions(counts['end_trainable'])} trainable"
        c_params.markdown(
            f"{start} at first  \n:gray[{end} by the last epoch ({counts['end_groups']} of {counts['groups']} groups)]"
        )

# What the ticked strategies would do that is likely not meant, said before anything is queued.
draft = {**settings, "image_size": st.session_state.get("image_size", default("image_size"))}
said = service.draft_warnings(backbone, ticked_now, draft)
for warning in said:
    st.warning(fmt.form_message(warning), icon=":material/warning:")

# --- 4. beside the strategy: loss terms, a target domain, channels, memory -------------------------
st.header("4 · Regularizer, target domain, memory", divider="gray")
st.caption(
    "Options any strategy composes with, given to every run of the plan: a term that keeps the pretrained "
    "weights near where they started, adaptation toward a target-domain folder, images of other than 3 "
    "channels, and a bigger effective batch or less memory per step. Labels are the CLI's flags."
)
methods, target = run_form.beside_the_strategy(folders, data_path)
for warning in service.draft_warnings(backbone, ticked_now, {**draft, **methods}):
    if warning not in said:  # what these options add to the warnings above
        st.warning(fmt.form_message(warning), icon=":material/warning:")

# --- 5. training and launch ---------------------------------------------------------------------
st.header("5 · Training", divider="gray")
with st.container(border=True):
    form = run_form.training_settings()
    experiment = st.text_input(
        "Experiment name", key="experiment", help="Runs launched together share it; Compare groups runs by experiment"
    )
    ticked = [s["strategy"] for s in strategies if st.session_state.get(f"strategy_{s['strategy']}")]

    # The plan, live: every run of the grid checked, counted and timed before anything is queued.
    configs, problem = [], None
    try:
        base = {
            **settings,
            **methods,
            "data": service.resolve_data_path(typed or chosen or "", roots),
            "target_data": service.resolve_data_path(target, roots) if target else None,
            "backbone": backbone,
            "epochs": form["epochs"],
            "batch_size": form["batch_size"],
            "optimizer": form["optimizer"],
            "schedule": form["schedule"],
            "weight_decay": form["weight_decay"],
            "augment": form["augment"],
            "image_size": form["image_size"],
            "val_fraction": form["val_fraction"],
            "split_seed": form["split_seed"],
            "test_fraction": form["test_fraction"],
            "class_weights": form["class_weights"],
            "experiment": experiment.strip(),
        }
        base = service.with_exclusions(store, base)  # the dataset's exclusion list, as it is now
        lrs = fmt.numbers(form["lr_text"], "Learning rates") or [None]
        fractions = fmt.numbers(form["fractions_text"], "Train fractions") or [default("train_fraction")]
        seeds = [int(form["seed"]) + i for i in range(int(form["n_seeds"]))]
        configs = service.plan_runs(base, ticked, seeds, fractions, lrs, backbones=backbones)
    except UserError as e:
        problem = e
    if configs:
        estimate = service.estimate_seconds(session.store(), configs)
        when = (
            f"about {fmt.format_seconds(estimate['seconds'])} ({estimate['basis']})"
            if estimate["seconds"]
            else estimate["basis"]
        )
        st.caption(
            f"Will queue **{len(configs)}** run(s): {', '.join(ticked)} × {len(fractions)} train fraction(s) "
            f"× {len(lrs)} LR(s) × {len(seeds)} seed(s), on {', '.join(backbones)}; {when}."
            + (f" Each records the {len(configs[0].exclude)} excluded or moved images." if configs[0].exclude else "")
        )
    else:
        st.caption(
            f"Will queue runs of {', '.join(ticked) or 'no strategy ticked'} on {backbone} once the settings "
            f"are complete."
        )
    run_form.lr_finder(configs, ticked)
    if st.button("Launch", type="primary", icon=":material/rocket_launch:", key="launch"):
        if problem is not None:
            st.error(f"Nothing was queued: {fmt.form_message(problem)}", icon=":material/error:")
        else:
            who = session.launched_by()
            queued = [service.queue_run(session.store(), c, who) for c in configs]
            st.session_state["queued"] = {
                "experiment": experiment.strip(),
                "ids": [r.id for r in queued],
                "names": [r.name for r in queued],
            }

if done := st.session_state.get("queued"):
    st.success(
        f"Queued {len(done['ids'])} run(s) in experiment **{done['experiment']}**: "
        + ", ".join(f"#{i} {n}" for i, n in zip(done["ids"], done["names"])),
        icon=":material/check_circle:",
    )

    with st.container(horizontal=True):
        session.page_link("runs", "Watch them on Runs", ":material/view_list:")
        session.page_link("compare", "Compare them", ":material/stacked_line_chart:", experiment=done["experiment"])
