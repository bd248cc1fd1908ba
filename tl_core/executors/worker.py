"""The worker: takes queued runs from the database and trains each in a process of its own.

It starts with the service (`python -m tl_core serve`: supervisor.py, what `make start` and the
container run), not with a browser, and is detached from it: closing the tab or restarting
Streamlit stops nothing. With TL_MAX_CONCURRENT (or --max-concurrent), that many runs train at
once. Without, on a machine whose GPUs NVML measures, as many as their memory holds: each run goes
to the GPU placement.py chooses for it (it stays queued while none has room), and its process sees
that GPU alone; on a CPU machine, one run at a time. Each run's process is started in a process
group of its own that dies with the worker (processes.py), and records its own pid in the run.

A page's jobs come through the store's `jobs` table and go first, placed as runs are (jobs.py).

Many workers, one queue. Any number of workers (processes, machines) may serve one database; a
queued run is claimed by exactly one (`Store.claim_next_queued`: SKIP LOCKED on PostgreSQL, a
conditional update on SQLite). Each worker registers in the store's `workers` table, heartbeats
every TL_HEARTBEAT_S and records its stop. At every step (about a second) it also looks after
runs that lost their process:
  - a run whose worker went silent for TL_WORKER_TIMEOUT_S, on any machine, is failed with the
    reason, resumable (`Store.fail_orphaned`): whichever worker notices first;
  - on this host, the runs of a worker that died here (its process is gone and it missed two
    heartbeats) go back to the queue to resume from their own last checkpoint
    (TL_RESUME_ON_RESTART, on by default; off: failed, resumable). So a worker started after a
    crash, a `docker restart` or a reboot continues what its predecessor left running;
  - a run whose training process died while its worker lived is failed ("process lost"): by its
    own worker at once, or for a run trained in the foreground by any worker of its host.
  A run of a live worker is never touched: a worker judges by pid only for workers of its own
  host, and only once their heartbeat is also late (two containers sharing a host name do not see
  each other's processes). A recovery pass holds a lock file, so two workers of one host never
  act on the same run at once.

Stopping (SIGTERM, SIGINT, `python -m tl_core worker --stop`): each training process is asked to
stop at its next batch (training/stopping.py); its run goes back to the queue and continues from its last
checkpoint on the next start, or at once on another live worker. One still running after
STOP_GRACE_S is killed (its run is put back all the same). The worker then records its stop.

The next queued run goes to a process started ahead of need, with its imports done (standby.py),
where there is one.

The worker imports no torch (nor anything that does): starting and supervising processes needs
the database and the settings only, and it counts and measures GPUs through the driver (NVML,
placement.py), not through CUDA; processes it looks at through psutil.

Its files (worker.pid, the standby's log) and how a dashboard finds the workers of its database on
this host: processes.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

from .. import settings
from ..logs import logger
from ..store import Run, Store, WorkerInfo
from ..store.run_folders import run_folder, worker_folder
from . import placement
from .jobs import Jobs
from .processes import (
    host_lock,
    is_training_process,
    is_worker_process,
    kill_group,
    pid_alive,
    pidfile,
    pidfile_worker,
    start_child,
)
from .serving import PROCESS_LOST, RESUMABLE, STOP_GRACE_S, Serving, masked_url
from .standby import Standby

log = logger(__name__)  # timed lines (logs.py): the service's output, worker.log

PEAKS_TTL_S = 60.0  # the measured needs of kinds of runs are read again after this (others' runs end too)


def max_concurrent() -> int:
    """Runs at once where they are not placed by memory: TL_MAX_CONCURRENT, else one per GPU (GPUs
    NVML cannot measure), one on a CPU machine."""
    return settings.current().max_concurrent or max(1, placement.gpu_count())


def _utcnow() -> dt.datetime:  # as the store records heartbeats
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class Child:
    run: Run  # as it was claimed
    proc: subprocess.Popen
    started: bool = False  # its process has done its imports and started the run
    gpu: str | None = None  # the GPU it was placed on (placement.py); None: it sees every GPU
    settled: bool = False  # it recorded an epoch since: its memory shows in what NVML measures


# --- the worker -----------------------------------------------------------------------------


class Worker(Serving):
    """A worker of one database on this host (the module's docstring): `serve` until a signal."""

    def __init__(self, db_url: str, concurrency: int | None = None, poll_seconds: float = 1.0):
        self.db_url = db_url
        self.store = Store(db_url)
        self.files = worker_folder(self.store.instance_id)
        self.concurrency = concurrency or max_concurrent()
        # No number of runs fixed (--max-concurrent, TL_MAX_CONCURRENT): packed onto these GPUs by memory.
        packed = not (concurrency or settings.current().max_concurrent)
        self.gpus = [g.id for g in placement.gpus()] if packed else []
        self.peaks: dict[tuple, float] | None = None  # placement.peaks, read at most every PEAKS_TTL_S
        self.peaks_at = 0.0
        self.poll_seconds = poll_seconds
        self.children: dict[int, Child] = {}
        self.host = socket.gethostname()
        self.jobs = Jobs(self.store, db_url, self.host, self.gpus)  # a page's jobs running in processes of ours
        self.id: int | None = None  # in the store's workers table, from start()
        self.beat_at = 0.0
        self.busy_at = time.monotonic()  # when a run of ours last trained (the standby's idle clock)
        self.standby = Standby(db_url, self.files)  # a training process, imported and waiting for a run id

    # 1. Runs whose process is gone.
    def recover(self) -> list[int]:
        """Runs of this host left `running` by a process that is gone: back in the queue when their
        worker died here (TL_RESUME_ON_RESTART), failed when their own process died. Returns them."""
        handled = []
        with host_lock(self.files):
            candidates = [r for r in self.store.list_runs(statuses=["running"]) if r.id not in self.children]
            if not candidates:
                return []
            workers = {w.id: w for w in self.store.workers()}
            for run in candidates:
                verdict = self._verdict(run, workers)
                if verdict is None:
                    continue
                now = self.store.get_run(run.id)  # as it is now: another worker may have acted since
                if (now.status, now.worker_id, now.pid) != ("running", run.worker_id, run.pid):
                    continue
                why, requeue = verdict
                self._lost(run, why, requeue)
                handled.append(run.id)
        return handled

    def _verdict(self, run: Run, workers: dict[int, WorkerInfo]) -> tuple[str, bool] | None:
        """Why `run` lost its process and whether it goes back to the queue; None: it has not."""
        if is_training_process(run.pid):
            return None  # still training, or ending (killed with its worker): judged next time
        if run.worker_id is not None and run.worker_id != self.id:
            w = workers.get(run.worker_id)
            if w is None or not self._died_here(w):
                return None  # alive, or elsewhere: fail_orphaned's business once it goes silent
            return f"its worker {w.id} (pid {w.pid}) on {w.host} died", settings.current().resume_on_restart
        if run.host not in (None, self.host) or run.worker_id == self.id:
            return None  # another host's, or ours (reap() judges our own)
        if run.worker_pid is not None:  # claimed by a worker that did not register (an earlier release)
            if is_worker_process(run.worker_pid) and run.worker_pid != os.getpid():
                return None if run.pid is None else ("its training process died", False)
            return f"its worker (pid {run.worker_pid}) died", settings.current().resume_on_restart
        if run.pid is None or pid_alive(run.pid):
            return None  # trained in the foreground: its process is alive (or not recorded yet)
        return "its training process died", False

    def _died_here(self, w: WorkerInfo) -> bool:
        """Whether worker `w` of this host is gone: its process is not a live worker (or is this very
        process, given a dead worker's pid after a restart) and its heartbeat is late too."""
        if w.host != self.host:
            return False
        gone = w.pid == os.getpid() or not is_worker_process(w.pid)
        late = (
            w.stopped_at is not None
            or not w.alive
            or (_utcnow() - w.heartbeat_at).total_seconds() > 2 * settings.current().heartbeat_s
        )
        return gone and late

    def _lost(self, run: Run, why: str, requeue: bool) -> None:
        if requeue:
            self.store.requeue(run.id)
            log.warning(f"run {run.id} lost its process ({why}); back in the queue to resume from its last checkpoint")
        else:
            self.store.finish_run(run.id, "failed", error=f"{PROCESS_LOST}: {why} {RESUMABLE}")
            log.warning(f"run {run.id} failed: {why}")

    # 2. Processes: a run's, handed to the standby or started afresh.
    def _start(self, run: Run, gpu: str | None = None) -> subprocess.Popen:
        """The training process of `run` (on `gpu` alone, if given), stopped by the kernel if this worker dies."""
        return start_child(["train-run", str(run.id), "--db", self.db_url], run_folder(run) / "train.log", gpu)

    def _keep_standby(self) -> None:
        if not self.stopping:
            self.standby.keep(not self.children, self.busy_at, self._runs_started)

    def _runs_started(self) -> bool:
        """Whether each of our runs' processes has done its imports and started its run (a standby
        started beside one still starting would compete with it for the CPU)."""
        for child in self.children.values():
            if not child.started:
                child.started = self.store.get_run(child.run.id).started_at is not None
            if not child.started:
                return False
        return True

    def launch(self, run: Run, gpu: str | None = None) -> None:
        try:
            proc = self.standby.take(run.id, gpu) or self._start(run, gpu)
        except OSError as e:  # no process could be made (memory, process limits): say so, never leave it claimed
            self.store.finish_run(
                run.id,
                "failed",
                error=f"its training process could not be started ({e}); free memory or processes, then resume it",
            )
            return
        self.store.update_run(run.id, pid=proc.pid, host=self.host)
        self.children[run.id] = Child(run, proc, gpu=gpu)
        self.busy_at = time.monotonic()

    def reap(self) -> None:
        """Forget our runs' processes that ended; a run one left `running` lost it."""
        for run_id, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[run_id]
            kill_group(child.proc.pid)
            self.peaks = None  # it may have measured its kind
            run = self.store.get_run(run_id)
            if child.gpu is not None and not child.settled and run.worker_id == self.id and run.status != "queued":
                self._record_gpu(run, child.gpu)
            if run.status != "running" or run.worker_id != self.id:
                continue  # it recorded its end, or went back to the queue (training/stopping.py), or is another's now
            if self.stopping:  # killed after STOP_GRACE_S: an interruption like the others
                self._lost(run, "stopped with its worker", settings.current().resume_on_restart)
            else:
                self.store.finish_run(run_id, "failed", error=f"{PROCESS_LOST} (exit code {code})")

    # 3. Placement on the GPUs (placement.py).
    def _placed(self) -> list[tuple[str, bool]]:
        """(GPU, settled) of each of our runs and jobs on a GPU: what placement.place packs beside."""
        return [(c.gpu, c.settled) for c in self.children.values() if c.gpu is not None] + self.jobs.placed()

    def _claim(self) -> tuple[Run, str | None] | None:
        """The next queued run, claimed, and the GPU it is placed on (None: not placed, its process
        sees every GPU); None when it must wait."""
        if not self.gpus:
            if len(self.children) >= self.concurrency:
                return None
            run = self.store.claim_next_queued(os.getpid(), self.id, "local")
            return None if run is None else (run, None)
        placed = self._placed()
        if not placement.open_gpus(self.gpus, placed, settings.current().runs_per_gpu):
            return None  # every GPU has a run settling, or is full: nothing to measure yet
        queued = self.store.list_runs(statuses=["queued"])
        if not queued:
            return None
        # Decided on the oldest queued run (the one claim_next_queued takes) before claiming it: a run
        # that must wait stays queued, where another worker may take it.
        head, measured, peaks = queued[-1], placement.gpus(), self._peaks()
        need = peaks.get(placement.kind(head.config))
        gpu = placement.place(measured, placed, need)
        if gpu is None or (run := self.store.claim_next_queued(os.getpid(), self.id, "local")) is None:
            return None
        if run.id != head.id:  # another worker took the head meanwhile: the run we got must fit too
            need = peaks.get(placement.kind(run.config))
            gpu = placement.place(measured, placed, need)
            if gpu is None:  # back in the queue, unclaimed
                self.store.update_run(
                    run.id, status="queued", started_at=None, worker_pid=None, worker_id=None, executor=None
                )
                return None
        free = next(g.free_mb for g in measured if g.id == gpu)
        log.info(
            f"run {run.id} placed on GPU {gpu} ({free:.0f} MiB free; its kind "
            f"{f'peaked at {need:.0f} MiB' if need is not None else 'never measured'})"
        )
        return run, gpu

    def _peaks(self) -> dict[tuple, float]:
        if self.peaks is None or time.monotonic() - self.peaks_at >= PEAKS_TTL_S:
            self.peaks, self.peaks_at = placement.peaks(self.store), time.monotonic()
        return self.peaks

    def _follow(self) -> None:
        """Mark our placed runs settled once they record an epoch (their memory is measurable then)."""
        for child in self.children.values():
            if child.gpu is None or child.settled:
                continue
            run = self.store.get_run(child.run.id)
            if run.epochs_done > child.run.epochs_done:
                child.settled = True
                self._record_gpu(run, child.gpu)

    def _record_gpu(self, run: Run, gpu: str) -> None:
        """The GPU a run was placed on (its CUDA_VISIBLE_DEVICES), beside what its process recorded of
        its environment (which it writes whole when it starts: so only once that is done, at an epoch
        or at its end)."""
        self.store.update_run(run.id, environment={**run.environment, "gpu": gpu})

    # 4. The loop.
    def start(self) -> None:
        """Register in the store and claim this host's worker.pid if no live worker holds it."""
        self.files.mkdir(parents=True, exist_ok=True)
        self.id = self.store.register_worker(self.host, os.getpid(), "local")
        self.beat_at = time.monotonic()
        if pidfile_worker(self.store) in (None, os.getpid()):
            pidfile(self.store).write_text(str(os.getpid()))

    def step(self) -> None:
        if self.id is None:
            self.start()
        assert self.id is not None  # start() registered this worker
        if time.monotonic() - self.beat_at >= settings.current().heartbeat_s:
            self.store.heartbeat(self.id)
            self.beat_at = time.monotonic()
        self.reap()
        self.jobs.reap()
        self.recover()
        if orphaned := self.store.fail_orphaned():
            log.warning(f"runs {orphaned} failed: their worker stopped heartbeating")
        if orphaned_jobs := self.store.fail_orphaned_jobs():
            log.warning(f"jobs {orphaned_jobs} failed: their worker stopped heartbeating")
        self._follow()
        while not self.stopping and (job := self.jobs.claim(self.id, self._placed, self._peaks)):
            self.jobs.launch(*job)  # jobs first: a person waits for each
        while not self.stopping and (claimed := self._claim()):
            self.launch(*claimed)
        if self.children:
            self.busy_at = time.monotonic()
        self._keep_standby()

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        self.start()
        runs = (
            f"runs and jobs placed on GPUs {', '.join(self.gpus)} by memory, at most "
            f"{settings.current().runs_per_gpu} per GPU"
            if self.gpus
            else f"up to {self.concurrency} runs at once"
        )
        log.info(f"worker {os.getpid()} (id {self.id}): {runs}, db {masked_url(self.db_url)}")
        self.loop()

    def stop(self) -> None:
        """Ask each run to stop at its next batch (it goes back to the queue), wait for them (a second
        signal: don't), then release the standby and record this worker's stop. Jobs are stopped at
        once and go back to the queue: the next worker runs them again from the start."""
        self.stopping = True
        self.standby.release()
        self.jobs.kill()
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while (
            any(c.proc.poll() is None for c in self.children.values())
            and time.monotonic() < deadline
            and self.signals < 2
        ):
            time.sleep(0.1)
        for child in self.children.values():
            if child.proc.poll() is None:
                log.warning(f"run {child.run.id} did not stop within {STOP_GRACE_S:g} s; killed")
                kill_group(child.proc.pid)
                child.proc.wait()
        try:
            self.reap()
            self.jobs.requeue(self.id)
            if self.id is not None:
                self.store.stop_worker(self.id)
        except Exception as e:  # the database is away: our runs are found by the next worker's recovery
            log.warning(f"could not record the stop ({type(e).__name__}: {e})")
        if pidfile_worker(self.store) in (None, os.getpid()):
            pidfile(self.store).unlink(missing_ok=True)
        log.info(f"worker {os.getpid()}: stopped")
