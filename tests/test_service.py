"""The service (`python -m tl_core serve`, what `make start` and the container run): the worker
starts with it, not with a browser; Ctrl-C stops everything, a training run first stopping at a
batch; the next start resumes that run from its checkpoint. `worker --stop` stops a detached
worker with its standby and runs; an idle standby is released and made again when runs come."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tl_core.executors.processes import ensure_worker, pid_alive, pidfile
from tl_core.store import Run, Store

from .test_worker import ROOT, _queue, wait_for

EPOCHS = 10  # long enough to stop it in the middle, short enough to finish after a resume


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TL_RUNS_DIR": str(tmp_path / "runs"),
        "TL_MAX_CONCURRENT": "1",
        "TL_STANDBY": "0",
        "TL_HEARTBEAT_S": "0.5",
        **extra,
    }
    env.pop("TL_NO_WORKER", None)
    return env


def _serve(db: str, tmp_path: Path, env: dict, name: str) -> subprocess.Popen:
    """The service without its dashboard (no browser anywhere), in a session of its own."""
    log = open(tmp_path / f"{name}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "serve", "--no-dashboard", "--db", db],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc


def _family(pid: int) -> set[int]:
    """`pid` and every process below it."""
    return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}


def _stopped_at_a_batch(store: Store, run_id: int) -> Run:
    run = wait_for(lambda: (r := store.get_run(run_id)).status != "running" and r, 60, "the run to stop")
    assert run.status == "queued" and run.resume and 2 <= run.epochs_done < EPOCHS, (run.status, run.error)
    assert "SIGTERM: run" in (Path(run.run_dir) / "train.log").read_text()  # it stopped itself, at a batch
    assert (Path(run.run_dir) / "last.pt").exists()
    return run


def _epoch_lines(run: Run) -> list[int]:
    log = (Path(run.run_dir) / "train.log").read_text()
    return [int(n) for n in re.findall(rf"^.*\]: epoch (\d+)/{EPOCHS} ", log, re.M)]  # timed lines (logs.py)


def test_ctrl_c_stops_the_service_and_the_next_start_resumes_the_run_from_its_checkpoint(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))  # where this test finds the worker's pid file
    db = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(db)
    env = _env(tmp_path)
    run_id = _queue(store, tiny, epochs=EPOCHS, strategy="full")
    # 1. The service starts its worker by itself, which trains the queued run: nobody opened a page.
    service = _serve(db, tmp_path, env, "first")
    try:
        run = wait_for(lambda: (r := store.get_run(run_id)).epochs_done >= 2 and r, 120, "the run to train")
        family = _family(service.pid)
        worker = int(pidfile(store).read_text())
        assert {worker, run.pid} <= family and run.worker_pid == worker
        assert ensure_worker(store) == worker  # a dashboard finds the service's worker and starts none
        # 2. Ctrl-C: the run checkpoints at its next batch (back in the queue), then the worker stops, then the service.
        service.send_signal(signal.SIGINT)
        assert service.wait(timeout=90) == 0
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
    assert not [p for p in family if pid_alive(p)], "a process outlived Ctrl-C"
    stopped = _stopped_at_a_batch(store, run_id)
    assert all(w.stopped_at is not None for w in store.workers())
    # 3. The next start resumes it from its own checkpoint: the epochs before the stop are not trained again.
    service = _serve(db, tmp_path, env, "second")
    try:
        done = wait_for(
            lambda: (r := store.get_run(run_id)).status in ("completed", "failed") and r,
            180,
            "the resumed run to complete",
        )
        assert done.status == "completed" and done.epochs_done == EPOCHS, done.error
        # ... and from the batch where it stopped: the interrupted epoch's batches before it are not trained again.
        assert done.summary["resumed_from"]["epoch"] == stopped.epochs_done and "batch" in done.summary["resumed_from"]
        assert re.search(
            rf"continues after epoch {stopped.epochs_done} and \d+/\d+ batches of epoch "
            rf"{stopped.epochs_done + 1} ",
            (Path(done.run_dir) / "train.log").read_text(),
        )
        lines = _epoch_lines(done)
        assert sorted(set(lines)) == list(range(1, EPOCHS + 1))
        assert all(lines.count(e) == 1 for e in range(1, stopped.epochs_done + 1))
        assert len(store.epoch_metrics([run_id])[run_id]) == EPOCHS
        family = _family(service.pid)
        service.send_signal(signal.SIGTERM)  # as `docker stop` does
        assert service.wait(timeout=60) == 0
        assert not [p for p in family if pid_alive(p)]
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)


def _pid_in(store: Store) -> int:
    try:
        return int(pidfile(store).read_text())
    except (OSError, ValueError):
        return 0


def test_the_service_restarts_a_worker_that_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    db = f"sqlite:///{tmp_path / 'd.db'}"
    store = Store(db)
    service = _serve(db, tmp_path, _env(tmp_path), "serve")
    try:
        first = wait_for(lambda: pid_alive(p := _pid_in(store)) and p, 30, "a worker")
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (p := _pid_in(store)) != first and pid_alive(p) and p, 30, "another worker")
        wait_for(lambda: second in {w.pid for w in store.workers(alive=True)}, 30, "it to register")
    finally:
        service.terminate()
        service.wait(timeout=60)
    assert "exited (-9)" in (tmp_path / "serve.log").read_text()


def _standbys(worker: int) -> list[int]:
    found = []
    for p in psutil.Process(worker).children():
        try:
            if "--standby" in p.cmdline():
                found.append(p.pid)
        except psutil.Error:  # exited (a zombie until the worker reaps it)
            pass
    return found


def test_worker_stop_stops_a_detached_worker_its_standby_and_its_runs(tiny, tmp_path, monkeypatch):
    # The worker a dashboard started (detached), with a standby released after 4 idle seconds.
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TL_STANDBY_IDLE_S", "4")
    monkeypatch.setenv("TL_MAX_CONCURRENT", "1")
    monkeypatch.chdir(ROOT)  # the worker runs `python -m tl_core` from here
    db = f"sqlite:///{tmp_path / 'w.db'}"
    store = Store(db)
    worker = ensure_worker(store)
    try:
        assert ensure_worker(store) == worker  # found, never a second one
        first = wait_for(lambda: _standbys(worker), 30, "a standby")[0]
        wait_for(lambda: not pid_alive(first) and not _standbys(worker), 30, "the idle standby to be released")
        log = pidfile(store).parent / "worker.log"
        assert "released after 4 s without a run" in log.read_text()
        # A queued run starts in a process of its own; once it has, a standby is made again.
        run_id = _queue(store, tiny, epochs=EPOCHS, strategy="full")
        run = wait_for(lambda: (r := store.get_run(run_id)).epochs_done >= 2 and r, 120, "the run to train")
        assert run.pid != first and wait_for(lambda: _standbys(worker), 60, "a standby again")
        family = _family(worker)
        assert len(family) >= 3  # the worker, the run, the standby
        out = subprocess.run(
            [sys.executable, "-m", "tl_core", "worker", "--stop", "--db", db],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert out.returncode == 0 and f"stopped worker {worker} of " in out.stdout, out.stderr
        assert not [p for p in family if pid_alive(p)], "a process outlived worker --stop"
        _stopped_at_a_batch(store, run_id)
        assert not pidfile(store).exists()
        again = subprocess.run(
            [sys.executable, "-m", "tl_core", "worker", "--stop", "--db", db],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0 and "no worker of" in again.stdout and "is running" in again.stdout
    finally:
        if pid_alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_the_service_starts_the_dashboard_of_this_checkout():
    from tl_core.executors.supervisor import APP

    assert APP == ROOT / "app.py" and APP.is_file()  # what `streamlit run` is given
