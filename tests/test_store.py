"""The store: plain objects out, constraints and pragmas in force, atomic claims."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tl_core.store import EpochWriter, Run, Store


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


def test_the_epoch_writer_writes_every_row_in_order_and_raises_a_failed_write(store):
    run = store.create_run({"epochs": 50}, "x", status="running")
    with EpochWriter(store) as writer:
        for epoch in range(50):
            writer.log_epoch(run.id, epoch, {"val_acc": epoch / 50}, best=(epoch / 50, epoch))
    assert [m["val_acc"] for m in store.epoch_metrics([run.id])[run.id].values()] == [e / 50 for e in range(50)]
    assert store.get_run(run.id).epochs_done == 50  # close() waited for all of them

    def broken(*args, **kwargs):
        raise OSError("disk I/O error")

    writer = EpochWriter(store)
    writer.store = type("Broken", (), {"log_epoch": staticmethod(broken)})()
    writer.log_epoch(run.id, 50, {"val_acc": 1.0})
    with pytest.raises(OSError, match="disk I/O error"):
        writer.close()
    assert not writer.thread.is_alive()


def test_a_plain_file_path_is_a_sqlite_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("here.db")
    store.create_run({"data": "x"}, "default", None)
    assert store.url == f"sqlite:///{tmp_path / 'here.db'}" and (tmp_path / "here.db").exists()


def test_epoch_rows_read_as_dicts_of_what_each_epoch_recorded(tmp_path):
    import json
    import pickle

    store = Store(f"sqlite:///{tmp_path / 'e.db'}")
    run = store.create_run({"data": "x"}, "default", None)
    store.import_epochs(run.id, {0: {"val_acc": 0.5}, 1: {"val_acc": 0.75, "lr/head": 1e-3}})
    epochs = store.epoch_metrics([run.id])[run.id]
    assert epochs == {0: {"val_acc": 0.5}, 1: {"val_acc": 0.75, "lr/head": 1e-3}}
    assert "lr/head" not in epochs[0] and epochs[0].get("lr/head") is None and len(epochs[0]) == 1
    with pytest.raises(KeyError):
        epochs[0]["lr/head"]
    assert type(epochs[1]["val_acc"]) is float and sorted(epochs[1]) == ["lr/head", "val_acc"]
    assert pickle.loads(pickle.dumps(epochs[1])) == {"val_acc": 0.75, "lr/head": 1e-3}
    assert json.loads(json.dumps({**epochs[1]})) == {"val_acc": 0.75, "lr/head": 1e-3}
