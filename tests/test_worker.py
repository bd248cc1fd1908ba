"""The background worker: queued runs train in processes of their own; lost ones are failed (on
SQLite and on PostgreSQL: `db_url`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tl_core.config import make_config
from tl_core.store import Store

from .helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _serving(db: str, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TL_RUNS_DIR": str(tmp_path / "runs"), "TL_MAX_CONCURRENT": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--db", db, "--poll", "0.3"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = Store(db)
    yield store, proc
    proc.terminate()
    proc.wait(timeout=30)
    store.close()


@pytest.fixture
def worker(db_url, tmp_path):
    """A worker on a new database of each backend, and the database."""
    yield from _serving(db_url, tmp_path)


@pytest.fixture
def sqlite_worker(tmp_path):
    """A worker on a new SQLite database (its standby process: nothing of it depends on the backend)."""
    yield from _serving(f"sqlite:///{tmp_path / 'w.db'}", tmp_path)


def _queue(store: Store, data: str, **kw) -> int:
    cfg = make_config(data=data, image_size=32, batch_size=8, workers=0, **kw)
    return store.create_run(cfg.model_dump(), cfg.experiment, status="queued").id


def test_queued_runs_train_one_at_a_time_in_their_own_processes(worker, tiny):
    store, proc = worker
    ids = [_queue(store, tiny, epochs=2, strategy=s) for s in ("feature_extraction", "partial")]
    seen_running = set()

    def done():
        runs = store.list_runs(run_ids=ids)
        running = [r for r in runs if r.status == "running"]
        assert len(running) <= 1, "TL_MAX_CONCURRENT=1 but two runs train at once"
        seen_running.update(r.pid for r in running if r.pid)
        return all(r.status == "completed" for r in runs)

    wait_for(done, 240, "both runs to complete")
    runs = store.list_runs(run_ids=ids)
    pids = {r.pid for r in runs}
    assert len(pids) == 2 and proc.pid not in pids and None not in pids
    assert all(r.epochs_done == 2 and r.worker_pid == proc.pid for r in runs)
    assert all((Path(r.run_dir) / "train.log").read_text().count("epoch ") >= 2 for r in runs)


def test_a_killed_run_is_failed_with_its_epochs_kept_and_the_next_one_starts(worker, tiny):
    store, _ = worker
    long_run = _queue(store, tiny, epochs=200, strategy="feature_extraction")
    next_run = _queue(store, tiny, epochs=1, strategy="feature_extraction")
    run = wait_for(lambda: (r := store.get_run(long_run)).epochs_done >= 2 and r, 120, "two epochs")
    os.kill(run.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: store.get_run(long_run).status == "failed", 15, "the killed run to show failed")
    assert time.monotonic() - killed_at < 15
    lost = store.get_run(long_run)
    assert "process lost" in lost.error
    assert len(store.epoch_metrics([long_run])[long_run]) == lost.epochs_done >= 2
    wait_for(lambda: store.get_run(next_run).status == "completed", 120, "the next queued run")


def test_cancel_stops_a_running_run(worker, tiny):
    store, _ = worker
    run_id = _queue(store, tiny, epochs=200)
    wait_for(lambda: store.get_run(run_id).epochs_done >= 1, 120, "the run to start")
    store.request_cancel(run_id)
    wait_for(lambda: store.get_run(run_id).status == "cancelled", 20, "the run to stop")


def _standbys(worker_pid: int) -> list[int]:
    """Pids of the worker's standby training processes (imported, waiting for a run id)."""
    import psutil

    return [p.pid for p in psutil.Process(worker_pid).children() if "--standby" in p.cmdline()]


def test_a_queued_run_is_handed_to_the_standby_process_and_a_new_one_replaces_it(sqlite_worker, tiny):
    store, proc = sqlite_worker
    ready = wait_for(lambda: _standbys(proc.pid), 30, "a standby process")[0]
    said = f"standby {ready}: imports done, waiting for a run"
    logs = Path(store.url.removeprefix("sqlite:///")).parent / "runs"
    wait_for(lambda: any(said in f.read_text() for f in logs.rglob("standby.log")), 60, "the standby's imports")
    run_id = _queue(store, tiny, epochs=1, strategy="full")  # what a user queueing a run finds: a process ready
    run = wait_for(lambda: (r := store.get_run(run_id)).status == "completed" and r, 120, "the run")
    assert run.pid == ready and run.worker_pid == proc.pid  # it trained in the process whose imports were done
    assert "epoch 1/1" in (Path(run.run_dir) / "train.log").read_text()
    assert wait_for(lambda: [p for p in _standbys(proc.pid) if p != ready], 30, "a new standby")


def test_a_dead_standby_does_not_stop_the_next_run(sqlite_worker, tiny):
    store, proc = sqlite_worker
    dead = wait_for(lambda: _standbys(proc.pid), 30, "a standby process")[0]
    os.kill(dead, signal.SIGKILL)
    run_id = _queue(store, tiny, epochs=1)
    run = wait_for(lambda: (r := store.get_run(run_id)).status == "completed" and r, 120, "the run")
    assert run.pid != dead and run.epochs_done == 1


def test_without_standby_every_run_starts_a_fresh_process(tmp_path, tiny):
    db = f"sqlite:///{tmp_path / 'w.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TL_RUNS_DIR": str(tmp_path / "runs"), "TL_STANDBY": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--db", db, "--poll", "0.3"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        store = Store(db)
        run_id = _queue(store, tiny, epochs=1)
        run = wait_for(lambda: (r := store.get_run(run_id)).status == "completed" and r, 120, "the run")
        assert run.epochs_done == 1 and not _standbys(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_page_job_is_served_by_the_worker_beside_a_training_run(sqlite_worker, tiny):
    # TL_MAX_CONCURRENT=1 and a run training: the job does not wait for it (jobs are not counted).
    from tl_core.service import jobs

    store, proc = sqlite_worker
    long_run = _queue(store, tiny, epochs=500, strategy="feature_extraction")
    wait_for(lambda: store.get_run(long_run).epochs_done >= 1, 120, "the run to train")
    job = jobs.start(
        store,
        "probe",
        make_config(data=tiny, image_size=32, batch_size=8, workers=0, experiment="jobs"),
        ["--max-per-class", "4"],
    )
    found = wait_for(lambda: jobs.result(store, job) or jobs.failure(store, job), 180, "the probe's result")
    assert isinstance(found, dict) and found["job"] == job.id, found
    done = store.get_job(job.id)
    assert (done.status, done.worker_id, done.gpu) == ("completed", store.workers()[0].id, None)
    assert store.get_run(long_run).status == "running"  # it trained on meanwhile
    store.request_cancel(long_run)
    wait_for(lambda: store.get_run(long_run).status == "cancelled", 30, "the run to stop")


def test_a_zombie_is_not_alive_nor_a_worker():
    import psutil

    from tl_core.executors.processes import is_worker_process, pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "the child to exit")
    assert not pid_alive(child.pid)  # exited, not yet reaped
    child.wait()
    assert not pid_alive(child.pid) and not pid_alive(None)
    assert pid_alive(os.getpid()) and not is_worker_process(os.getpid())  # alive, but pytest, not a worker
