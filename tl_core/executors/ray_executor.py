"""The Ray executor: queued runs trained on a Ray cluster instead of beside the worker.

With TL_EXECUTOR=ray, `python -m tl_core worker` serves the queue through this module. It is a
process like the worker (worker.py): it registers itself in the store (executor "ray") and
heartbeats every TL_HEARTBEAT_S, claims queued runs while the cluster has room for them, and sends
each to the cluster as one Ray task asking for one GPU (one CPU on a cluster without GPUs, read
from `ray.cluster_resources()` as nodes come and go). It joins the cluster at RAY_ADDRESS, or
starts a Ray of its own on this machine and shuts it down when it stops. TL_MAX_CONCURRENT (or
--max-concurrent) caps the runs it has on the cluster at once.

On its node a task runs `python -m tl_core train-run ID --db URL` in a subprocess: the code path
of the worker's own runs, and no torch in the executor or in Ray's worker process. The run reports
its epochs to the database itself and records the node's hostname as its `host` when it starts;
the task adds the Ray node to the run's `environment` (`ray_node_id`, `ray_node_ip`).

- Cancel: the training loop stops at its next batch when a cancel is requested. A run whose task
  has not started training yet (still waiting in Ray, or importing), or that does not stop within
  `cancel_grace_s`, has its task cancelled with `ray.cancel(force=True)`; it is marked cancelled.
- A lost node or a killed task: `ray.get` raises; the run is failed with why, resumable from its
  last checkpoint. Ray never retries a task (max_retries=0), so a run never trains twice at once;
  the training subprocess dies with the task's process (PR_SET_PDEATHSIG).
- Stopping (SIGTERM, SIGINT, `worker --stop` on this host): no new runs are sent; each task is
  cancelled without force, which makes it SIGTERM its training process, so the run stops at its
  next batch and goes back to the queue (TL_RESUME_ON_RESTART; else failed, resumable), as the
  worker's runs do. A task still running after STOP_GRACE_S (or at a second signal) is cancelled
  with force. The executor then records its stop and leaves Ray (shutting down one it started).
- Runs of a worker or executor that went silent are failed, resumable (`Store.fail_orphaned`).

What every node must share with the executor:
- the database: the --db / DATABASE_URL must be reachable from each node (PostgreSQL; a SQLite
  file only on a filesystem every node mounts, e.g. a one-machine cluster);
- TL_RUNS_DIR (checkpoints, logs, caches) and the datasets, at the same paths: today a shared
  filesystem (NFS, a cluster filesystem, a bind mount) is the only storage that works. Keeping
  checkpoints in Ray's storage or an object store is future work;
- this code and a Python with requirements.txt installed, at the same paths (a shared checkout or
  the same image): Ray's workers find this module through the job's `code_search_path`, and the
  training subprocess is the node's `sys.executable` with the same source folder on PYTHONPATH.
The TL_* settings a training process reads (runs and cache folders, offline, image limits) go to
the task from the executor's settings; CUDA_VISIBLE_DEVICES is Ray's to set, per task. A cluster
with token authentication needs its token where Ray looks for it (RAY_AUTH_TOKEN, ~/.ray/auth_token).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import exceptions as ray_errors
from ray.job_config import JobConfig

from .. import settings
from ..errors import UserError
from ..logs import logger
from ..store import Run, Store
from ..store.run_folders import run_folder
from .serving import PROCESS_LOST, RESUMABLE, STOP_GRACE_S, Serving, masked_url

log = logger(__name__)  # timed lines (logs.py), as the worker's

NODE_LOST = "its Ray node was lost"
CANCELLED = "cancelled by request"
SOURCE = Path(__file__).resolve().parents[2]  # the folder holding tl_core: PYTHONPATH on the nodes


# --- on the node ----------------------------------------------------------------------------


def _own_group_dying_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgid(0, 0)  # signals to Ray's worker process are not the run's
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the run dies with its task's process


def train_on_node(run_id: int, db_url: str, cwd: str, env: dict[str, str]) -> dict:
    """The Ray task: train run `run_id` in a subprocess on this node (given the executor's `env`,
    see _node_env) and record the node in the run's environment once the run has started.
    Cancelled without force (the executor stops), it asks the run to stop at its next batch and
    waits for it. Returns the subprocess's exit code."""
    node = {"ray_node_id": ray.get_runtime_context().get_node_id(), "ray_node_ip": ray.util.get_node_ip_address()}
    store = Store(db_url)
    try:
        log = run_folder(store.get_run(run_id)) / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tl_core", "train-run", str(run_id), "--db", db_url],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=settings.child_environment(**env),
                preexec_fn=_own_group_dying_with_parent,
                cwd=cwd if Path(cwd).is_dir() else None,
            )
        noted = False
        try:
            while proc.poll() is None:  # polled, not waited on: a cancel's KeyboardInterrupt gets through
                noted = noted or _note_node(store, run_id, proc.pid, node)
                time.sleep(0.5)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)  # training/stopping.py: stops at its next batch, back in the queue
            while proc.poll() is None:
                time.sleep(0.2)
        if not noted:
            _note_node(store, run_id, proc.pid, node)
        return {"exit_code": proc.returncode, **node, "host": socket.gethostname()}
    finally:
        store.close()


def _note_node(store: Store, run_id: int, pid: int, node: dict) -> bool:
    """Add the node to the run's environment once its process has started the run (start_run
    writes the environment, once); whether it was added."""
    run = store.get_run(run_id)
    if run.pid != pid:
        return False
    store.update_run(run_id, environment={**run.environment, **node})
    return True


def _node_env(s: settings.Settings) -> dict[str, str]:
    """The settings a training process on another machine reads, as its environment (the inverse
    of settings.from_env for those fields), paths made absolute."""
    env = {
        "PYTHONPATH": str(SOURCE),
        "TL_RUNS_DIR": str(s.runs_dir.resolve()),
        "TL_CACHE_DIR": str(s.cache_dir.resolve()),
        "TL_CACHE_MAX_GB": str(s.cache_max_gb),
        "TL_MAX_IMAGE_PIXELS": str(s.max_image_pixels),
        "TL_RESUME_ON_RESTART": "1" if s.resume_on_restart else "0",
    }
    if s.offline:
        env["TL_OFFLINE"] = "1"
    return env


_train_task = ray.remote(train_on_node)


# --- the executor ---------------------------------------------------------------------------


@dataclass
class Task:
    run: Run
    ref: ray.ObjectRef
    cancel_seen_at: float | None = None  # when the executor first saw the run's cancel request
    forced: bool = False  # ray.cancel(force=True) sent


class RayExecutor(Serving):
    """Claims queued runs and trains each as a Ray task; see the module docstring."""

    name = "ray executor"

    def __init__(
        self,
        db_url: str,
        concurrency: int | None = None,
        poll_seconds: float = 1.0,
        cancel_grace_s: float = 30.0,
        cpus_per_run: float = 1.0,
    ):
        self.db_url = db_url
        self.store = Store(db_url)
        self.limit = concurrency or settings.current().max_concurrent  # None: what the cluster holds
        self.poll_seconds = poll_seconds
        self.cancel_grace_s = cancel_grace_s
        self.cpus_per_run = cpus_per_run
        self.tasks: dict[int, Task] = {}
        self.host = socket.gethostname()
        self.id: int | None = None  # in the store's workers table
        self.beat_at = 0.0

    # 1. The cluster.
    def connect(self) -> None:
        """Join RAY_ADDRESS, or start a Ray on this machine (shut down again by stop())."""
        address = settings.current().ray_address
        try:
            # Ray's workers import this module from the executor's source folder, on every node.
            job = JobConfig(code_search_path=[str(SOURCE)])
            # ray.init's logging_level is annotated int, but it takes a level's name too (its own default is "info").
            if address:
                ray.init(address=address, job_config=job, logging_level="warning")  # type: ignore[arg-type]
            else:
                ray.init(
                    address="local",
                    job_config=job,
                    include_dashboard=False,
                    logging_level="warning",  # type: ignore[arg-type]
                )
        except ConnectionError as e:
            raise UserError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({e}); start it (`ray start "
                f"--head` on its head node), correct RAY_ADDRESS, or unset it to start a Ray here"
            ) from e

    def per_run(self) -> dict:
        """What one run asks of the cluster: a GPU if it has any, else cpus_per_run CPUs."""
        return {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": self.cpus_per_run}

    def capacity(self) -> int:
        """Runs the cluster can train at once as it is now, within the cap."""
        resources = ray.cluster_resources()
        fits = int(resources.get("GPU", 0)) or int(resources.get("CPU", 0) // self.cpus_per_run)
        return min(fits, self.limit) if self.limit else fits

    def submit(self, run: Run) -> None:
        # No runtime_env: Ray's pooled workers take the task at once (an env of its own would start new ones).
        task = _train_task.options(**self.per_run(), max_retries=0, retry_exceptions=False, name=f"tl-run-{run.id}")
        self.tasks[run.id] = Task(run, task.remote(run.id, self.db_url, os.getcwd(), _node_env(settings.current())))

    # 2. Tasks that ended, and cancels.
    def settle(self, timeout: float = 0) -> None:
        """Record the end of each finished task whose run did not record its own."""
        if not self.tasks:
            return
        done, _ = ray.wait([t.ref for t in self.tasks.values()], num_returns=len(self.tasks), timeout=timeout)
        for ref in done:
            run_id = next(i for i, t in self.tasks.items() if t.ref == ref)
            self._finish(self.tasks.pop(run_id), *self._outcome(ref))

    @staticmethod
    def _outcome(ref: ray.ObjectRef) -> tuple[dict | None, str | None]:
        """The task's result, or why it has none."""
        try:
            return ray.get(ref), None
        except ray_errors.TaskCancelledError:
            return None, "its Ray task was cancelled"
        except ray_errors.NodeDiedError as e:
            return None, f"{NODE_LOST}: {_first_line(e)}"
        except ray_errors.WorkerCrashedError as e:
            return None, f"{NODE_LOST}: the Ray worker process running it died ({_first_line(e)})"
        except ray_errors.RayTaskError as e:  # the task's own code raised (the run's database away...)
            cause = e.cause if isinstance(e.cause, BaseException) else e
            return None, f"its Ray task failed: {type(cause).__name__}: {_first_line(cause)}"
        except ray_errors.RayError as e:
            return None, f"{NODE_LOST}: {type(e).__name__}: {_first_line(e)}"

    def _finish(self, task: Task, result: dict | None, lost: str | None) -> None:
        run = self.store.get_run(task.run.id)
        if run.status != "running" or run.worker_id != self.id:
            status, error = run.status, None  # it recorded its end, or went back to the queue, or is another's
        elif task.cancel_seen_at is not None or run.cancel_requested:
            status, error = "cancelled", CANCELLED
        elif self.stopping and settings.current().resume_on_restart:
            status, error = "queued", None  # stopped before its process could put it back itself
        elif self.stopping:
            status, error = "failed", f"stopped with its Ray executor {RESUMABLE}"
        elif result is not None:
            code, host = result["exit_code"], result["host"]
            status, error = "failed", f"{PROCESS_LOST} (exit code {code} on {host}) {RESUMABLE}"
        else:
            status, error = "failed", f"{lost} {RESUMABLE}"
        if status == "queued" and run.status == "running":
            self.store.requeue(run.id)
        elif error is not None:
            self.store.finish_run(run.id, status, error=error)
        log.info(f"run {run.id}'s task ended, the run {status}" + (f": {error}" if error else ""))

    def cancel_requested(self) -> None:
        """Cancel the task of each run whose cancel was asked for and that has not stopped itself:
        at once if it has not started training, after cancel_grace_s if it has."""
        asked = [t for t in self.tasks.values() if not t.forced]
        if not asked:
            return
        runs = {r.id: r for r in self.store.list_runs(run_ids=[t.run.id for t in asked])}
        now = time.monotonic()
        for task in asked:
            run = runs.get(task.run.id)
            if run is None or not run.cancel_requested or run.status != "running":
                continue  # not asked, or the run recorded its end and its task is returning
            if task.cancel_seen_at is None:
                task.cancel_seen_at = now
            if run.pid is None or now - task.cancel_seen_at >= self.cancel_grace_s:
                ray.cancel(task.ref, force=True)
                task.forced = True

    # 3. The loop.
    def step(self) -> None:
        if time.monotonic() - self.beat_at >= settings.current().heartbeat_s:
            assert self.id is not None  # serve() registered this executor before its loop
            self.store.heartbeat(self.id)
            self.beat_at = time.monotonic()
            if orphaned := self.store.fail_orphaned():
                log.warning(f"runs {orphaned} failed: their worker stopped heartbeating")
        self.settle()
        self.cancel_requested()
        room = self.capacity() - len(self.tasks)
        while not self.stopping and room > 0:
            run = self.store.claim_next_queued(os.getpid(), self.id, "ray")
            if run is None:
                break
            self.submit(run)
            room -= 1

    def serve(self) -> None:
        self.connect()
        for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets handlers of its own
            signal.signal(signum, self._signal)
        self.id = self.store.register_worker(self.host, os.getpid(), "ray")
        self.beat_at = time.monotonic()
        log.info(
            f"ray executor {os.getpid()} (worker {self.id}): {self.capacity()} runs at once on "
            f"{ray.cluster_resources()}, db {masked_url(self.db_url)}"
        )
        self.loop()

    def stop(self) -> None:
        """Ask each task's run to stop at its next batch (back in the queue), cancel with force what is
        left after STOP_GRACE_S (or a second signal), record this executor's stop, leave Ray."""
        self.stopping = True
        for task in self.tasks.values():
            ray.cancel(task.ref, force=task.forced)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.tasks and time.monotonic() < deadline and self.signals < 2:
            self.settle(timeout=0.2)
        for task in self.tasks.values():
            log.warning(f"run {task.run.id} did not stop within {STOP_GRACE_S:g} s; its task is cancelled with force")
            ray.cancel(task.ref, force=True)
        self.settle(timeout=10)
        try:
            if self.id is not None:
                self.store.stop_worker(self.id)
                self.store.fail_orphaned()  # a run whose task could not be stopped: failed, resumable
        except Exception as e:  # the database is away: other workers fail our runs once we are silent
            log.error(f"could not record the stop ({type(e).__name__}: {e})")
        ray.shutdown()  # a Ray started here stops with it; a cluster's driver only disconnects
        self.store.close()
        log.info(f"ray executor {os.getpid()}: stopped")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
