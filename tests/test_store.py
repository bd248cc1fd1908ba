"""The store: plain objects out, constraints and pragmas in force, atomic claims."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tl_core.store import Run, Store


def test_sqlite_gets_wal_busy_timeout_and_foreign_keys(store):
    with store.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_status_is_under_a_check_constraint(store):
    run = store.create_run({"strategy": "full"})
    with pytest.raises(IntegrityError):
        with store.engine.begin() as c:
            c.execute(text("UPDATE runs SET status = 'exploded' WHERE id = :id"), {"id": run.id})
    with pytest.raises(ValueError):
        store.update_run(run.id, status="exploded")


def test_runs_and_metrics_round_trip_as_plain_objects(store):
    run = store.create_run({"strategy": "full", "epochs": 2}, experiment="exp-a", name="mine")
    assert type(run) is Run and run.status == "queued" and run.name == "mine"
    store.log_epoch(run.id, 0, {"val_acc": 0.5, "lr/head": 1e-3}, best=(0.5, 0))
    store.log_epoch(run.id, 1, {"val_acc": 0.75, "lr/head": 5e-4}, best=(0.75, 1))
    got = store.get_run(run.id)
    assert (got.epochs_done, got.best_val_acc, got.best_epoch, got.experiment) == (2, 0.75, 1, "exp-a")
    assert store.epoch_metrics([run.id]) == {run.id: {0: {"val_acc": 0.5, "lr/head": 1e-3},
                                                      1: {"val_acc": 0.75, "lr/head": 5e-4}}}
    assert store.count_epoch_rows(run.id) == 4
    assert [r.id for r in store.list_runs(experiment="exp-a")] == [run.id]
    assert store.list_runs(experiment="other") == []
    store.delete_run(run.id)
    assert store.list_runs() == [] and store.count_epoch_rows(run.id) == 0


def test_a_queued_run_is_claimed_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    a, b = Store(url), Store(url)
    run = a.create_run({"strategy": "full"})
    claims = [a.claim_next_queued(1), b.claim_next_queued(2)]
    assert [c.id for c in claims if c] == [run.id]
    assert a.get_run(run.id).status == "running"
