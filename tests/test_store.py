"""The store: plain objects out, constraints and pragmas in force, atomic claims: on SQLite and on
PostgreSQL (the `db_store` and `db_url` fixtures), except where a test is about SQLite itself."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tl_core.store import Artifact, EpochWriter, Prediction, Run, Store


def test_sqlite_gets_wal_busy_timeout_and_foreign_keys(store):
    with store.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_status_is_under_a_check_constraint(db_store):
    store = db_store
    run = store.create_run({"strategy": "full"})
    with pytest.raises(IntegrityError):
        with store.engine.begin() as c:
            c.execute(text("UPDATE runs SET status = 'exploded' WHERE id = :id"), {"id": run.id})
    with pytest.raises(ValueError):
        store.update_run(run.id, status="exploded")


def test_runs_and_metrics_round_trip_as_plain_objects(db_store):
    store = db_store
    run = store.create_run({"strategy": "full", "epochs": 2}, experiment="exp-a", name="mine")
    assert type(run) is Run and run.status == "queued" and run.name == "mine"
    store.log_epoch(run.id, 0, {"val_acc": 0.5, "lr/head": 1e-3}, best=(0.5, 0))
    store.log_epoch(run.id, 1, {"val_acc": 0.75, "lr/head": 5e-4}, best=(0.75, 1))
    got = store.get_run(run.id)
    assert (got.epochs_done, got.best_val_acc, got.best_epoch, got.experiment) == (2, 0.75, 1, "exp-a")
    assert store.epoch_metrics([run.id]) == {
        run.id: {0: {"val_acc": 0.5, "lr/head": 1e-3}, 1: {"val_acc": 0.75, "lr/head": 5e-4}}
    }
    assert store.count_epoch_rows(run.id) == 4
    assert [r.id for r in store.list_runs(experiment="exp-a")] == [run.id]
    assert store.list_runs(experiment="other") == []
    store.delete_run(run.id)
    assert store.list_runs() == [] and store.count_epoch_rows(run.id) == 0


def test_a_queued_run_is_claimed_once(db_url):
    a, b = Store(db_url), Store(db_url)
    run = a.create_run({"strategy": "full"})
    claims = [a.claim_next_queued(1), b.claim_next_queued(2)]
    assert [c.id for c in claims if c] == [run.id]
    assert a.get_run(run.id).status == "running"


def test_the_epoch_writer_writes_every_row_in_order_and_raises_a_failed_write(db_store):
    store = db_store
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


def test_epoch_rows_read_as_dicts_of_what_each_epoch_recorded(db_url):
    import json
    import pickle

    store = Store(db_url)
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


def test_many_claimers_take_each_queued_run_exactly_once(db_url):
    import threading

    stores = [Store(db_url) for _ in range(4)]
    ids = [stores[0].create_run({"strategy": "full"}).id for _ in range(12)]
    taken: list[tuple[int, int]] = []

    def claim(worker: int) -> None:
        while (run := stores[worker].claim_next_queued(worker, worker)) is not None:
            taken.append((run.id, worker))

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, _ in taken) == ids  # each once, none lost
    assert all(stores[0].get_run(i).worker_id == w for i, w in taken)
    for s in stores:
        s.close()


def test_workers_heartbeat_and_a_silent_workers_runs_are_failed_once(db_store):
    store = db_store
    live, silent = store.register_worker("a", 1), store.register_worker("b", 2, executor="ray")
    mine, orphan = store.create_run({}), store.create_run({})
    assert store.claim_next_queued(1, live).id == mine.id
    assert store.claim_next_queued(2, silent, executor="ray").id == orphan.id
    with store.engine.begin() as c:  # b's last heartbeat, ten minutes ago
        c.execute(
            text("UPDATE workers SET heartbeat_at = heartbeat_at - INTERVAL '10 minutes' WHERE id = :id")
            if store.engine.dialect.name == "postgresql"
            else text("UPDATE workers SET heartbeat_at = datetime(heartbeat_at, '-10 minutes') WHERE id = :id"),
            {"id": silent},
        )
    store.heartbeat(live)
    assert [w.id for w in store.workers(alive=True)] == [live]
    assert [(w.id, w.executor) for w in store.workers(alive=False)] == [(silent, "ray")]
    assert store.fail_orphaned(timeout_s=60) == [orphan.id]
    assert store.fail_orphaned(timeout_s=60) == []  # once
    failed = store.get_run(orphan.id)
    assert failed.status == "failed" and failed.error.startswith("worker lost: its worker") and failed.ended_at
    assert store.get_run(mine.id).status == "running"
    store.stop_worker(live)
    assert store.fail_orphaned(timeout_s=60) == [mine.id] and store.workers(alive=True) == []


def test_notes_tags_artifacts_and_predictions_round_trip(db_store):
    store = db_store
    run = store.create_run(
        {"strategy": "full", "lr": 1e-3, "nested": {"a": [1, 2.5, None, True]}}, "e", launched_by="ada@example.org"
    )
    assert store.annotate(run.id, notes=" first try ", tags=["b", " a", "", "b"]).tags == ["b", "a"]
    got = store.get_run(run.id)
    assert (got.notes, got.launched_by, got.config["nested"]) == (
        "first try",
        "ada@example.org",
        {"a": [1, 2.5, None, True]},
    )
    assert store.tags() == ["a", "b"] and [r.id for r in store.list_runs(tag="a")] == [run.id]
    art = store.add_artifact("e", "probe", {"acc": 0.5, "curve": [0.1, 0.2]})
    assert type(art) is Artifact and store.artifacts("e", "probe")[0].data == {"acc": 0.5, "curve": [0.1, 0.2]}
    rows = [Prediction(i, f"/img/{i}.png", i % 2, 0, 0.75, 0.25 + i / 10, 1.5) for i in range(3)]
    store.save_predictions(run.id, 4, rows)
    assert store.predictions(run.id) == rows
    assert store.get_run(run.id).summary["predictions"] == {"epoch": 5, "images": 3}


def test_a_diverged_runs_nan_and_infinity_are_stored_and_read_back(db_store):
    # PostgreSQL's json type refuses NaN and Infinity; a run whose loss diverged has them.
    store = db_store
    run = store.create_run({"strategy": "full"})
    summary = {"best_val_loss": math.inf, "last": {"train_loss": math.nan, "val_acc": 0.25}, "losses": [1.0, -math.inf]}
    store.finish_run(run.id, "failed", error="the loss was nan", summary=summary)
    back = store.get_run(run.id).summary
    assert back["best_val_loss"] == math.inf and math.isnan(back["last"]["train_loss"])
    assert back["losses"] == [1.0, -math.inf] and back["last"]["val_acc"] == 0.25
    store.log_epoch(run.id, 0, {"val_loss": math.inf})  # the float columns too
    assert store.epoch_metrics([run.id])[run.id][0]["val_loss"] == math.inf
    store.log_epoch(run.id, 1, {"train_loss": math.nan, "val_acc": 0.25})  # a diverged epoch: NaN is absent
    assert dict(store.epoch_metrics([run.id])[run.id][1]) == {"val_acc": 0.25}
    assert store.count_epoch_rows(run.id) == 2


def test_runs_filter_by_who_launched_them_in_the_database(db_store):
    store = db_store
    for name, who, experiment in [
        ("a", "alice@example.com", "x"),
        ("b", "Bob", "x"),
        ("c", None, "x"),
        ("d", "carol", "y"),
    ]:
        store.create_run({"strategy": "full"}, experiment, name, launched_by=who)
    assert store.launchers() == ["alice@example.com", "Bob", "carol"] and store.launchers("x") == [
        "alice@example.com",
        "Bob",
    ]
    assert [r.name for r in store.list_runs(launched_by=["Bob", "carol"])] == ["d", "b"]
    assert [r.name for r in store.list_runs("x", launched_by=[])] == ["c", "b", "a"]  # no one chosen: everyone


def test_a_sqlite_database_in_a_folder_not_made_yet_is_made_there(tmp_path, capsys):
    from tl_core import cli

    path = tmp_path / "new" / "folder" / "x.db"
    assert cli.main(["runs", "--db", f"sqlite:///{path}"]) == 0, (
        capsys.readouterr().err
    )  # was: unable to open database file
    assert path.is_file() and "no runs yet" in capsys.readouterr().out
    Store(f"sqlite:///{tmp_path / 'other' / 'y.db'}").create_run({"data": "x"})  # the store itself, not only the CLI
    assert (tmp_path / "other" / "y.db").is_file()
