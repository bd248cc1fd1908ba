"""The dashboard without a browser: every page through Streamlit's AppTest, and the pure helpers
(tl_core.service, ui.charts, ui.format) it is built on.

Each test gets its own SQLite database, runs folder and data root (tiny demo images); no worker
is started (TL_NO_WORKER=1, and pages never start one: only app.py does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tl_core import service
from tl_core.data.demo import write_demo_data
from tl_core.errors import UserError
from tl_core.store import ClassMetric, Store
from tl_core.training.strategies import list_strategies
from ui import charts
from ui import format as fmt

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p.name for p in (ROOT / "pages").glob("*.py"))
TIMEOUT = 90  # the first script run imports torch and describes every backbone


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_demo_data(root, datasets=("animals",), per_class=12, size=48)
    return root


@pytest.fixture()
def env(tmp_path, monkeypatch, demo_root) -> Store:
    """A fresh database and runs folder, the demo data root, no worker; the store to inspect."""
    db_url = f"sqlite:///{tmp_path / 'test.db'}"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("TL_DATA_ROOTS", str(demo_root))
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TL_NO_WORKER", "1")
    monkeypatch.syspath_prepend(str(ROOT))  # the pages import tl_core from the repository
    return service.open_store(db_url)


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=TIMEOUT)


def no_exception(at: AppTest) -> AppTest:
    assert not at.exception, "\n".join(e.message + "\n" + "\n".join(e.stack_trace) for e in at.exception)
    return at


def launch(at: AppTest) -> AppTest:
    return no_exception(at.button(key="launch").click().run())


def make_run(
    store: Store,
    name: str,
    strategy: str,
    experiment: str = "exp",
    seed: int = 0,
    epochs: int = 3,
    status: str = "completed",
    run_dir: Path | None = None,
    unfreeze_at: int | None = None,
):
    """A finished run written straight into the store: epoch rows, class metrics, a log file."""
    cfg = {"data": "/nowhere", "backbone": "efficientnet_lite0", "strategy": strategy, "seed": seed, "epochs": epochs}
    run = store.create_run(cfg, experiment, name, status="queued")
    if status == "queued":
        return run
    if run_dir is not None:
        (run_dir / str(run.id)).mkdir(parents=True, exist_ok=True)
        (run_dir / str(run.id) / "train.log").write_text("".join(f"line {i}\n" for i in range(80)))
    store.start_run(
        run.id,
        pid=os.getpid(),
        host="test",
        environment={"torch": "x"},
        run_dir=str(run_dir / str(run.id)) if run_dir else None,
    )
    for e in range(epochs):
        groups = 1 if unfreeze_at is None or e < unfreeze_at else 3
        store.log_epoch(
            run.id,
            e,
            {
                "train_loss": 1.5 - 0.3 * e,
                "train_acc": 0.5 + 0.15 * e,
                "val_loss": 1.6 - 0.2 * e,
                "val_acc": 0.4 + 0.1 * e + 0.02 * seed,
                "trainable_groups": groups,
                "trainable_params": 1000 * groups,
                "lr/head": 1e-3,
                "wall_seconds": 2.0 * (e + 1),
                "images_per_sec": 50.0,
                "epoch_seconds": 2.0,
            },
            best=(0.4 + 0.1 * e + 0.02 * seed, e),
        )
    store.log_class_metrics(
        run.id,
        [
            ClassMetric(i, c, 0.8, 0.6 + 0.1 * i, 0.7, 5, [3 if j == i else 1 for j in range(2)])
            for i, c in enumerate(["cat", "dog"])
        ],
    )
    if status != "running":
        store.finish_run(run.id, status, summary={"classes": ["cat", "dog"], "groups": ["stem", "head"]})
    return store.get_run(run.id)


# --- every page ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_every_page_runs_on_an_empty_database(env, name):
    at = no_exception(page(name).run())
    assert at.title, f"{name} has no title"


@pytest.mark.parametrize("name", PAGES)
def test_every_page_runs_with_runs_of_every_status(env, tmp_path, name):
    for i, status in enumerate(("completed", "failed", "cancelled", "running", "queued")):
        make_run(env, f"run-{status}", list_strategies()[i], status=status, run_dir=tmp_path / "runs")
    no_exception(page(name).run())


def test_app_router_runs_every_page_without_starting_a_worker(env):
    at = no_exception(AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run())
    assert any("TL_NO_WORKER" in c.value for c in at.sidebar.caption)
    for name in PAGES:
        no_exception(at.switch_page(f"pages/{name}").run())
    assert not (Path(os.environ["TL_RUNS_DIR"]) / "workers").exists()  # no worker files: none was started


# --- New run ------------------------------------------------------------------------------------


def test_new_run_previews_the_chosen_dataset(env, demo_root):
    at = no_exception(page("new_run.py").run())
    assert at.selectbox(key="dataset_choice").value == str(demo_root / "animals")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "10" and int(metrics["Train images"]) + int(metrics["Val images"]) == 120
    assert any("feature_extraction" in i.value for i in at.info)  # the recommendation for ~10 images per class


def test_new_run_epochs_zero_shows_an_error_and_queues_nothing(env):
    at = no_exception(page("new_run.py").run())
    at.number_input(key="epochs").set_value(0)
    at = launch(at)
    assert any("Nothing was queued" in e.value and "Epochs" in e.value for e in at.error), [e.value for e in at.error]
    assert env.list_runs() == []


def test_new_run_path_outside_the_data_roots_is_refused(env, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_demo_data(elsewhere, datasets=("animals",), per_class=3, size=16)
    at = no_exception(page("new_run.py").run())
    at.text_input(key="dataset_typed").input(str(elsewhere / "animals"))
    at = no_exception(at.run())
    assert any("outside the data folders" in e.value for e in at.error)
    at = launch(at)
    assert any("Nothing was queued" in e.value and "outside" in e.value for e in at.error)
    assert env.list_runs() == []


def test_new_run_knobs_appear_only_for_the_strategies_that_read_them(env):
    at = no_exception(page("new_run.py").run())
    assert not any(w.key == "unfreeze" for w in at.number_input)
    at = no_exception(at.checkbox(key="strategy_partial").check().run())
    assert at.number_input(key="unfreeze").value == 2


def test_new_run_every_strategy_ticked_shows_every_knob(env):
    at = no_exception(page("new_run.py").run())
    for name in list_strategies():
        at.checkbox(key=f"strategy_{name}").check()
    at.segmented_control(key="head").set_value("mlp")
    at = no_exception(at.run())
    at = no_exception(at.selectbox(key="unfreeze_on").set_value("plateau").run())
    shown = {w.key for w in at.number_input} | {w.key for w in at.selectbox}
    assert {
        "hidden",
        "dropout",
        "unfreeze",
        "lr_decay",
        "head_epochs",
        "phase2_lr_factor",
        "unfreeze_on",
        "patience",
        "head_lr_factor",
        "stage_lr_factor",
        "bn",
        "lora_rank",
        "lora_alpha",
    } <= shown
    assert "unfreeze_every" not in shown  # a schedule knob, hidden while unfreezing on a plateau


def test_new_run_unfreeze_follows_a_smaller_backbone(env):
    at = no_exception(page("new_run.py").run())
    at = no_exception(at.checkbox(key="strategy_partial").check().run())
    at = no_exception(at.number_input(key="unfreeze").set_value(8).run())  # EfficientNet-Lite0: 8 body groups
    at = no_exception(at.selectbox(key="backbone").set_value("resnet18").run())  # resnet18: 5
    assert at.number_input(key="unfreeze").value == 5


def test_new_run_two_strategies_queue_one_experiment_of_two_runs(env):
    at = no_exception(page("new_run.py").run())
    at = no_exception(at.checkbox(key="strategy_partial").check().run())
    at.number_input(key="epochs").set_value(2)
    at.number_input(key="image_size").set_value(64)
    at.text_input(key="experiment").input("two-strategies")
    at = launch(at)
    assert not at.error, [e.value for e in at.error]
    runs = env.list_runs()
    assert sorted(r.config["strategy"] for r in runs) == ["feature_extraction", "partial"]
    assert {r.experiment for r in runs} == {"two-strategies"} and {r.status for r in runs} == {"queued"}
    assert {(r.config["epochs"], r.config["image_size"], r.config["lr"]) for r in runs} == {(2, 64, None)}
    assert any("Queued 2 run(s)" in s.value for s in at.success)


def test_new_run_seeds_multiply_the_runs(env):
    at = no_exception(page("new_run.py").run())
    at = no_exception(at.checkbox(key="strategy_full").check().run())
    at.number_input(key="n_seeds").set_value(2)
    at.number_input(key="seed").set_value(7)
    at = launch(at)
    runs = env.list_runs()
    assert sorted((r.config["strategy"], r.config["seed"]) for r in runs) == [
        ("feature_extraction", 7),
        ("feature_extraction", 8),
        ("full", 7),
        ("full", 8),
    ]
    assert len({r.experiment for r in runs}) == 1


def test_new_run_a_grid_of_strategies_train_fractions_and_seeds_counted_before_launch(env):
    # The grid tests/test_e2e.py launched in the browser before it trained a smaller one: every
    # axis of the form at once, its count shown before anything is queued.
    at = no_exception(page("new_run.py").run())
    at = no_exception(at.checkbox(key="strategy_partial").check().run())
    at.number_input(key="epochs").set_value(2)
    at.number_input(key="image_size").set_value(48)
    at.number_input(key="n_seeds").set_value(2)
    at.text_input(key="train_fraction").input("0.5, 1")
    at.text_input(key="experiment").input("e2e-grid")
    at = no_exception(at.run())
    assert any(c.value.startswith("Will queue **8** run(s)") for c in at.caption), [c.value for c in at.caption]
    assert env.list_runs() == []  # counted, not queued
    at = launch(at)
    assert any("Queued 8 run(s)" in s.value for s in at.success)
    runs = env.list_runs(experiment="e2e-grid")
    assert sorted((r.config["strategy"], r.config["train_fraction"], r.config["seed"]) for r in runs) == sorted(
        (s, f, seed) for s in ("feature_extraction", "partial") for f in (0.5, 1.0) for seed in (0, 1)
    )
    assert {r.config["epochs"] for r in runs} == {2} and {r.config["image_size"] for r in runs} == {48}


def test_new_run_leaves_the_batch_size_to_the_run_and_shares_one_split_seed(env):
    at = no_exception(page("new_run.py").run())
    assert at.number_input(key="batch_size").value is None  # blank: the run picks 32, or fewer
    at.number_input(key="n_seeds").set_value(2)
    at.number_input(key="split_seed").set_value(3)
    at = launch(at)
    runs = env.list_runs()
    assert sorted((r.config["seed"], r.config["split_seed"], r.config["batch_size"]) for r in runs) == [
        (0, 3, None),
        (1, 3, None),
    ]


def test_new_run_says_before_launch_what_the_settings_would_not_do(env):
    at = no_exception(page("new_run.py").run())
    assert any("below half the 224 px" in w.value and "Image size" in w.value for w in at.warning)
    at = no_exception(at.checkbox(key="strategy_progressive").check().run())
    at = no_exception(at.number_input(key="unfreeze_every").set_value(3).run())
    assert any("progressive unfreezes 2 of 9 groups in 5 epochs" in w.value for w in at.warning), [
        w.value for w in at.warning
    ]
    assert env.list_runs() == []  # said before anything is queued


def test_new_run_bad_learning_rate_queues_nothing(env):
    at = no_exception(page("new_run.py").run())
    at.text_input(key="lr").input("fast")
    at = launch(at)
    assert any("Learning rate" in e.value for e in at.error)
    assert env.list_runs() == []


# --- Runs ---------------------------------------------------------------------------------------


def test_runs_table_shows_progress_and_counts(env):
    make_run(env, "done", "feature_extraction")
    make_run(env, "waiting", "partial", status="queued")
    at = no_exception(page("runs.py").run())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Completed"] == "1" and metrics["Queued"] == "1" and metrics["Running"] == "0"
    table = at.dataframe[0].value
    assert list(table["name"]) == ["waiting", "done"]
    assert list(table["epoch"]) == ["0 of 3", "3 of 3"] and list(table["progress"]) == [0.0, 1.0]


def test_runs_cancel_a_queued_run(env):
    queued = make_run(env, "waiting", "partial", status="queued")
    at = no_exception(page("runs.py").run())
    at.selectbox(key="runs_pick").set_value(queued.id)
    no_exception(at.button(key="cancel_run").click().run())
    assert env.get_run(queued.id).status == "cancelled"


def test_runs_delete_a_finished_run_and_its_files(env, tmp_path):
    done = make_run(env, "done", "feature_extraction", run_dir=tmp_path / "runs")
    keep = make_run(env, "keep", "partial", run_dir=tmp_path / "runs")
    at = no_exception(page("runs.py").run())
    at.selectbox(key="runs_pick").set_value(done.id)
    at = no_exception(at.button(key="delete_run").click().run())
    assert env.get_run(done.id)  # asks first
    no_exception(at.button(key="delete_confirm").click().run())
    assert [r.id for r in env.list_runs()] == [keep.id]
    assert not (tmp_path / "runs" / str(done.id)).exists() and (tmp_path / "runs" / str(keep.id)).exists()


def test_runs_resume_queues_a_failed_run_or_says_why_not(env, demo_root):
    real = make_run(env, "stopped", "full", status="failed")
    env.update_run(real.id, config={**real.config, "data": str(demo_root / "animals")})
    gone = make_run(env, "gone", "full", status="failed")  # its dataset (/nowhere) is not there
    done = make_run(env, "done", "full")
    at = no_exception(page("runs.py").run())
    at.selectbox(key="runs_pick").set_value(done.id)
    at = no_exception(at.run())
    assert at.button(key="resume_run").disabled
    at = no_exception(at.selectbox(key="runs_pick").set_value(gone.id).run())
    at = no_exception(at.button(key="resume_run").click().run())
    assert any("does not exist" in e.value for e in at.error) and env.get_run(gone.id).status == "failed"
    at = no_exception(at.selectbox(key="runs_pick").set_value(real.id).run())
    no_exception(at.button(key="resume_run").click().run())
    resumed = env.get_run(real.id)
    assert resumed.status == "queued" and resumed.resume


# --- Compare ------------------------------------------------------------------------------------


def test_compare_draws_one_val_acc_trace_per_run(env):
    runs = [
        make_run(env, "fe-s0", "feature_extraction"),
        make_run(env, "fe-s1", "feature_extraction", seed=1),
        make_run(env, "prog", "progressive", unfreeze_at=1),
        make_run(env, "other", "full", experiment="other"),
    ]
    at = no_exception(page("compare.py").run())  # the newest experiment: "other"
    at.selectbox(key="compare_experiment").set_value("exp")
    at.number_input(key="target_acc").set_value(0.51)
    at = no_exception(at.run())
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in figure["data"]] == ["fe-s0", "fe-s1", "prog"]
    # the timeline, wall-clock, overfitting gap, and mean ± std: feature_extraction has 2 seeds
    assert at.segmented_control(key="compare_view").options == [
        "Fine-tuning timeline",
        "Wall-clock time",
        "Overfitting gap",
        "Seeds: mean ± std",
    ]
    at = no_exception(at.segmented_control(key="compare_view").set_value("Seeds: mean ± std").run())
    bands = json.loads(at.get("plotly_chart")[-2].proto.spec)
    assert [t["name"] for t in bands["data"] if t.get("showlegend", True) and t.get("name")] == [
        "feature_extraction (n=2)"
    ]
    summary = at.dataframe[0].value
    assert list(summary["name"]) == ["fe-s0", "fe-s1", "prog"] and list(summary["best_epoch"]) == [3, 3, 3]
    assert list(summary["time_to_target_s"]) == [6.0, 4.0, 6.0]  # wall seconds when val_acc first >= 0.51
    assert runs[3].name not in [t["name"] for t in figure["data"]]


def test_compare_any_runs_mode(env):
    a = make_run(env, "a", "feature_extraction", experiment="one")
    b = make_run(env, "b", "full", experiment="two")
    at = no_exception(page("compare.py").run())
    at.segmented_control(key="compare_mode").set_value("Any runs")
    at = no_exception(at.run())
    at = no_exception(at.multiselect(key="compare_runs").set_value([a.id, b.id]).run())
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in figure["data"]] == ["a", "b"]


# --- Run detail ---------------------------------------------------------------------------------


def test_run_detail_opens_the_run_in_the_query_string(env, tmp_path):
    first = make_run(env, "first", "feature_extraction", run_dir=tmp_path / "runs")
    make_run(env, "second", "partial", run_dir=tmp_path / "runs")
    at = page("run_detail.py")
    at.query_params["run"] = str(first.id)
    at = no_exception(at.run())
    assert at.selectbox(key="detail_run").value == first.id
    log = at.code[0].value.splitlines()
    assert len(log) == 50 and log[-1] == "line 79"  # the last 50 lines of train.log
    assert {m.label: m.value for m in at.metric}["Epochs"] == "3 of 3"


def test_run_detail_shows_the_input_the_batch_and_what_was_skipped(env):
    run = make_run(env, "small", "feature_extraction")
    env.update_run(
        run.id,
        summary={
            "warnings": ["--image-size 96 is below half the 224 px the efficientnet_lite0 weights were trained at"],
            "preprocessing": {
                "pre": {
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5],
                    "interpolation": "bicubic",
                    "crop_pct": 0.875,
                    "native_size": 224,
                },
                "image_size": 96,
                "augment": "none",
                "resize": 110,
                "native_size": 224,
            },
            "batch_size": {"used": 10, "why": "batch size 10: the default 32 is more than the 10 training images"},
            "skipped": {"count": 1, "files": [{"path": "/d/a/notes.txt", "reason": "not an image file"}]},
            "unreadable": ["/d/b/cut.png"],
        },
    )
    at = no_exception(page("run_detail.py").run())
    assert any("Image size 96 is below half" in w.value for w in at.warning)
    text = " ".join(m.value for m in at.markdown)
    assert "**input**: 96 px (the weights' native size: 224 px)" in text and "**batch size**: 10 (" in text
    skipped = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    assert list(skipped["reason"]) == ["not an image file", "unreadable when decoded"]


def test_run_detail_shows_a_failed_run_error(env):
    make_run(env, "broken", "full", status="failed")
    env.finish_run(env.list_runs()[0].id, "failed", error="CUDA out of memory: reduce --batch-size")
    at = no_exception(page("run_detail.py").run())
    assert any("out of memory" in e.value for e in at.error)


# --- dashboard helpers --------------------------------------------------------------------------


def test_resolve_data_path_follows_symlinks_out_of_the_roots(tmp_path, demo_root):
    assert service.resolve_data_path(str(demo_root / "animals"), [demo_root]) == str(demo_root / "animals")
    link = demo_root / "sneaky"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        with pytest.raises(UserError, match="outside the data folders"):
            service.resolve_data_path(str(link), [demo_root])
    finally:
        link.unlink()
    with pytest.raises(UserError, match="outside"):
        service.resolve_data_path(str(demo_root / ".." / ".."), [demo_root])
    with pytest.raises(UserError, match="choose a dataset"):
        service.resolve_data_path("  ", [demo_root])


@pytest.mark.parametrize("per_class, first", [(20, "feature_extraction"), (300, "partial"), (5000, "full")])
def test_recommend_strategy_by_images_per_class(per_class, first):
    names, why = service.recommend_strategy(per_class)
    assert names[0] == first and str(per_class) in why
    assert set(names) <= set(list_strategies())


@pytest.mark.parametrize("strategy", list_strategies())
def test_strategy_param_counts_add_up(strategy):
    c = service.strategy_param_counts("efficientnet_lite0", strategy, {"epochs": 5, "unfreeze": 2}, 10)
    for when in ("start", "end"):
        assert c[f"{when}_trainable"] + c[f"{when}_frozen"] == c["total"]
        assert 0 < c[f"{when}_trainable"] <= c["total"]
    assert c["start_groups"] <= c["end_groups"] <= c["groups"]
    head = service.strategy_param_counts("efficientnet_lite0", "feature_extraction", {}, 10)["start_trainable"]
    assert head == 1280 * 10 + 10  # the new Linear head on EfficientNet-Lite0's 1280 features
    if strategy in ("full", "discriminative", "scratch"):
        assert c["start_trainable"] == c["total"]


def test_eta_from_pace_so_far(env):
    run = make_run(env, "r", "full", epochs=4, status="queued")
    env.start_run(run.id, pid=os.getpid(), host="test", environment={}, run_dir="")
    env.log_epoch(run.id, 0, {"val_acc": 0.5})
    run = env.get_run(run.id)
    assert service.eta_seconds(run) == pytest.approx(run.duration_s * 3, rel=0.5)
    queued = make_run(env, "q", "full", status="queued")
    assert service.eta_seconds(queued) is None
    assert fmt.format_seconds(65) == "1m 05s" and fmt.format_seconds(3700) == "1h 01m"


def test_delete_refuses_an_unfinished_run(env):
    queued = make_run(env, "q", "full", status="queued")
    with pytest.raises(UserError, match="cancel it first"):
        service.delete_run(env, queued.id)
    assert env.get_run(queued.id)


def test_queue_runs_validates_all_before_queueing_any(env, demo_root):
    base = {"data": str(demo_root / "animals"), "epochs": 3, "head_epochs": 3}  # two_phase needs head_epochs < epochs
    with pytest.raises(UserError, match="head-epochs"):
        service.queue_runs(env, base, ["feature_extraction", "two_phase"], [0])
    assert env.list_runs() == []
    with pytest.raises(UserError, match="batch"):
        service.queue_runs(env, {**base, "batch_size": 10_000}, ["feature_extraction"], [0])
    assert env.list_runs() == []


# --- charts -------------------------------------------------------------------------------------


def test_curves_one_trace_per_run_with_unfreeze_markers(env):
    runs = [make_run(env, "fe", "feature_extraction"), make_run(env, "two", "two_phase", unfreeze_at=2)]
    metrics = env.epoch_metrics([r.id for r in runs])
    for x in ("epoch", "wall_seconds"):
        fig = charts.curves(runs, metrics, "val_acc", x)
        assert [t.name for t in fig.data] == ["fe", "two"]
    fig = charts.curves(runs, metrics, "val_acc", "epoch")
    assert list(fig.data[0].x) == [1, 2, 3]
    assert list(fig.data[1].marker.symbol) == ["circle", "circle", "diamond"]  # unfroze at the 3rd epoch
    assert service.unfreeze_epochs(metrics[runs[1].id]) == {3: 3}  # epochs from 1, as the service counts


def test_seed_bands_only_for_strategies_with_several_seeds(env):
    runs = [make_run(env, "s0", "full", seed=0), make_run(env, "s1", "full", seed=1), make_run(env, "p", "partial")]
    fig = charts.seed_bands(runs, env.epoch_metrics([r.id for r in runs]), "val_acc")
    mean = [t for t in fig.data if t.name]
    assert [t.name for t in mean] == ["full (n=2)"]
    assert list(mean[0].y) == pytest.approx([0.41, 0.51, 0.61])  # the mean of seeds 0 and 1


def test_per_class_and_confusion_charts(env):
    runs = [make_run(env, "a", "full"), make_run(env, "b", "partial")]
    rows = {r.id: env.class_metrics(r.id) for r in runs}
    fig = charts.per_class_recall(runs, rows)
    assert [t.name for t in fig.data] == ["a", "b"] and list(fig.data[0].x) == ["cat", "dog"]
    heat = charts.confusion_heatmap(["cat", "dog"], [[3, 1], [1, 3]])
    assert list(heat.data[0].z[0]) == [0.75, 0.25]  # rows normalised: recall per true class
