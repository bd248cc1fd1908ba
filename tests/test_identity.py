"""A run never inherits another run's state: run folders, checkpoints and workers are per identity."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import torch

from tl_core.executors.processes import ensure_worker, pid_alive, running_worker
from tl_core.store import Store
from tl_core.training import run as T

from .helpers import stop_before_epoch, train
from .test_worker import _queue, wait_for


def test_two_databases_sharing_a_runs_folder_never_share_a_run_folder(tiny, tmp_path, monkeypatch):
    # The case: a new database (a deleted experiments.db, or --db) with the same runs
    # folder. Its run 1 must train every epoch from scratch, not resume the old run 1.
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    old, new = Store(f"sqlite:///{tmp_path / 'old.db'}"), Store(f"sqlite:///{tmp_path / 'new.db'}")
    first = train(old, data=tiny, strategy="full", epochs=2, seed=1)
    old_ckpt = Path(old.get_run(first.run_id).run_dir) / "last.pt"
    before = old_ckpt.read_bytes()
    second = train(new, data=tiny, strategy="full", epochs=3, seed=1)
    assert first.run_id == second.run_id == 1
    assert second.status == "completed" and second.epochs == 3
    assert sorted(new.epoch_metrics([1])[1]) == [0, 1, 2]  # every epoch trained and recorded
    a, b = old.get_run(1), new.get_run(1)
    assert a.uid != b.uid and a.run_dir != b.run_dir and Path(b.run_dir).name == b.uid
    assert old_ckpt.read_bytes() == before  # the old run's checkpoint is untouched
    assert torch.load(Path(b.run_dir) / "last.pt", weights_only=True)["run_uid"] == b.uid


def test_a_database_made_again_at_the_same_url_is_another_database(db_url, request):
    first = Store(db_url)
    run = first.create_run({"strategy": "full"})
    identity = first.instance_id
    second = Store(db_url)
    assert second.instance_id == identity  # the same database, opened again
    first.close()
    second.close()
    if db_url.startswith("sqlite"):  # the file deleted
        for f in Path(db_url.removeprefix("sqlite:///")).parent.glob("experiments.db*"):
            f.unlink()
    else:  # the database dropped and created again under its name
        server, name = request.getfixturevalue("postgres_server"), db_url.rsplit("/", 1)[1]
        server.drop_database(name)
        server.create_database(name)
    again = Store(db_url)
    assert again.instance_id != identity and again.create_run({"strategy": "full"}).uid != run.uid
    again.close()


def _stopped(store, monkeypatch, **settings):
    """A run cancelled before its third epoch, with a checkpoint of its second."""
    with monkeypatch.context() as m:
        stop_before_epoch(m, 2)
        result = train(store, **settings)
    assert result.status == "cancelled" and result.epochs == 2
    return store.get_run(result.run_id)


def test_resume_refuses_the_checkpoint_of_another_run(tiny, store, monkeypatch):
    mine = _stopped(store, monkeypatch, data=tiny, epochs=4, seed=3)
    other = _stopped(store, monkeypatch, data=tiny, epochs=4, seed=3)  # the same settings, another run
    shutil.copy(Path(other.run_dir) / "last.pt", Path(mine.run_dir) / "last.pt")
    rows = store.count_epoch_rows(mine.id)
    store.requeue(mine.id, status="running")
    result = T.train_run(store, mine.id, progress=False)
    assert result.status == "failed"
    assert "is the checkpoint of another run" in result.error and other.uid in result.error
    assert store.count_epoch_rows(mine.id) == rows  # nothing of the other run was written


def test_resume_refuses_a_checkpoint_written_with_other_settings(tiny, store, monkeypatch):
    run = _stopped(store, monkeypatch, data=tiny, epochs=4)
    store.update_run(run.id, config={**run.config, "lr": 0.05})  # the record no longer matches the checkpoint
    store.requeue(run.id, status="running")
    result = T.train_run(store, run.id, progress=False)
    assert result.status == "failed" and "written with other settings" in result.error


def test_only_an_explicit_resume_loads_a_checkpoint(tiny, store, monkeypatch):
    run = _stopped(store, monkeypatch, data=tiny, epochs=4)
    store.update_run(run.id, status="running")  # started again, but not by a resume
    result = T.train_run(store, run.id, progress=False)
    assert result.status == "completed" and result.epochs == 4
    assert store.get_run(run.id).summary.get("resumed_from") is None
    again = _stopped(store, monkeypatch, data=tiny, epochs=4)
    store.requeue(again.id, status="running")  # an explicit resume
    assert T.train_run(store, again.id, progress=False).status == "completed"
    assert store.get_run(again.id).summary["resumed_from"] == {
        "epoch": 2,
        "checkpoint": str(Path(again.run_dir) / "last.pt"),
    }


def test_two_dashboards_on_two_databases_with_one_runs_folder_each_find_their_own_worker(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TL_STANDBY", "0")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the worker runs `python -m tl_core` from here
    stores = [Store(f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db")]
    pids = []
    try:
        for s in stores:
            assert running_worker(s) is None
            pids.append(ensure_worker(s))
        assert pids[0] != pids[1] and [running_worker(s) for s in stores] == pids
        assert [ensure_worker(s) for s in stores] == pids  # found, not started again
        runs = [_queue(s, tiny, epochs=1) for s in stores]
        for s, run_id, pid in zip(stores, runs, pids):
            done = wait_for(lambda: (r := s.get_run(run_id)).status == "completed" and r, 120, "the run")
            assert done.worker_pid == pid  # each database's run trained by that database's worker
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        for pid in pids:
            wait_for(lambda: not pid_alive(pid), 30, "the worker to stop")


def test_an_older_database_gains_run_identities_and_keeps_every_run(tmp_path):
    # A database as the previous release made it: runs without uid and resume columns.
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript((Path(__file__).parent / "fixtures" / "schema_v1.sql").read_text())
    con.execute("INSERT INTO experiments (id, name, created_at) VALUES (1, 'e', '2026-01-01')")
    for i in (1, 2):
        con.execute(
            "INSERT INTO runs (id, experiment_id, name, status, config, created_at, cancel_requested, "
            "epochs_done, summary, environment) VALUES (?, 1, ?, 'completed', '{}', '2026-01-01', 0, 1, "
            "'{}', '{}')",
            (i, f"r{i}"),
        )
        con.execute("INSERT INTO epoch_metrics VALUES (?, 0, 'val_acc', 0.5)", (i,))
    con.commit()
    con.close()
    store = Store(f"sqlite:///{path}")
    runs = store.list_runs()
    assert [r.name for r in runs] == ["r2", "r1"] and all(len(r.uid) == 32 for r in runs)
    assert len({r.uid for r in runs}) == 2 and not any(r.resume for r in runs)
    assert store.epoch_metrics([1, 2]) == {1: {0: {"val_acc": 0.5}}, 2: {0: {"val_acc": 0.5}}}
    assert store.create_run({}).uid not in {r.uid for r in runs}
    assert Store(f"sqlite:///{path}").get_run(1).uid == runs[1].uid  # upgraded once, then kept


def test_a_checkpoint_from_before_run_uids_resumes_only_with_the_settings_it_holds(tiny, store, monkeypatch):
    # A checkpoint of the previous release names no run: the config it holds must match the run's.
    run = _stopped(store, monkeypatch, data=tiny, epochs=4)
    path = Path(run.run_dir) / "last.pt"
    legacy = torch.load(path, weights_only=True)
    del legacy["run_uid"], legacy["config_fingerprint"]
    torch.save({**legacy, "config": {**legacy["config"], "lr": 0.05}}, path)
    store.requeue(run.id, status="running")
    refused = T.train_run(store, run.id, progress=False)
    assert refused.status == "failed" and "written with other settings" in refused.error
    torch.save(legacy, path)
    store.requeue(run.id, status="running")
    assert T.train_run(store, run.id, progress=False).status == "completed"
    assert store.get_run(run.id).summary["resumed_from"]["epoch"] == 2
