"""Regularizers, target domains, layer drift and forgetting in the dashboard (issue #12): the New run
form's options and the configs it queues, the run page's drift chart and facts, Compare's drift
overlay, forgetting scatter and target accuracy; and the service behind them (group_drift, `show`).

Runs are written straight into the store with the metric names the training loop records
(`drift/<group>`, `reg_share`, `target_acc`, ...), so these tests need no training.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tl_core import cli, service
from tl_core.config import default
from tl_core.data.demo import write_demo_data
from tl_core.store import Store

from .test_app import env, launch, make_run, no_exception, page  # noqa: F401  (fixtures)

GROUPS = ["stem", "stage1", "stage2", "head"]  # the run's layer groups, stem first
# The form's label of each new option: the CLI flag's words (--reg-strength: "Reg strength").
OPTIONS = (
    "regularizer",
    "reg_strength",
    "head_reg_strength",
    "fisher_images",
    "target_data",
    "adapt",
    "adapt_strength",
    "in_channels",
    "accumulate",
    "checkpointing",
)
SKIPPED = "the body started from random weights (weights none): it had no ImageNet knowledge to forget"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """The demo animals, and a copy of them as a labelled target-domain folder."""
    root = tmp_path_factory.mktemp("data")
    write_demo_data(root, datasets=("animals",), per_class=12, size=48)
    shutil.copytree(root / "animals", root / "animals_target")
    return root


def label_of(field: str) -> str:
    return field.replace("_", " ").capitalize()


def recorded_run(
    store: Store,
    name: str,
    strategy: str,
    epochs: list[dict],
    summary: dict | None = None,
    experiment: str = "methods",
    seed: int = 0,
    **settings,
):
    """A completed run whose epochs recorded `epochs` (val_acc and whatever else each holds)."""
    cfg = {
        "data": "/nowhere",
        "backbone": "efficientnet_lite0",
        "strategy": strategy,
        "seed": seed,
        "epochs": len(epochs),
        **settings,
    }
    run = store.create_run(cfg, experiment, name, status="queued")
    store.start_run(run.id, pid=os.getpid(), host="test", environment={}, run_dir="")
    best = (-1.0, 0)
    for e, m in enumerate(epochs):
        best = max(best, (m["val_acc"], -e))
        store.log_epoch(
            run.id,
            e,
            {"train_loss": 1.0, "val_loss": 1.0, "trainable_groups": 1, "wall_seconds": e + 1.0, **m},
            best=(best[0], -best[1]),
        )
    store.finish_run(run.id, "completed", summary={"classes": ["cat", "dog"], "groups": GROUPS, **(summary or {})})
    return store.get_run(run.id)


def drift_epochs(moving: dict[str, float], val_accs=(0.5, 0.7, 0.6)) -> list[dict]:
    """Epochs whose val accuracy peaks at epoch 2; each group in `moving` drifts by its rate per
    epoch, the others stay at 0.0 (frozen). Drift keys are written head first: the order shown
    must come from the run's groups, not from the records."""
    return [
        {"val_acc": acc, **{f"drift/{g}": moving.get(g, 0.0) * (e + 1) for g in reversed(GROUPS)}}
        for e, acc in enumerate(val_accs)
    ]


def figure(at, title: str) -> dict:
    """The one Plotly figure on the page whose title starts with `title`."""
    found = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    found = [f for f in found if f["layout"].get("title", {}).get("text", "").startswith(title)]
    assert len(found) == 1, f"{len(found)} charts titled {title!r}"
    return found[0]


def ys(trace: dict) -> list:
    """A trace's y values (Plotly's JSON writes numpy arrays as base64)."""
    y = trace["y"]
    return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist() if isinstance(y, dict) else y


def no_figure(at, title: str) -> bool:
    return not any(
        json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "").startswith(title)
        for c in at.get("plotly_chart")
    )


# --- New run ------------------------------------------------------------------------------------


def test_the_new_options_are_on_the_form_under_their_cli_names(env):
    at = no_exception(page("new_run.py").run())
    labels = {w.key: w.label for w in [*at.selectbox, *at.number_input]}
    # Shown at once: the choices and the settings every run has; the rest follow their switch.
    for field in ("regularizer", "target_data", "adapt", "in_channels", "accumulate", "checkpointing"):
        assert labels.get(field) == label_of(field), (field, labels.get(field))
    assert not {"reg_strength", "head_reg_strength", "fisher_images", "adapt_strength"} & set(labels)
    assert at.selectbox(key="regularizer").options == ["none", "l2sp", "ewc"]
    assert at.selectbox(key="adapt").options == ["none", "dann", "mmd"]
    assert at.selectbox(key="checkpointing").options == ["off", "on"]

    at = no_exception(at.selectbox(key="regularizer").set_value("l2sp").run())
    # The engine's warnings on these options, said on the form before anything is queued.
    assert any("Regularizer l2sp" in w.value for w in at.warning), [w.value for w in at.warning]
    shown = {w.key: w for w in at.number_input}
    assert shown["reg_strength"].label == "Reg strength" and shown["reg_strength"].value == default("reg_strength")
    assert shown["head_reg_strength"].label == "Head reg strength"
    assert "fisher_images" not in shown  # only ewc estimates a Fisher information
    at = no_exception(at.selectbox(key="regularizer").set_value("ewc").run())
    assert at.number_input(key="fisher_images").label == "Fisher images"
    at = no_exception(at.selectbox(key="adapt").set_value("dann").run())
    assert at.number_input(key="adapt_strength").label == "Adapt strength"

    # Each label is its CLI flag's words, and the CLI takes that flag.
    flags = vars(
        cli.parser.build_parser().parse_args(
            [
                "run",
                "--data",
                "d",
                "--reg-strength",
                "0.5",
                "--head-reg-strength",
                "0.2",
                "--fisher-images",
                "9",
                "--target-data",
                "t",
                "--adapt",
                "mmd",
                "--adapt-strength",
                "2",
                "--in-channels",
                "1",
                "--accumulate",
                "4",
                "--checkpointing",
                "on",
                "--regularizer",
                "ewc",
            ]
        )
    )
    assert set(OPTIONS) <= set(flags)
    assert all(
        f"`--{f.replace('_', '-')}`" in (w.help or "")
        for w in [*at.selectbox, *at.number_input]
        for f in OPTIONS
        if w.key == f
    )


@pytest.mark.parametrize(
    "regularizer, extra, in_channels",
    [
        ("ewc", {"fisher_images": 64}, 3),  # ewc reads the pretrained RGB model's predictions: 3 channels
        ("l2sp", {}, 1),
    ],
)
def test_a_queued_run_carries_every_new_option(env, demo_root, regularizer, extra, in_channels):
    at = no_exception(page("new_run.py").run())
    at = no_exception(at.selectbox(key="regularizer").set_value(regularizer).run())
    at = no_exception(at.selectbox(key="adapt").set_value("mmd").run())
    at.number_input(key="reg_strength").set_value(0.5)
    at.number_input(key="head_reg_strength").set_value(0.02)
    for key, value in extra.items():
        at.number_input(key=key).set_value(value)
    at.number_input(key="adapt_strength").set_value(0.3)
    at.selectbox(key="target_data").set_value(str(demo_root / "animals_target"))
    at.number_input(key="in_channels").set_value(in_channels)
    at.number_input(key="accumulate").set_value(4)
    at.selectbox(key="checkpointing").set_value("on")
    at.number_input(key="n_seeds").set_value(2)
    at = launch(at)
    assert not at.error, [e.value for e in at.error]
    runs = env.list_runs()
    assert len(runs) == 2
    for run in runs:
        assert {k: run.config[k] for k in OPTIONS} == {
            **{k: default(k) for k in OPTIONS},
            "regularizer": regularizer,
            "reg_strength": 0.5,
            "head_reg_strength": 0.02,
            "target_data": str((demo_root / "animals_target").resolve()),
            "adapt": "mmd",
            "adapt_strength": 0.3,
            "in_channels": in_channels,
            "accumulate": 4,
            "checkpointing": "on",
            **extra,
        }


def test_options_left_alone_queue_the_defaults_and_the_source_is_no_target(env, demo_root):
    at = no_exception(page("new_run.py").run())
    assert str(demo_root / "animals") not in at.selectbox(key="target_data").options  # the source is chosen above
    at = launch(at)
    (run,) = env.list_runs()
    assert {k: run.config[k] for k in OPTIONS} == {k: default(k) for k in OPTIONS}


def test_adapting_without_a_target_folder_says_so_and_queues_nothing(env):
    at = no_exception(page("new_run.py").run())
    at = no_exception(at.selectbox(key="adapt").set_value("dann").run())
    at = launch(at)
    errors = [e.value for e in at.error]
    assert any("Nothing was queued" in e and "Target data" in e for e in errors), errors
    assert not any("--target-data" in e for e in errors)  # worded with the form's label, not the flag
    assert env.list_runs() == []


# --- Run page -----------------------------------------------------------------------------------


def test_the_run_page_draws_each_groups_drift_with_frozen_groups_at_zero(env):
    run = recorded_run(
        env,
        "partial-l2sp",
        "partial",
        [
            {**m, "reg_share": 0.1 * (e + 1), "reg_penalty": 0.05, "target_acc": 0.3 + 0.1 * e}
            for e, m in enumerate(drift_epochs({"stage2": 0.01, "head": 0.2}))
        ],
        summary={
            "forgetting": {"agreement": 0.875, "images": 40, "reference": "the pretrained model's own ImageNet top-1"}
        },
        regularizer="l2sp",
    )
    at = page("run_detail.py")
    at.query_params["run"] = str(run.id)
    at = no_exception(at.run())
    drift = figure(at, "Layer drift")
    assert [t["name"] for t in drift["data"]] == ["stem (frozen: 0)", "stage1 (frozen: 0)", "stage2", "head"]
    frozen, moving = drift["data"][:2], drift["data"][2:]
    assert all(t["y"] == [0.0, 0.0, 0.0] and t["line"]["dash"] == "dot" for t in frozen)
    assert moving[1]["x"] == [1, 2, 3] and moving[1]["y"] == pytest.approx([0.2, 0.4, 0.6])
    low, high = drift["layout"]["yaxis"]["range"]
    assert low < 0 < 0.6 < high  # the zero line of the frozen groups is inside the plot, not on its edge
    share = figure(at, "the regularizer's share of the training loss (l2sp)")
    assert share["data"][0]["y"] == pytest.approx([0.1, 0.2, 0.3])
    accuracy = figure(at, "accuracy")
    assert "target-domain accuracy" in [t["name"] for t in accuracy["data"]]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Knowledge kept"] == "87.5%" and metrics["Target accuracy"] == "40.0%"  # at the best epoch (2)
    facts = " ".join(m.value for m in at.markdown)
    assert "**knowledge kept**: 87.5% (agreement with the pretrained model's own ImageNet top-1 on 40 images)" in facts


def test_the_run_page_says_why_forgetting_was_not_measured_and_draws_no_drift_without_it(env):
    run = make_run(env, "scratch", "scratch")
    env.update_run(run.id, summary={**run.summary, "forgetting": {"skipped": SKIPPED}})
    at = page("run_detail.py")
    at.query_params["run"] = str(run.id)
    at = no_exception(at.run())
    assert f"**knowledge kept**: not measured ({SKIPPED})" in " ".join(m.value for m in at.markdown)
    assert "Knowledge kept" not in {m.label for m in at.metric}
    assert no_figure(at, "Layer drift") and no_figure(at, "the regularizer's share")


# --- Compare ------------------------------------------------------------------------------------


def _two_strategies(store: Store) -> dict:
    runs = {
        "fe": recorded_run(
            store,
            "fe",
            "feature_extraction",
            drift_epochs({"head": 0.3}),
            {"forgetting": {"agreement": 1.0, "images": 40, "reference": "r"}},
        ),
        "full": recorded_run(
            store,
            "full",
            "full",
            drift_epochs({"stem": 0.001, "stage1": 0.01, "stage2": 0.02, "head": 0.4}, (0.6, 0.8, 0.7)),
            {"forgetting": {"agreement": 0.55, "images": 40, "reference": "r"}},
        ),
        "scratch": recorded_run(
            store,
            "scratch",
            "scratch",
            drift_epochs({g: 0.5 for g in GROUPS}, (0.3, 0.4, 0.5)),
            {"forgetting": {"skipped": SKIPPED}},
        ),
    }
    for e, acc in enumerate((0.2, 0.35, 0.3)):  # the full run also measured a labelled target domain
        store.log_epoch(
            runs["full"].id,
            e,
            {
                **drift_epochs({"stem": 0.001, "stage1": 0.01, "stage2": 0.02, "head": 0.4}, (0.6, 0.8, 0.7))[e],
                "target_acc": acc,
            },
        )
    return runs


def test_compare_overlays_each_runs_drift_by_group_at_the_epoch_chosen(env):
    runs = _two_strategies(env)
    at = page("compare.py")
    at.query_params["experiment"] = "methods"
    at = no_exception(at.run())
    assert any(s.value == "What fine-tuning changed" for s in at.subheader)
    overlay = figure(at, "layer drift at the best epoch")
    assert [t["name"] for t in overlay["data"]] == ["fe", "full", "scratch"]
    assert overlay["layout"]["xaxis"]["categoryarray"] == GROUPS
    by_name = {t["name"]: t for t in overlay["data"]}
    assert by_name["fe"]["x"] == GROUPS and by_name["fe"]["y"] == pytest.approx([0, 0, 0, 0.6])  # best: epoch 2
    assert by_name["full"]["y"] == pytest.approx([0.002, 0.02, 0.04, 0.8])
    assert by_name["scratch"]["y"] == pytest.approx([1.5] * 4)  # its best epoch is its last
    at = no_exception(at.segmented_control(key="compare_which").set_value("last epoch").run())
    overlay = figure(at, "layer drift at the last epoch")
    assert {t["name"]: t["y"] for t in overlay["data"]}["fe"] == pytest.approx([0, 0, 0, 0.9])
    assert runs["fe"].id  # (the runs exist for the page)


def test_compare_draws_knowledge_kept_against_accuracy_and_the_target_domain(env):
    runs = _two_strategies(env)
    at = page("compare.py")
    at.query_params["experiment"] = "methods"
    at = no_exception(at.run())
    scatter = figure(at, "forgetting")
    assert [t["name"] for t in scatter["data"]] == ["feature_extraction", "full"]  # scratch did not measure it
    points = {t["text"][0]: (t["x"][0], t["y"][0]) for t in scatter["data"]}
    assert points == {"fe": (1.0, 0.7), "full": (0.55, 0.8)}  # val accuracy at each run's best epoch
    assert "%{text}" in scatter["data"][0]["hovertemplate"]  # hover names the run
    assert any("Knowledge kept not measured for scratch" in c.value and SKIPPED in c.value for c in at.caption)
    target = figure(at, "target-domain accuracy by epoch")
    assert [t["name"] for t in target["data"]] == ["full"]  # the one run that measured the target domain
    assert ys(target["data"][0]) == pytest.approx([0.2, 0.35, 0.3])
    summary = at.dataframe[0].value
    assert dict(zip(summary["name"], summary["target_acc"]))["full"] == pytest.approx(0.35)
    assert runs["full"].id


def test_compare_draws_no_drift_or_forgetting_for_runs_that_did_not_record_them(env):
    make_run(env, "a", "feature_extraction")
    make_run(env, "b", "full")
    at = no_exception(page("compare.py").run())
    assert not any(s.value == "What fine-tuning changed" for s in at.subheader)
    assert no_figure(at, "layer drift") and no_figure(at, "forgetting")
    assert "target_acc" not in at.dataframe[0].proto.column_order  # no target-domain column either


def test_compare_overlays_groups_of_seeds_as_a_mean_with_error_bars(env):
    for seed in range(7):
        recorded_run(env, f"fe-{seed}", "feature_extraction", drift_epochs({"head": 0.3 + 0.01 * seed}), seed=seed)
        recorded_run(env, f"full-{seed}", "full", drift_epochs({g: 0.1 for g in GROUPS}), seed=seed)
    at = page("compare.py")
    at.query_params["experiment"] = "methods"
    at = no_exception(at.run())
    overlay = figure(at, "layer drift")
    assert [t["name"] for t in overlay["data"]] == ["feature_extraction (n=7)", "full (n=7)"]
    fe = overlay["data"][0]
    assert fe["y"][-1] == pytest.approx(2 * 0.33) and fe["error_y"]["visible"] and fe["error_y"]["array"][-1] > 0


# --- the service and the CLI --------------------------------------------------------------------


def test_group_drift_is_per_group_per_epoch_in_the_runs_order_and_show_prints_it(env, capsys):
    run = recorded_run(env, "fe", "feature_extraction", drift_epochs({"head": 0.3}))
    assert service.group_drift(env, run.id) == {
        "stem": [0.0, 0.0, 0.0],
        "stage1": [0.0, 0.0, 0.0],
        "stage2": [0.0, 0.0, 0.0],
        "head": pytest.approx([0.3, 0.6, 0.9]),
    }
    assert service.group_drift(env, make_run(env, "old", "full").id) == {}  # recorded before drift existed
    assert cli.main(["show", str(run.id), "--json", "--db", os.environ["DATABASE_URL"]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert list(shown["group_drift"]) == GROUPS and shown["group_drift"]["head"] == pytest.approx([0.3, 0.6, 0.9])
    assert cli.main(["show", str(run.id), "--db", os.environ["DATABASE_URL"]]) == 0
    assert (
        "drift at the last epoch (||w - w0|| / ||w0||, stem first): stem 0.0000, stage1 0.0000, stage2 0.0000, "
        "head 0.9000" in capsys.readouterr().out
    )


def test_epoch_tables_read_the_new_metrics_in_order(env):
    run = recorded_run(
        env,
        "fe",
        "feature_extraction",
        [{**m, "reg_share": 0.2, "target_acc": 0.4, "lr/head": 1e-3} for m in drift_epochs({"head": 0.3})],
    )
    row = service.metric_rows([run], env.epoch_metrics([run.id]))[0]
    keys = list(row)
    assert keys.index("val_acc") < keys.index("target_acc") < keys.index("reg_share") < keys.index("trainable_groups")
    assert keys[keys.index("lr/head") + 1 : keys.index("lr/head") + 5] == [f"drift/{g}" for g in GROUPS]
