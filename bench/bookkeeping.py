"""Bookkeeping on a generated database: one epoch's metric write, the Runs page's refresh, the
Compare page's data for hundreds of runs of a hundred epochs each."""

from __future__ import annotations

import random
import time
from pathlib import Path

from sqlalchemy import event

from tl_core import service
from tl_core.store import EpochWriter, Store
from ui import format as fmt

GROUPS = ["stem", *(f"stage{i}" for i in range(1, 8)), "head"]


def _epoch(rng: random.Random, epoch: int, groups: int) -> dict[str, float]:
    """What _fit records for one epoch of a progressive run with `groups` groups trainable."""
    acc = 1 - 0.9 * 0.95**epoch + rng.uniform(-0.02, 0.02)
    return {
        "train_loss": rng.random(),
        "train_acc": acc + 0.02,
        "val_loss": rng.random(),
        "val_acc": acc,
        "val_top5": min(1.0, acc + 0.1),
        **{f"lr/{g}": rng.random() * 1e-3 for g in GROUPS[-groups:]},
        "trainable_groups": groups,
        "trainable_params": 10_000 * groups,
        "epoch_seconds": rng.uniform(5, 6),
        "images_per_sec": rng.uniform(100, 200),
        "peak_memory_mb": 900.0,
        "wall_seconds": 5.5 * (epoch + 1),
        # every group's layer drift (0.0 while frozen), as runs record it since #12
        **{f"drift/{g}": (rng.random() * 1e-3 if g in GROUPS[-groups:] else 0.0) for g in GROUPS},
    }


def generate(store: Store, runs: int, epochs: int) -> list[int]:
    rng = random.Random(0)
    ids = []
    for i in range(runs):
        cfg = {
            "data": "data/animals",
            "backbone": "efficientnet_lite0",
            "strategy": "progressive",
            "epochs": epochs,
            "seed": i % 3,
        }
        run = store.create_run(cfg, "generated", status="completed")
        store.import_epochs(run.id, {e: _epoch(rng, e, min(len(GROUPS), 1 + e // 10)) for e in range(epochs)})
        store.update_run(run.id, best_val_acc=0.9, best_epoch=epochs - 1, summary={"total_seconds": 550.0})
        ids.append(run.id)
    return ids


def _median_ms(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2] * 1000


def measure(db: Path, runs: int = 500, epochs: int = 100) -> dict:
    db.unlink(missing_ok=True)
    store = Store(f"sqlite:///{db}")
    t = time.perf_counter()
    ids = generate(store, runs, epochs)
    out = {
        "runs": runs,
        "epochs": epochs,
        "generate_s": time.perf_counter() - t,
        "rows": sum(len(m) for e in store.epoch_metrics(ids[:1]).values() for m in e.values()) * runs,
    }

    # One epoch's metrics, written as _fit writes them (a run that is going on).
    live = store.create_run({"strategy": "progressive", "epochs": 1000}, "generated", status="running").id
    rng = random.Random(1)
    writes = []
    for epoch in range(30):
        m = _epoch(rng, epoch, 9)
        t = time.perf_counter()
        store.log_epoch(live, epoch, m, best=(0.9, epoch))
        writes.append(time.perf_counter() - t)
    out["log_epoch_ms"] = sorted(writes)[len(writes) // 2] * 1000
    # As _fit hands them over: to the background EpochWriter; the training thread pays the hand-over.
    handovers = []
    with EpochWriter(store) as writer:
        for epoch in range(30, 60):
            m = _epoch(rng, epoch, 9)
            t = time.perf_counter()
            writer.log_epoch(live, epoch, m, best=(0.9, epoch))
            handovers.append(time.perf_counter() - t)
            time.sleep(0.01)  # the rest of the epoch (the write goes on meanwhile)
    assert len(store.epoch_metrics([live])[live]) == 60
    out["handover_ms"] = sorted(handovers)[len(handovers) // 2] * 1000

    # The Runs page's refresh: the run records only (count the queries that touch metric tables).
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    def runs_page():
        rows = store.list_runs()
        fmt.runs_rows(rows)
        service.status_counts(rows)

    out["runs_refresh_ms"] = _median_ms(runs_page)
    out["runs_refresh_metric_queries"] = sum(("epoch_metrics" in q or "run_curves" in q) for q in statements)

    # The Compare page's data: the experiment's runs and every epoch's metrics of each.
    def compare_data():
        chosen = store.list_runs(experiment="generated")
        return store.epoch_metrics([r.id for r in chosen if r.id != live])

    out["compare_ms"] = _median_ms(compare_data)
    metrics = compare_data()
    chosen = [r for r in store.list_runs(experiment="generated") if r.id != live]
    out["compare_tables_ms"] = _median_ms(
        lambda: (service.summary_rows(chosen, metrics, 0.8), service.metric_rows(chosen, metrics))
    )
    store.close()
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(measure(Path(d) / "big.db"))
