"""New run: choose a dataset, a backbone and one or more strategies, then queue the runs.

The preview, the parameter counts, the strategy knobs and the plan (how many runs, about how
long, from earlier runs here) follow every change. Beside the strategies: a regularizer, a target
domain to adapt to, input channels and memory settings, each labelled as its CLI flag. A grid is
one launch: strategies x train fractions x LRs x seeds. Launch queues every run of the plan or, if any is invalid, none.
"""

import time
from pathlib import Path

import streamlit as st

from tl_core import service
from tl_core.config import DEFAULT_BATCH_SIZE, choices, default, knobs, make_config
from tl_core.errors import UserError
from tl_core.service import jobs
from ui import charts, session
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
def dataset_report(path: str, val_fraction: float, split_seed: int, test_fraction: float) -> dict:
    return service.dataset_report(path, val_fraction, split_seed, test_fraction)


@st.cache_data(show_spinner=False, ttl=60)
def sample_images(path: str) -> dict[str, list[str]]:
    return service.sample_images(path, per_class=4)


@st.cache_data(show_spinner=False)
def param_counts(backbone: str, strategy: str, settings: tuple, num_classes: int) -> dict:
    return service.strategy_param_counts(backbone, strategy, dict(settings), num_classes)


def lr_finder(configs: list, ticked: list[str]) -> None:
    """The LR range test of the first ticked strategy on these settings, its chart, and one click to use it."""
    store = session.store()
    found = session.job_result("lr_job", store) or (
        jobs.latest(
            store,
            configs[0].experiment,
            "lr-find",
            data=configs[0].data,
            backbone=configs[0].backbone,
            strategy=configs[0].strategy,
            image_size=configs[0].image_size,
        )
        if configs
        else None
    )
    row = st.columns([2, 5], vertical_alignment="center")
    if row[0].button(
        "Find the LR",
        icon=":material/query_stats:",
        key="lr_find",
        disabled=not configs,
        help="The LR range test (LR grows exponentially, loss smoothed, stopped when it diverges) under "
        "the first ticked strategy's freezing and per-group LR ratios; the model is left untouched",
    ):
        st.session_state["lr_job"] = jobs.start(store, "lr-find", configs[0])
        st.rerun()
    if found is None:
        row[1].caption(f"for {ticked[0]}: the suggestion goes into Learning rates in one click" if ticked else "")
        return
    lr = float(f"{found['suggested_lr']:.2g}")
    row[1].button(
        f"Use {lr:g} ({found['strategy']})",
        key="use_lr",
        icon=":material/input:",
        on_click=lambda: st.session_state.update(lr=f"{lr:g}"),
        help=f"Suggested at the {found['rule_description']}",
    )
    st.plotly_chart(charts.lr_finder(found), key="lr_finder_chart")
    st.caption(
        f"★ suggested at the {found['rule_description']}; {found['stopped']} Runs of other strategies "
        f"fine-tune other groups: find their LR with them ticked first."
    )


def grid(per_row: int = 4):
    """Columns for widgets, a new row of `per_row` each time the last row is full."""
    while True:
        yield from st.columns(per_row)


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
        )
    except UserError as e:
        st.error(fmt.form_message(e), icon=":material/folder_off:")

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
else:
    per_class_train = 0

# --- 2. backbone ---------------------------------------------------------------------------------
st.header("2 · Backbone", divider="gray")
table = backbone_table()
by_name = {row["backbone"]: row for row in table}
names = list(by_name)
backbone = st.selectbox(
    "Backbone",
    names,
    index=names.index(DEFAULT_BACKBONE) if DEFAULT_BACKBONE in names else 0,
    key="backbone",
    format_func=lambda n: (
        f"{n}  ·  {by_name[n]['params'] / 1e6:.1f}M params  ·  ImageNet top-1 "
        f"{by_name[n]['imagenet_top1'] or 0:.1f}%  ·  weights {by_name[n]['weights']}"
    ),
)
if by_name[backbone]["weights"] != "offline" and by_name[backbone]["weights"] != "cached":
    st.warning(
        f"{backbone}'s ImageNet weights are {by_name[backbone]['weights']}: without internet "
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

# --- 3. strategies -------------------------------------------------------------------------------
st.header("3 · Strategies", divider="gray")
st.caption("Tick one strategy for a single run, or several to compare them in one experiment (everything else equal).")
st.session_state.setdefault(
    "experiment", f"{Path(data_path).name if data_path else 'experiment'}-{time.strftime('%m%d-%H%M')}"
)
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
cols = grid()  # one grid for the head and every knob in use
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
methods: dict = {}
cols = grid()
methods["regularizer"] = next(cols).selectbox(
    "Regularizer", choices("regularizer"), key="regularizer", help=fmt.flag_help("regularizer")
)
if methods["regularizer"] != "none":
    methods["reg_strength"] = next(cols).number_input(
        "Reg strength",
        0.0,
        None,
        default("reg_strength"),
        0.01,
        format="%.4f",
        key="reg_strength",
        help=fmt.flag_help("reg_strength"),
    )
    methods["head_reg_strength"] = next(cols).number_input(
        "Head reg strength",
        0.0,
        None,
        default("head_reg_strength"),
        0.005,
        format="%.4f",
        key="head_reg_strength",
        help=fmt.flag_help("head_reg_strength"),
    )
if "fisher_images" in knobs("regularizer", methods["regularizer"]):  # ewc's, as tl_core/training/term_specs.py declares
    methods["fisher_images"] = next(cols).number_input(
        "Fisher images", 1, None, default("fisher_images"), 64, key="fisher_images", help=fmt.flag_help("fisher_images")
    )
cols = grid()
target = next(cols).selectbox(
    "Target data",
    [f for f in folders if f != data_path],
    index=None,
    key="target_data",
    format_func=lambda p: f"{Path(p).name}   ({Path(p).parent})",
    placeholder="none",
    help=fmt.flag_help("target_data"),
)
methods["adapt"] = next(cols).selectbox("Adapt", choices("adapt"), key="adapt", help=fmt.flag_help("adapt"))
if methods["adapt"] != "none":
    methods["adapt_strength"] = next(cols).number_input(
        "Adapt strength",
        0.0,
        None,
        default("adapt_strength"),
        0.1,
        key="adapt_strength",
        help=fmt.flag_help("adapt_strength"),
    )
cols = grid()
methods["in_channels"] = next(cols).number_input(
    "In channels", 1, 64, default("in_channels"), key="in_channels", help=fmt.flag_help("in_channels")
)
methods["accumulate"] = next(cols).number_input(
    "Accumulate", 1, 1024, default("accumulate"), key="accumulate", help=fmt.flag_help("accumulate")
)
methods["checkpointing"] = next(cols).selectbox(
    "Checkpointing", choices("checkpointing"), key="checkpointing", help=fmt.flag_help("checkpointing")
)
for warning in service.draft_warnings(backbone, ticked_now, {**draft, **methods}):
    if warning not in said:  # what these options add to the warnings above
        st.warning(fmt.form_message(warning), icon=":material/warning:")

# --- 5. training and launch ---------------------------------------------------------------------
st.header("5 · Training", divider="gray")
with st.container(border=True):
    r1 = st.columns(4)
    epochs = r1[0].number_input("Epochs", value=default("epochs"), step=1, key="epochs")
    batch_size = r1[1].number_input(
        "Batch size",
        value=default("batch_size"),
        min_value=1,
        step=8,
        key="batch_size",
        placeholder=f"auto: {DEFAULT_BATCH_SIZE}, or fewer",
        help=f"Blank: {DEFAULT_BATCH_SIZE}, or all the training images when there are "
        f"fewer (the run says what it used)",
    )
    lr_text = r1[2].text_input(
        "Learning rates",
        key="lr",
        placeholder="blank = strategy default",
        help="One LR, or several separated by commas for a grid (each strategy's runs at "
        "each). Blank uses each strategy's own default (1e-3, or 1e-4 for full)",
    )
    optimizer = r1[3].selectbox("Optimizer", choices("optimizer"), key="optimizer")
    r2 = st.columns(4)
    schedule = r2[0].selectbox("LR schedule", choices("schedule"), key="schedule")
    weight_decay = r2[1].number_input(
        "Weight decay", value=default("weight_decay"), step=0.01, format="%.4f", key="weight_decay"
    )
    augment = r2[2].selectbox("Augmentation", choices("augment"), key="augment")
    image_size = r2[3].number_input("Image size (px)", value=default("image_size"), step=16, key="image_size")
    r3 = st.columns(5)
    seed = r3[0].number_input(
        "Seed", value=default("seed"), step=1, key="seed", help="Seeds the initialisation, data order and augmentation"
    )
    n_seeds = r3[1].number_input(
        "Seeds per strategy",
        value=1,
        min_value=1,
        max_value=10,
        key="n_seeds",
        help="Repeat each run with seeds seed, seed+1, …: Compare shows mean ± std and whether differences are real",
    )
    split_seed = r3[2].number_input(
        "Split seed",
        value=default("split_seed"),
        step=1,
        key="split_seed",
        help="Seeds the train/val split: every run of the experiment shares it, so "
        "the seeds' spread is training variance alone",
    )
    fractions_text = r3[3].text_input(
        "Train fractions",
        value=f"{default('train_fraction'):g}",
        key="train_fraction",
        help="Keep this share of every class's training images; several separated by "
        "commas (0.1, 0.3, 1) for a data-efficiency curve. Smaller subsets lie "
        "inside larger ones, and every class keeps an image",
    )
    val_fraction = r3[4].number_input("Val fraction", value=default("val_fraction"), step=0.05, key="val_fraction")
    r4 = st.columns(5)
    test_fraction = r4[0].number_input(
        "Test fraction",
        value=default("test_fraction"),
        min_value=0.0,
        max_value=0.95,
        step=0.05,
        key="test_fraction",
        help=fmt.flag_help("test_fraction"),
    )
    class_weights = r4[1].selectbox(
        "Class weights", choices("class_weights"), key="class_weights", help=fmt.flag_help("class_weights")
    )
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
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": optimizer,
            "schedule": schedule,
            "weight_decay": weight_decay,
            "augment": augment,
            "image_size": image_size,
            "val_fraction": val_fraction,
            "split_seed": split_seed,
            "test_fraction": test_fraction,
            "class_weights": class_weights,
            "experiment": experiment.strip(),
        }
        lrs = fmt.numbers(lr_text, "Learning rates") or [None]
        fractions = fmt.numbers(fractions_text, "Train fractions") or [default("train_fraction")]
        seeds = [int(seed) + i for i in range(int(n_seeds))]
        configs = service.plan_runs(base, ticked, seeds, fractions, lrs)
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
            f"× {len(lrs)} LR(s) × {len(seeds)} seed(s), on {backbone}; {when}."
        )
    else:
        st.caption(
            f"Will queue runs of {', '.join(ticked) or 'no strategy ticked'} on {backbone} once the settings "
            f"are complete."
        )
    lr_finder(configs, ticked)
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
