"""Grids from one launch: the plan, nested train fractions, time estimates, more seeds, the report."""

from __future__ import annotations

import json
import socket

import pytest

from tl_core import cli, service
from tl_core.config import make_config
from tl_core.data import folders
from tl_core.data.splits import split_dataset
from tl_core.errors import UserError
from tl_core.store import Store


def test_train_fractions_are_nested_and_keep_every_class(animals):
    index = folders.scan_dataset(animals)
    for split_seed in (0, 7):
        sets = {f: {it.path for it in split_dataset(index, 0.2, f, split_seed).train} for f in (0.02, 0.1, 0.3, 1)}
        assert sets[0.02] < sets[0.1] < sets[0.3] < sets[1]  # a smaller subset lies inside a larger one
        smallest = split_dataset(index, 0.2, 0.02, split_seed).train
        assert {it.label for it in smallest} == set(range(len(index.classes)))  # every class keeps an image
    val = {f: [it.path for it in split_dataset(index, 0.2, f, 3).val] for f in (0.1, 1)}
    assert val[0.1] == val[1]  # the fraction thins the training images only


def test_a_grid_plans_every_cell_and_seed_and_refuses_as_a_whole(tiny):
    base = {"data": tiny, "epochs": 2, "image_size": 32, "experiment": "grid"}
    configs = service.plan_runs(base, ["feature_extraction", "full"], [0, 1], [0.5, 1.0], [1e-3, None])
    assert len(configs) == 2 * 2 * 2 * 2
    assert {(c.strategy, c.train_fraction, c.lr, c.seed) for c in configs} == {
        (s, f, lr, seed)
        for s in ("feature_extraction", "full")
        for f in (0.5, 1.0)
        for lr in (1e-3, None)
        for seed in (0, 1)
    }
    with pytest.raises(UserError, match="listed twice"):
        service.plan_runs(base, ["full"], [0], [0.5, 0.5])
    with pytest.raises(UserError, match="train-fraction"):
        service.plan_runs(base, ["full"], [0], [0.5, 2.0])  # one invalid cell refuses the grid


def _completed(store: Store, seconds: float, train_images: int, epochs: int, **cfg) -> int:
    config = make_config(**{"data": "/d", "epochs": epochs, **cfg}).model_dump()
    run = store.create_run(config, "earlier", status="running", host=socket.gethostname())
    store.finish_run(
        run.id, "completed", summary={"total_seconds": seconds, "train_images": train_images, "classes": ["a", "b"]}
    )
    return run.id


def test_the_estimate_comes_from_earlier_runs_on_this_machine(tiny, store):
    planned = service.plan_runs({"data": tiny, "epochs": 4, "image_size": 32}, ["feature_extraction"], [0, 1])
    none = service.estimate_seconds(store, planned)
    assert none["seconds"] is None and "no earlier run" in none["basis"]
    # 100 images x 2 epochs in 20 s: 0.1 s per image-epoch; the plan: 2 runs x 24 training images x 4 epochs.
    _completed(store, 20.0, 100, 2, image_size=32)
    _completed(store, 999.0, 100, 2, image_size=64)  # another image size: not this plan's
    est = service.estimate_seconds(store, planned)
    assert est["seconds"] == pytest.approx(2 * 24 * 4 * 0.1) and est["runs"] == 2


def test_more_seeds_queue_exactly_those_settings_after_their_highest_seed(tiny, store):
    base = {"data": tiny, "epochs": 2, "image_size": 32, "experiment": "s"}
    runs = [service.queue_run(store, c) for c in service.plan_runs(base, ["partial", "full"], [0, 1])]
    added = service.more_seeds(store, runs, 2)
    assert sorted((r.config["strategy"], r.config["seed"]) for r in added) == [
        ("full", 2),
        ("full", 3),
        ("partial", 2),
        ("partial", 3),
    ]
    for r in added:
        twin = next(o for o in runs if o.config["strategy"] == r.config["strategy"])
        assert {k: v for k, v in r.config.items() if k not in ("seed", "name")} == {
            k: v for k, v in twin.config.items() if k not in ("seed", "name")
        }
        assert r.status == "queued" and r.experiment == "s"


def _finished(store: Store, strategy: str, seed: int, acc: float, fraction: float = 1.0, per_class: int = 10) -> None:
    config = {"data": "/d", "strategy": strategy, "seed": seed, "train_fraction": fraction, "epochs": 1}
    run = store.create_run(config, "stats", status="running")
    store.log_epoch(run.id, 0, {"val_acc": acc, "val_loss": 1 - acc}, best=(acc, 0))
    store.finish_run(run.id, "completed", summary={"train_images": per_class * 2, "classes": ["a", "b"]})


def test_compare_json_says_whether_differences_are_real(store, capsys, tmp_path):
    for seed in range(6):
        _finished(store, "feature_extraction", seed, 0.70 + 0.002 * seed)
        _finished(store, "full", seed, 0.80 + 0.002 * ((seed * 7) % 5))  # ten points better, whatever the seed
        _finished(store, "partial", seed, 0.70 + 0.002 * ((seed * 3) % 5))  # within noise of feature extraction
    ids = [r.id for r in store.list_runs("stats")]
    assert cli.main(["compare", *map(str, ids), "--json", "--db", store.url]) == 0
    out = json.loads(capsys.readouterr().out)
    by_pair = {(d["a"], d["b"]): d for d in out["statistics"]}
    full = by_pair[("feature_extraction", "full")]
    assert full["verdict"] == "b" and full["text"].startswith("full beats feature_extraction by")
    assert full["low"] < 0 and full["high"] < 0 and full["n_pairs"] == 6
    assert by_pair[("feature_extraction", "partial")]["verdict"] == "noise"


def test_a_grid_report_has_data_efficiency_curves_and_crossovers(store):
    # Feature extraction wins with little data, full with plenty: they cross between 10 and 100 per class.
    for seed in (0, 1):
        for fraction, per_class, fe, full in ((0.1, 10, 0.8, 0.6), (1.0, 100, 0.85, 0.95)):
            _finished(store, "feature_extraction", seed, fe + 0.01 * seed, fraction, per_class)
            _finished(store, "full", seed, full + 0.01 * seed, fraction, per_class)
    rep = service.experiment_report(store, "stats")
    curves = rep["data_efficiency"]["curves"]
    assert sorted(curves) == ["feature_extraction", "full"]
    assert [p["images_per_class"] for p in curves["full"]] == [10, 100]
    assert curves["full"][0]["mean"] == pytest.approx(0.605) and curves["full"][0]["n"] == 2
    (cross,) = rep["data_efficiency"]["crossovers"]
    assert 10 < cross["x"] < 100 and "feature_extraction wins" in cross["text"]


def test_the_experiment_command_queues_a_grid(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    db = f"sqlite:///{tmp_path / 'g.db'}"
    code = cli.main(
        [
            "experiment",
            "--data",
            tiny,
            "--strategies",
            "feature_extraction,full",
            "--seeds",
            "2",
            "--train-fractions",
            "0.5,1",
            "--image-size",
            "32",
            "--detach",
            "--json",
            "--db",
            db,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert len(out["run_ids"]) == 8 and "8 runs in experiment" in captured.err
    runs = Store(db).list_runs(out["experiment"])
    assert {(r.config["strategy"], r.config["train_fraction"], r.config["seed"]) for r in runs} == {
        (s, f, seed) for s in ("feature_extraction", "full") for f in (0.5, 1.0) for seed in (0, 1)
    }
    assert cli.main(["experiment", "--data", tiny, "--strategies", "nope", "--db", db]) == 2


# --- what a comparison reads: test or validation, the metric, the best LR, the splits -------------------


def _scored(
    store: Store,
    strategy: str,
    seed: int,
    val: float,
    test: float | None = None,
    *,
    lr: float | None = None,
    split_seed: int = 0,
    test_last: float | None = None,
    experiment: str = "scored",
) -> int:
    """A completed run of two epochs, the first its best on val (the second 2 points lower), with test
    metrics as the engine records them (the best epoch's checkpoint; the last epoch's model too)."""
    config = {"data": "/d", "strategy": strategy, "seed": seed, "split_seed": split_seed, "lr": lr, "epochs": 2}
    run = store.create_run(config, experiment, status="running")
    for epoch, v in ((0, val), (1, val - 0.02)):
        store.log_epoch(
            run.id,
            epoch,
            {"val_acc": v, "val_loss": 1 - v, "val_macro_f1": v - 0.1, "val_balanced_acc": v - 0.05},
            best=(val, 0) if epoch == 0 else None,
        )
    summary: dict = {"train_images": 20, "classes": ["a", "b"]}
    for key, acc, epoch in (("test", test, 1), ("test_last", test_last, 2)):
        if acc is not None:
            summary[key] = {
                "acc": acc,
                "macro_f1": acc - 0.2,
                "balanced_acc": acc - 0.1,
                "loss": 0.5,
                "images": 40,
                "epoch": epoch,
                "classes": [],
            }
    store.finish_run(run.id, "completed", summary=summary)
    return run.id


def _noise(seed: int) -> float:
    """A seed's own share of an accuracy (irregular, so no two strategies differ by the same on every seed)."""
    return (0.0, 0.011, 0.004, 0.017, 0.008, 0.013, 0.002)[seed % 7]


def test_compare_reports_test_metrics_when_every_run_has_them_and_validation_on_request(store):
    # Validation favours feature extraction, test favours full: which one a verdict names says which it read.
    for seed in range(4):
        _scored(store, "feature_extraction", seed, 0.80 + _noise(seed), 0.75 + _noise(seed + 1))
        _scored(store, "full", seed, 0.70 + _noise(seed + 2), 0.85 + _noise(seed + 3))
    ids = [r.id for r in store.list_runs("scored")]
    auto = service.compare_runs(store, ids)
    assert auto["split"] == "test" and auto["measure"] == "test accuracy (each run's checkpoint chosen on validation)"
    (d,) = auto["statistics"]
    assert d["verdict"] == "b" and d["split"] == "test" and d["metric"] == "acc"
    assert d["text"].startswith("full beats feature_extraction by 10.") and "points of test accuracy" in d["text"]
    assert d["text"].endswith("4 seeds on split 0)") and sorted(d["run_ids"]) == sorted(ids)
    assert all(r["test_acc"] is not None for r in auto["runs"])
    (v,) = service.compare_runs(store, ids, split="val")["statistics"]
    assert v["verdict"] == "a" and "points of val accuracy" in v["text"]
    (f1,) = service.compare_runs(store, ids, metric="macro_f1")["statistics"]
    assert f1["mean"] == pytest.approx(d["mean"]) and "points of test macro-F1" in f1["text"]
    # One run without a test split: the comparison falls back to validation, and refuses test.
    _scored(store, "full", 9, 0.7)
    ids = [r.id for r in store.list_runs("scored")]
    assert service.compare_runs(store, ids)["split"] == "val"
    with pytest.raises(UserError, match="no test metrics"):
        service.compare_runs(store, ids, split="test")


def test_a_runs_score_is_read_at_its_best_or_last_epoch_on_either_split(store):
    run = store.get_run(_scored(store, "full", 0, 0.8, 0.7, test_last=0.65))
    epochs = store.epoch_metrics([run.id])[run.id]
    read = {
        (w, m, s): service.score(run, epochs, w, m, s)
        for w in ("best", "last")
        for m in service.METRICS
        for s in service.SPLITS
    }
    assert read[("best", "acc", "test")] == 0.7 and read[("last", "acc", "test")] == 0.65
    assert read[("best", "macro_f1", "test")] == pytest.approx(0.5)
    assert read[("best", "acc", "val")] == 0.8 and read[("last", "acc", "val")] == pytest.approx(0.78)
    assert read[("best", "balanced_acc", "val")] == pytest.approx(0.75)
    # No test_last: the last epoch's test is "test" only when that was measured at the last epoch.
    for epoch, expected in ((2, 0.7), (1, None)):
        summary = {**run.summary, "test": {**run.summary["test"], "epoch": epoch}}
        summary.pop("test_last")
        store.update_run(run.id, summary=summary)
        assert service.score(store.get_run(run.id), epochs, "last", "acc", "test") == expected
    with pytest.raises(ValueError, match="metric"):
        service.score(run, epochs, "best", "f2", "val")


def test_each_strategy_at_its_best_lr_is_chosen_on_validation_and_compared_on_test(store):
    # feature_extraction is best at 1e-3, full at 1e-4 on validation. On test, full would look best
    # at 1e-3 (0.90): the choice must ignore that.
    grid = {
        ("feature_extraction", 1e-3): (0.80, 0.82),
        ("feature_extraction", 1e-4): (0.70, 0.95),
        ("full", 1e-3): (0.60, 0.90),
        ("full", 1e-4): (0.78, 0.76),
    }
    for (strategy, lr), (val, test) in grid.items():
        for seed in range(3):
            own = _noise(seed + 1 + 3 * (strategy == "full"))
            _scored(store, strategy, seed, val + _noise(seed), test + own, lr=lr)
    runs = store.list_runs("scored")
    metrics = store.epoch_metrics([r.id for r in runs])
    chosen = {c["strategy"]: c for c in service.lr_choices(runs, metrics)}
    assert {s: c["lr"] for s, c in chosen.items()} == {"feature_extraction": 1e-3, "full": 1e-4}
    assert chosen["full"]["val_mean"] == pytest.approx(0.78 + sum(_noise(s) for s in range(3)) / 3)
    assert [t["lr"] for t in chosen["full"]["tried"]] == [1e-4, 1e-3] and chosen["full"]["n"] == 3
    (d,) = service.statistics(runs, metrics, split="test", best_lr=True)
    assert (d["a"], d["b"]) == ("feature_extraction (LR 0.001)", "full (LR 0.0001)")
    assert (d["lr_a"], d["lr_b"]) == (1e-3, 1e-4) and d["cell"] == {} and d["n_pairs"] == 3
    assert d["verdict"] == "a" and d["mean"] == pytest.approx(6.0, abs=0.5)  # 0.82 against 0.76, on test
    assert {store.get_run(i).config["lr"] for i in d["run_ids"]} == {1e-3, 1e-4} and len(d["run_ids"]) == 6
    # Without the option, each LR is its own cell.
    plain = service.statistics(runs, metrics, split="test")
    assert sorted(x["cell"]["lr"] for x in plain) == [1e-4, 1e-3] and all(x["family"] == 2 for x in plain)
    report = service.experiment_report(store, "scored", best_lr=True)
    assert {c["strategy"]: c["lr"] for c in report["lr_choices"]} == {"feature_extraction": 1e-3, "full": 1e-4}


def test_runs_over_several_splits_pair_by_split_and_seed_with_the_split_as_unit(store):
    for split in range(3):
        for seed in range(2):
            _scored(store, "feature_extraction", seed, 0.70 + 0.01 * split + _noise(seed), lr=1e-3, split_seed=split)
            _scored(store, "full", seed, 0.75 + 0.01 * split + _noise(seed + split), lr=1e-3, split_seed=split)
    runs = store.list_runs("scored")
    assert service.differing_keys(runs) == ["strategy"]  # the split seed is a replicate, not a setting
    assert [len(g.runs) for g in service.group_runs(runs)] == [6, 6]
    (d,) = service.statistics(runs, store.epoch_metrics([r.id for r in runs]))
    assert d["unit"] == "split" and d["n_units"] == 3 and d["n_pairs"] == 6 and d["splits"] == [0, 1, 2]
    assert [0, 1] in d["seeds"] and "over 3 splits, 6 paired runs" in d["text"]
    assert "split_seed" in service.config_table(runs)[0]
    added = service.more_splits(store, [r for r in runs if r.config["strategy"] == "full"], 2)
    assert sorted((r.config["split_seed"], r.config["seed"]) for r in added) == [(3, 0), (3, 1), (4, 0), (4, 1)]
    assert all(r.config["strategy"] == "full" and r.status == "queued" for r in added)


def test_holm_spans_every_pair_shown_or_each_cell(store):
    for lr in (1e-3, 1e-4):
        for strategy, base in (("feature_extraction", 0.7), ("full", 0.8), ("partial", 0.75)):
            for seed in range(3):
                _scored(store, strategy, seed, base + _noise(seed + len(strategy)), lr=lr)
    runs = store.list_runs("scored")
    metrics = store.epoch_metrics([r.id for r in runs])
    everything = service.statistics(runs, metrics)
    per_cell = service.statistics(runs, metrics, family="cell")
    assert len(everything) == len(per_cell) == 6
    assert all(d["family"] == 6 and d["scope"] == "all" for d in everything)
    assert all(d["family"] == 3 and d["scope"] == "cell" for d in per_cell)
    assert [d["p_adjusted"] >= c["p_adjusted"] for d, c in zip(everything, per_cell)] == [True] * 6


def test_what_would_settle_a_pair_is_the_seeds_needed_capped_and_said():
    base = {"verdict": "noise", "test": "paired t", "unit": "seed", "n_units": 3, "n_pairs": 3}
    assert service.to_settle({**base, "units_needed": 9}) == {
        "unit": "seed",
        "add": 6,
        "needed": 9,
        "capped": False,
        "text": "about 9 seeds would tell a difference of the observed size",
    }
    far = service.to_settle({**base, "units_needed": 45})
    assert far["add"] == service.SEEDS_OFFERED - 3 and far["capped"]
    assert "20 seeds in all is the most offered" in far["text"]
    beyond = service.to_settle({**base, "units_needed": None})
    assert beyond["capped"] and "more than 100 seeds" in beyond["text"]
    assert (
        service.to_settle(
            {**base, "verdict": "too_few", "test": "none", "n_units": 1, "n_pairs": 1, "units_needed": None}
        )["add"]
        == 1
    )
    assert service.to_settle({**base, "test": "identical", "units_needed": None}) is None
    assert service.to_settle({**base, "verdict": "a", "units_needed": None}) is None
    assert service.to_settle({**base, "unit": "split", "units_needed": 5})["unit"] == "split"


def test_the_experiment_command_varies_the_split_too(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    db = f"sqlite:///{tmp_path / 'g.db'}"
    code = cli.main(
        [
            "experiment",
            "--data",
            tiny,
            "--strategies",
            "feature_extraction,full",
            "--seeds",
            "2",
            "--split-seeds",
            "0,3",
            "--image-size",
            "32",
            "--detach",
            "--json",
            "--db",
            db,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    runs = Store(db).list_runs(json.loads(captured.out)["experiment"])
    assert sorted((r.config["strategy"], r.config["split_seed"], r.config["seed"]) for r in runs) == [
        (s, split, seed) for s in ("feature_extraction", "full") for split in (0, 3) for seed in (0, 1)
    ]
    with pytest.raises(UserError, match="listed twice"):
        service.plan_runs({"data": tiny, "image_size": 32}, ["full"], [0], split_seeds=[1, 1])
