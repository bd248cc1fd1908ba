"""Ray as the cluster executor (tl_core/executors/ray_executor.py): queued runs trained as Ray tasks.

A two-CPU Ray cluster is started once for the module in a process of its own, and the executor
(`python -m tl_core worker` with TL_EXECUTOR=ray) joins it through RAY_ADDRESS, as it would join a
real cluster. The tests share that executor and run in file order; the last one stops it.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tl_core import cli, service
from tl_core.config import make_config
from tl_core.executors.processes import pid_alive
from tl_core.store import FINISHED, Store

from . import helpers

ROOT = Path(__file__).resolve().parents[1]
# Offline and self-contained: no usage report, and no authentication token written to ~/.ray.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
HEAD = """
import signal, sys, ray
context = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=sys.argv[1], logging_level="warning")
print("gcs", context.address_info["gcs_address"], flush=True)
signal.signal(signal.SIGTERM, lambda *_: None)
signal.pause()
ray.shutdown()
"""


# One process runs this module's tests, one after another: they share the module's Ray cluster and
# executor (one of each, not one per xdist process).
pytestmark = pytest.mark.xdist_group("ray")

wait_for = functools.partial(helpers.wait_for, every=0.1)  # a run's short phases (importing) are watched


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray cluster with 2 CPUs and no GPU (a short temp dir: Ray's socket
    paths must fit 107 characters)."""
    temp = tempfile.mkdtemp(prefix="tlray", dir="/tmp")
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD, temp],
        env={**os.environ, **RAY_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = head.stdout.readline()
        assert line.startswith("gcs "), f"the Ray head did not start (exit code {head.poll()})"
        yield line.split()[1]
    finally:
        head.terminate()  # ray.shutdown() in the head stops the processes it started
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Executor:
    store: Store
    proc: subprocess.Popen
    log: Path
    runs: Path

    def said(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def executor(cluster, tmp_path_factory):
    home = tmp_path_factory.mktemp("ray_executor")
    db = f"sqlite:///{home / 'experiments.db'}"
    env = {
        **os.environ,
        **RAY_ENV,
        "PYTHONPATH": str(ROOT),
        "TL_EXECUTOR": "ray",
        "RAY_ADDRESS": cluster,
        "TL_RUNS_DIR": str(home / "runs"),
        "TL_OFFLINE": "1",
        "TL_HEARTBEAT_S": "1",
    }
    env.pop("TL_MAX_CONCURRENT", None)
    store = Store(db)
    with open(home / "executor.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tl_core", "worker", "--db", db, "--poll", "0.2"],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    yield Executor(store, proc, home / "executor.log", home / "runs")
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)
    store.close()


def _training_process(store: Store, run_id: int) -> psutil.Process | None:
    """The `train-run RUN_ID --db URL` process of this store's run (before it records its pid)."""
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if "train-run" in args and str(run_id) in args and store.url in args:
            return proc
    return None


def _ended(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _queue(store: Store, data: str, epochs: int, strategy: str = "feature_extraction") -> int:
    cfg = make_config(data=data, image_size=32, batch_size=8, workers=0, epochs=epochs, strategy=strategy)
    return store.create_run(cfg.model_dump(), cfg.experiment, status="queued").id


def test_two_runs_train_at_once_each_as_a_ray_task(executor, tiny):
    store = executor.store
    # Long enough that the two overlap even when one process's imports lag the other's by seconds.
    ids = [_queue(store, tiny, epochs=30) for _ in range(2)]
    wait_for(lambda: all(r.status in FINISHED for r in store.list_runs(run_ids=ids)), 120, "both runs to end")
    runs = store.list_runs(run_ids=ids)
    assert [r.status for r in runs] == ["completed", "completed"], [r.error for r in runs]
    (me,) = [w for w in store.workers() if w.pid == executor.proc.pid]
    assert me.executor == "ray" and me.alive
    for run in runs:
        assert run.executor == "ray" and run.worker_id == me.id and run.worker_pid == executor.proc.pid
        # Each trained in a process of its own on the node, which recorded itself and the node.
        assert run.pid not in (None, executor.proc.pid) and run.host == socket.gethostname()
        assert len(run.environment["ray_node_id"]) == 56 and run.environment["ray_node_ip"]
        assert run.epochs_done == 30 and (Path(run.run_dir) / "last.pt").is_file()
        assert Path(run.run_dir).parent == executor.runs  # TL_RUNS_DIR reached the task
    assert runs[0].pid != runs[1].pid
    assert max(r.started_at for r in runs) < min(r.ended_at for r in runs), "the runs never trained at once"


def test_cancel_reaches_the_ray_task(executor, tiny):
    store = executor.store
    training, starting = _queue(store, tiny, epochs=300), _queue(store, tiny, epochs=300)
    # `starting` is cancelled while its process is still importing: the executor cancels the task itself.
    importing = wait_for(lambda: _training_process(store, starting), 60, "the second run's process")
    service.cancel_run(store, starting)
    run = wait_for(lambda: (r := store.get_run(training)).epochs_done >= 1 and r, 120, "the first run's epoch")
    service.cancel_run(store, training)  # stops at its next batch, by itself
    wait_for(
        lambda: [store.get_run(i).status for i in (training, starting)] == ["cancelled"] * 2,
        30,
        "both runs to show cancelled",
    )
    wait_for(
        lambda: not pid_alive(run.pid) and _ended(importing), 30, "the training processes to end"
    )  # exits take longer on a loaded machine
    assert store.get_run(training).epochs_done < 300
    early = store.get_run(starting)  # its process was stopped before it started the run
    assert early.pid is None and early.epochs_done == 0 and early.error == "cancelled by request"
    wait_for(
        lambda: all(f"run {i}'s task ended, the run cancelled" in executor.said() for i in (training, starting)),
        10,
        "both tasks to end",
    )


def test_a_run_whose_ray_worker_dies_is_failed_resumable_and_resumes(executor, tiny):
    store = executor.store
    run_id = _queue(store, tiny, epochs=15)
    run = wait_for(lambda: (r := store.get_run(run_id)).epochs_done >= 2 and r, 120, "two epochs")
    ray_worker = psutil.Process(run.pid).parent()  # the Ray worker process running the task
    assert "ray::" in " ".join(ray_worker.cmdline())
    ray_worker.kill()
    lost = wait_for(lambda: (r := store.get_run(run_id)).status == "failed" and r, 30, "the run to show failed")
    assert "its Ray node was lost" in lost.error and "resumable from its last checkpoint" in lost.error
    wait_for(lambda: not pid_alive(run.pid), 10, "the training process to die with its task")
    assert 2 <= lost.epochs_done < 15 and store.count_epoch_rows(run_id) > 0
    service.resume_run(store, run_id)
    done = wait_for(lambda: (r := store.get_run(run_id)).status in FINISHED and r, 120, "the resumed run to end")
    assert done.status == "completed", done.error
    # From its last checkpoint (written after each epoch is recorded: the last one or the one before).
    assert done.epochs_done == 15 and 1 <= done.summary["resumed_from"]["epoch"] <= lost.epochs_done
    assert done.executor == "ray" and done.pid != run.pid


def test_an_unknown_executor_is_refused_with_what_to_do(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TL_EXECUTOR", "spark")
    assert cli.main(["worker", "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert "TL_EXECUTOR='spark' is not an executor" in err and "local" in err and "ray" in err


def test_stopping_the_executor_puts_its_runs_back_in_the_queue(executor, tiny):
    store = executor.store
    run_id = _queue(store, tiny, epochs=300, strategy="full")  # minutes of training: still going when stopped
    process = wait_for(lambda: _training_process(store, run_id), 60, "the run's process")
    executor.proc.send_signal(signal.SIGTERM)
    assert executor.proc.wait(timeout=60) == 0
    # Its task stopped its process: the run is back in the queue, to continue from its checkpoint if it has one.
    stopped = store.get_run(run_id)
    assert stopped.status == "queued" and stopped.resume and stopped.error is None
    wait_for(lambda: _ended(process), 10, "its process to end")
    (me,) = [w for w in store.workers() if w.pid == executor.proc.pid]
    assert me.stopped_at is not None and not me.alive
    assert f"run {run_id}'s task ended, the run queued" in executor.said()
