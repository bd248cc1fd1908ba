"""The New run form's longer parts: the timm model picker, the options beside the strategy (a loss
term, a target domain, channels, memory), the training settings, and the LR finder with its
one-click suggestion.

Each widget keeps the key and label the page always had (the CLI's flag names, for a user who
moves between them); the page reads what they return and plans the runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from tl_core import service
from tl_core.config import DEFAULT_BATCH_SIZE, choices, default, knobs
from tl_core.service import jobs

from . import charts, session
from . import format as fmt


@st.cache_data(show_spinner="Searching timm's models…")
def _timm_models(search: str) -> list[dict]:
    return service.timm_table(search)


def timm_picker() -> dict | None:
    """A timm model chosen by searching timm's pretrained models by name: its row of
    service.timm_table (`backbone` is `timm/<name>.<tag>`), or None."""
    search = st.text_input(
        "Search timm's pretrained models",
        key="timm_search",
        placeholder="words of the name, e.g. convnext tiny, vit small dinov2, efficientnet b0",
    )
    if not search.strip():
        st.caption("Type part of a model's name: every word must appear in it.")
        return None
    found = _timm_models(search.strip())
    if not found:
        st.warning(f"No timm pretrained model's name holds every word of “{search}”.", icon=":material/search_off:")
        return None
    by_name = {row["backbone"]: row for row in found}

    def label(name: str) -> str:
        row = by_name[name]
        params = f"{row['params'] / 1e6:.1f}M params  ·  " if "params" in row else ""
        return f"{name}  ·  {row['family']}  ·  {params}{row['native_size']} px  ·  weights {row['weights']}"

    narrow = "" if "params" in found[0] else "; narrow the search to see parameters"
    st.caption(f"{len(found)} match{'es' if len(found) != 1 else ''}{narrow}")
    return by_name[st.selectbox("timm model", list(by_name), key="timm_backbone", format_func=label)]


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


def grid(per_row: int = 4) -> Iterator:
    """Columns for widgets, a new row of `per_row` each time the last row is full."""
    while True:
        yield from st.columns(per_row)


def beside_the_strategy(folders: list[str], data_path: str | None) -> tuple[dict[str, Any], str | None]:
    """Section 4's widgets: the settings they give every run (regularizer, adaptation, channels,
    accumulation, checkpointing, with their strengths), and the target-domain folder picked (or None)."""
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
    if "fisher_images" in knobs(
        "regularizer", methods["regularizer"]
    ):  # ewc's, as tl_core/training/term_specs.py declares
        methods["fisher_images"] = next(cols).number_input(
            "Fisher images",
            1,
            None,
            default("fisher_images"),
            64,
            key="fisher_images",
            help=fmt.flag_help("fisher_images"),
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
    return methods, target


def training_settings() -> dict[str, Any]:
    """Section 5's widgets, as the page reads them: the settings every run shares, and the grid's
    axes as typed (`lr_text`, `fractions_text`, `seed`, `n_seeds`)."""
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
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr_text": lr_text,
        "optimizer": optimizer,
        "schedule": schedule,
        "weight_decay": weight_decay,
        "augment": augment,
        "image_size": image_size,
        "seed": seed,
        "n_seeds": n_seeds,
        "split_seed": split_seed,
        "fractions_text": fractions_text,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "class_weights": class_weights,
    }
