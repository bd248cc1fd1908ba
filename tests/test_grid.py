"""Grids from one launch: the plan, nested train fractions, time estimates, more seeds, the report."""

from __future__ import annotations

import json
import socket

import pytest

from tl_core import cli, data, service
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.store import Store


def test_train_fractions_are_nested_and_keep_every_class(animals):
    index = data.scan_dataset(animals)
    for split_seed in (0, 7):
        sets = {f: {it.path for it in data.split_dataset(index, 0.2, f, split_seed).train} for f in (0.02, 0.1, 0.3, 1)}
        assert sets[0.02] < sets[0.1] < sets[0.3] < sets[1]  # a smaller subset lies inside a larger one
        smallest = data.split_dataset(index, 0.2, 0.02, split_seed).train
        assert {it.label for it in smallest} == set(range(len(index.classes)))  # every class keeps an image
    val = {f: [it.path for it in data.split_dataset(index, 0.2, f, 3).val] for f in (0.1, 1)}
    assert val[0.1] == val[1]  # the fraction thins the training images only


def test_a_grid_plans_every_cell_and_seed_and_refuses_as_a_whole(tiny):
    base = {"data": tiny, "epochs": 2, "image_size": 32, "experiment": "grid"}
    configs = service.plan_runs(base, ["feature_extraction", "full"], [0, 1], [0.5, 1.0], [1e-3, None])
    assert len(configs) == 2 * 2 * 2 * 2
    assert {(c.strategy, c.train_fraction, c.lr, c.seed) for c in configs} == {
        (s, f, lr, seed) for s in ("feature_extraction", "full") for f in (0.5, 1.0) for lr in (1e-3, None)
        for seed in (0, 1)}
    with pytest.raises(UserError, match="listed twice"):
        service.plan_runs(base, ["full"], [0], [0.5, 0.5])
    with pytest.raises(UserError, match="train-fraction"):
        service.plan_runs(base, ["full"], [0], [0.5, 2.0])  # one invalid cell refuses the grid


def _completed(store: Store, seconds: float, train_images: int, epochs: int, **cfg) -> int:
    config = make_config(**{"data": "/d", "epochs": epochs, **cfg}).model_dump()
    run = store.create_run(config, "earlier", status="running", host=socket.gethostname())
    store.finish_run(run.id, "completed", summary={"total_seconds": seconds, "train_images": train_images,
                                                   "classes": ["a", "b"]})
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
        ("full", 2), ("full", 3), ("partial", 2), ("partial", 3)]
    for r in added:
        twin = next(o for o in runs if o.config["strategy"] == r.config["strategy"])
        assert {k: v for k, v in r.config.items() if k not in ("seed", "name")} == \
            {k: v for k, v in twin.config.items() if k not in ("seed", "name")}
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
    code = cli.main(["experiment", "--data", tiny, "--strategies", "feature_extraction,full", "--seeds", "2",
                     "--train-fractions", "0.5,1", "--image-size", "32", "--detach", "--json", "--db", db])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert len(out["run_ids"]) == 8 and "8 runs in experiment" in captured.err
    runs = Store(db).list_runs(out["experiment"])
    assert {(r.config["strategy"], r.config["train_fraction"], r.config["seed"]) for r in runs} == {
        (s, f, seed) for s in ("feature_extraction", "full") for f in (0.5, 1.0) for seed in (0, 1)}
    assert cli.main(["experiment", "--data", tiny, "--strategies", "nope", "--db", db]) == 2
