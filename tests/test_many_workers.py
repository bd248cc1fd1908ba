"""Many workers, one queue: no run is trained twice, a silent worker's runs are failed by another,
and a worker never touches the runs of a live one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tl_core.executors import worker as W
from tl_core.executors.processes import pid_alive
from tl_core.service import resume_run
from tl_core.store import Store

from .test_worker import ROOT, _queue, wait_for


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TL_RUNS_DIR": str(tmp_path / "runs"),
        "TL_MAX_CONCURRENT": "1",
        "TL_STANDBY": "0",
        **extra,
    }
    env.pop("TL_NO_WORKER", None)
    return env


def _start_worker(db: str, tmp_path: Path, env: dict, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--db", db, "--poll", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def test_four_workers_on_one_database_train_twelve_runs_each_exactly_once(db_url, tiny, tmp_path):
    store = Store(db_url)
    ids = [_queue(store, tiny, epochs=1, strategy="feature_extraction", seed=i) for i in range(12)]
    env = _env(tmp_path, OMP_NUM_THREADS="1")  # four runs at once on a small machine: one thread each
    workers = [_start_worker(db_url, tmp_path, env, f"worker{i}") for i in range(4)]
    try:
        wait_for(
            lambda: all(r.status in ("completed", "failed") for r in store.list_runs(run_ids=ids)),
            240,
            "the twelve runs to end",
        )
    finally:
        _stop(workers)
    runs = store.list_runs(run_ids=ids)
    assert [r.status for r in runs] == ["completed"] * 12, [(r.id, r.status, r.error) for r in runs]
    epochs = store.epoch_metrics(ids)
    assert all(r.epochs_done == 1 and list(epochs[r.id]) == [0] for r in runs)
    for r in runs:  # one training process per run: one start, one epoch line in its log
        log = (Path(r.run_dir) / "train.log").read_text()
        assert log.count("epoch 1/1 ") == 1 and log.count("warning: --image-size 32") == 1, log
    # Each run was claimed by one of the four registered workers, and the queue was shared.
    registered = {w.id: w for w in store.workers()}
    assert len(registered) == 4 and {w.pid for w in registered.values()} == {p.pid for p in workers}
    assert {r.worker_id for r in runs} <= set(registered) and len({r.worker_id for r in runs}) >= 2
    assert all(r.worker_pid == registered[r.worker_id].pid and r.executor == "local" for r in runs)
    assert all(w.stopped_at is not None for w in store.workers())  # each recorded its stop


def test_a_silent_worker_loses_its_run_to_another_worker_and_the_run_is_resumable(tiny, tmp_path):
    db = f"sqlite:///{tmp_path / 'h.db'}"
    store = Store(db)
    env = _env(tmp_path, TL_HEARTBEAT_S="0.5", TL_WORKER_TIMEOUT_S="4")
    run_id = _queue(store, tiny, epochs=300, strategy="feature_extraction")
    first = _start_worker(db, tmp_path, env, "first")
    procs = [first]
    try:
        run = wait_for(lambda: (r := store.get_run(run_id)).epochs_done >= 2 and r, 120, "the run to train")
        first.send_signal(signal.SIGSTOP)  # alive, but silent: no heartbeat
        procs.append(_start_worker(db, tmp_path, env, "second"))
        lost = wait_for(lambda: (r := store.get_run(run_id)).status == "failed" and r, 30, "the run to be failed")
        assert "worker lost" in lost.error and "stopped heartbeating" in lost.error and "resumable" in lost.error
        assert f"worker {run.worker_id} on {socket.gethostname()}" in lost.error
        # Its training process (the frozen worker's child) sees the run is not its own any more and stops.
        wait_for(lambda: not pid_alive(run.pid), 15, "the lost run's process to stop")
        assert store.get_run(run_id).status == "failed"  # it recorded nothing over the verdict
    finally:
        _stop(procs)
    # Resumable: back in the queue to continue from its own last checkpoint (test_service resumes one).
    resumed = resume_run(store, run_id)
    assert resumed.status == "queued" and resumed.resume and (Path(run.run_dir) / "last.pt").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _claimed(store: Store, tiny: str, worker_id: int, worker_pid: int, pid: int) -> int:
    """A run as worker `worker_id` leaves it once it started it (pids given)."""
    run_id = _queue(store, tiny, epochs=1)
    store.update_run(
        run_id,
        status="running",
        worker_id=worker_id,
        worker_pid=worker_pid,
        executor="local",
        pid=pid,
        host=socket.gethostname(),
    )
    return run_id


def test_recovery_never_touches_a_live_workers_run_and_resumes_a_dead_workers(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_HEARTBEAT_S", "0.2")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    me = W.Worker(db, concurrency=1)
    me.id = store.register_worker(socket.gethostname(), os.getpid())
    # Another worker of this host whose process this one cannot see (two containers, one host name):
    # heartbeating, so its run is its own, even with both pids dead from here.
    other = store.register_worker(socket.gethostname(), _dead_pid())
    run_id = _claimed(store, tiny, other, _dead_pid(), _dead_pid())
    for _ in range(5):
        store.heartbeat(other)
        assert me.recover() == [] and store.get_run(run_id).status == "running"
        time.sleep(0.1)
    # Once it also misses its heartbeats, it died here: its run goes back to the queue, to resume.
    time.sleep(0.6)
    assert me.recover() == [run_id]
    again = store.get_run(run_id)
    assert again.status == "queued" and again.resume and again.pid is None
    # With TL_RESUME_ON_RESTART=0 the run is failed instead, resumable.
    monkeypatch.setenv("TL_RESUME_ON_RESTART", "0")
    gone = store.register_worker(socket.gethostname(), _dead_pid())
    failed = _claimed(store, tiny, gone, _dead_pid(), _dead_pid())
    time.sleep(0.6)
    assert me.recover() == [failed]
    assert store.get_run(failed).status == "failed" and "resumable" in store.get_run(failed).error
    # A run of another machine's worker is never judged by pid here: fail_orphaned's, once it is silent.
    elsewhere = store.register_worker("another-host", _dead_pid())
    far = _claimed(store, tiny, elsewhere, _dead_pid(), _dead_pid())
    store.update_run(far, host="another-host")
    time.sleep(0.6)
    assert me.recover() == [] and store.get_run(far).status == "running"
