"""The worker: takes queued runs from the database and trains each in a process of its own.

It starts with the service (`python -m tl_core serve`: supervisor.py, what `make start` and the
container run), not with a browser, and is detached from it: closing the tab or restarting
Streamlit stops nothing. With TL_MAX_CONCURRENT (or --max-concurrent), that many runs train at
once. Without, on a machine whose GPUs NVML measures, as many as their memory holds: each run goes
to the GPU placement.py chooses for it (it stays queued while none has room), and its process sees
that GPU alone; on a CPU machine, one run at a time. Each run's process is started
without a shell, in a process group of its own (a Ctrl-C in the worker's terminal reaches the
worker, which tells its runs once), and records its own pid in the run; if the worker dies, the
kernel stops its runs too (PR_SET_PDEATHSIG).

A page's jobs (an LR range test, a probe, a prediction, an export: service/jobs.py) come through the
store's `jobs` table and go first: a person is waiting for them, and they last seconds to a minute.
Each is placed like a run (by its own need, placement.job_need; settling until it ends), so it lands
on a GPU with room rather than on cuda:0 beside packed runs, and runs `python -m tl_core COMMAND
ARGS --job ID` in a process of its own that sees that GPU alone and records its own end. Where runs
are not placed (a CPU machine, a fixed number of runs) up to MAX_JOBS_AT_ONCE run beside the runs,
which they do not count against: a job never waits hours for a run to end. A job whose process
ends without recording its end is failed with the end of its log; the process of a cancelled job is
stopped; when the worker stops, its jobs go back to the queue for the next worker.

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
stop at its next batch (train.py); its run goes back to the queue and continues from its last
checkpoint on the next start, or at once on another live worker. One still running after
STOP_GRACE_S is killed (its run is put back all the same). The worker then records its stop.

Starting a Python process that imports torch, torchvision and timm takes seconds, so the worker
keeps one such process ready ahead of need (a standby: `train-run --standby`, which has done its
imports and waits for a run id on stdin) and hands the next queued run to it. It is started while
no run of this worker is still starting up (they would compete for the CPU) and replaced once
used. An unused standby is released after TL_STANDBY_IDLE_S without a run (its memory back) and
made again once runs come. TL_STANDBY=0 turns it off: every run then starts a fresh process.

The worker imports no torch (nor anything that does): starting and supervising processes needs
the database and the settings only, and it counts and measures GPUs through the driver (NVML,
placement.py), not through CUDA; processes it looks at through psutil.

Files. A database's worker files (the log of a worker the dashboard started, the standby's log,
worker.pid) sit in a folder named by its instance id (runfiles.py), so several databases can
share a runs folder and a dashboard only ever finds the workers of its own database. worker.pid
names *the* worker of this database on this host: the one the service started (the supervisor
writes it), else the one a dashboard started, else the first one started by hand. A dashboard
that finds it alive (or any other live worker of its database on this host, from the store)
starts none. Further workers of the same database on the same host are found through the store
(`local_workers`); `worker --stop` stops them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy.engine import make_url

from . import placement
from .. import settings
from ..logs import logger
from ..store.run_folders import job_log, run_folder, worker_folder
from ..store import Job, Run, Store, WorkerInfo

log = logger(__name__)  # timed lines (logs.py): the service's output, worker.log

PROCESS_LOST = "process lost: its training process stopped without recording an end"
RESUMABLE = "(resumable from its last checkpoint)"
STOP_GRACE_S = 30.0  # a training process asked to stop has this long to reach its next batch
PEAKS_TTL_S = 60.0  # the measured needs of kinds of runs are read again after this (others' runs end too)
MAX_JOBS_AT_ONCE = 4  # jobs not placed on GPUs (a CPU machine, a fixed number of runs) running at once


def max_concurrent() -> int:
    """Runs at once where they are not placed by memory: TL_MAX_CONCURRENT, else one per GPU (GPUs
    NVML cannot measure), one on a CPU machine."""
    return settings.current().max_concurrent or max(1, placement.gpu_count())


# --- processes ------------------------------------------------------------------------------


def masked_url(url: str) -> str:
    """A database URL with its password hidden, for a log."""
    return make_url(url).render_as_string(hide_password=True)


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists and has not exited (a zombie, not yet reaped, is not alive)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's: it exists
        return True


def _args(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def is_worker_process(pid: int | None) -> bool:
    """Whether `pid` is a live `python -m tl_core worker` (not a stranger given a dead worker's pid,
    as after a reboot or a container restart)."""
    if not pid_alive(pid):
        return False
    args = _args(pid)
    return "tl_core" in args and "worker" in args and "--stop" not in args


def _is_training_process(pid: int | None) -> bool:
    return pid_alive(pid) and "train-run" in _args(pid)


def _own_group_dying_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgid(0, 0)  # a Ctrl-C in the worker's terminal reaches the worker only; it tells its runs once
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: stop this run if the worker dies


def _utcnow() -> dt.datetime:  # as the store records heartbeats
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _kill_group(pid: int) -> None:
    """SIGKILL what is left of a training process's group (its DataLoader workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def _host_lock(folder: Path):
    """Held by one worker of this database on this host at a time (recovery passes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "recover.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Child:
    run: Run  # as it was claimed
    proc: subprocess.Popen
    started: bool = False  # its process has done its imports and started the run
    gpu: str | None = None  # the GPU it was placed on (placement.py); None: it sees every GPU
    settled: bool = False  # it recorded an epoch since: its memory shows in what NVML measures


@dataclass
class JobChild:
    job: Job  # as it was claimed
    proc: subprocess.Popen
    gpu: str | None = None  # as Child.gpu; a job counts as settling until it ends


def log_tail(path: str | Path | None, lines: int = 6) -> str:
    """Why a job's process ended, from its log: its last `error:` line (the CLI's one-line error),
    else its last lines; "" without a log."""
    try:
        with open(path, errors="replace") as f:  # type: ignore[arg-type]
            last = list(deque(f, maxlen=lines))
    except (OSError, TypeError):
        return ""
    errors = [line.strip() for line in last if line.startswith("error:")]
    return errors[-1].removeprefix("error: ") if errors else "".join(last).strip()


# --- the worker -----------------------------------------------------------------------------


class Serving:
    """What the worker and the Ray executor (ray_executor.py) share: a signal asks them to stop (a
    second one, to stop at once), and their loop steps until then, riding out a failed step (the
    database away for a moment: the runs train on), then stops."""

    name = "worker"
    stopping = False
    signals = 0  # SIGTERM/SIGINT received: one stops gracefully, two at once
    poll_seconds = 1.0

    def step(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _signal(self, signum, _frame) -> None:
        self.signals += 1
        self.stopping = True

    def loop(self) -> None:
        try:
            while not self.stopping:
                try:
                    self.step()
                except Exception as e:  # the database away for a moment: the runs train on; try again
                    log.warning(f"{self.name}: {type(e).__name__}: {e}")
                time.sleep(self.poll_seconds)
        finally:
            self.stop()


class Worker(Serving):
    def __init__(self, db_url: str, concurrency: int | None = None, poll_seconds: float = 1.0):
        self.db_url = db_url
        self.store = Store(db_url)
        self.files = worker_folder(self.store.instance_id)
        self.concurrency = concurrency or max_concurrent()
        # No number of runs fixed (--max-concurrent, TL_MAX_CONCURRENT): packed onto these GPUs by memory.
        packed = not (concurrency or settings.current().max_concurrent)
        self.gpus = [g.id for g in placement.gpus()] if packed else []
        self.peaks: dict[tuple, float] | None = None  # placement.peaks, read at most every PEAKS_TTL_S
        self.job_peaks: dict[tuple, float] | None = None  # placement.job_peaks, likewise
        self.peaks_at = 0.0
        self.poll_seconds = poll_seconds
        self.children: dict[int, Child] = {}
        self.jobs: dict[str, JobChild] = {}  # a page's jobs running in processes of ours
        self.host = socket.gethostname()
        self.id: int | None = None  # in the store's workers table, from start()
        self.beat_at = 0.0
        self.busy_at = time.monotonic()  # when a run of ours last trained (the standby's idle clock)
        self.standby: subprocess.Popen | None = None  # a training process, imported and waiting for a run id
        self.standby_at = 0.0  # when it was started
        self.standby_retry_at = 0.0  # after a standby that died unused: not before then

    # 1. Runs whose process is gone.
    def recover(self) -> list[int]:
        """Runs of this host left `running` by a process that is gone: back in the queue when their
        worker died here (TL_RESUME_ON_RESTART), failed when their own process died. Returns them."""
        handled = []
        with _host_lock(self.files):
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
        if _is_training_process(run.pid):
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
        late = w.stopped_at is not None or not w.alive or \
            (_utcnow() - w.heartbeat_at).total_seconds() > 2 * settings.current().heartbeat_s
        return gone and late

    def _lost(self, run: Run, why: str, requeue: bool) -> None:
        if requeue:
            self.store.requeue(run.id)
            log.warning(f"run {run.id} lost its process ({why}); back in the queue to resume from its last checkpoint")
        else:
            self.store.finish_run(run.id, "failed", error=f"{PROCESS_LOST}: {why} {RESUMABLE}")
            log.warning(f"run {run.id} failed: {why}")

    # 2. Processes: a run's, or the standby.
    def _start(self, run: Run | None, gpu: str | None = None) -> subprocess.Popen:
        """The training process of `run` (on `gpu` alone, if given), or (None) a standby that waits
        for a run id on stdin; either is stopped by the kernel if this worker dies."""
        if run is None:
            args, log_path, stdin = ["--standby"], self.files / "standby.log", subprocess.PIPE
        else:
            args, log_path, stdin = [str(run.id)], run_folder(run) / "train.log", subprocess.DEVNULL
        env = None if gpu is None else settings.child_environment(**settings.gpu_environment(gpu))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "tl_core", "train-run", *args, "--db", self.db_url],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=stdin, env=env,
                                    preexec_fn=_own_group_dying_with_parent, cwd=os.getcwd())

    def _hand_to_standby(self, run_id: int, gpu: str | None) -> subprocess.Popen | None:
        """Give run_id to the standby process ("<run id> <gpu>" when placed: it has not initialised
        CUDA, so it can still be given that GPU alone); None if there is none alive to take it."""
        proc, self.standby = self.standby, None
        if proc is None:
            return None
        try:
            if proc.poll() is not None:
                raise OSError(f"exited with {proc.returncode}")
            proc.stdin.write((f"{run_id}\n" if gpu is None else f"{run_id} {gpu}\n").encode())
            proc.stdin.close()
            return proc
        except OSError as e:
            log.warning(f"the standby process is gone ({e}); starting run {run_id} in a new process")
            self.standby_retry_at = time.monotonic() + 30
            proc.kill()
            return None

    def _keep_standby(self) -> None:
        """Start a standby process if there is none and no run of ours is still starting; release it
        after TL_STANDBY_IDLE_S without a run."""
        config = settings.current()
        if self.stopping or not config.standby:
            return
        now = time.monotonic()
        if self.standby is not None:
            if self.standby.poll() is None:
                if not self.children and now - max(self.busy_at, self.standby_at) >= config.standby_idle_s:
                    log.info(f"standby {self.standby.pid} released after {config.standby_idle_s:g} s without a run; "
                             f"another is made when runs come")
                    self._release_standby()
                return
            log.warning(f"the standby process exited unused ({self.standby.returncode}); see "
                        f"{self.files / 'standby.log'}")
            self.standby, self.standby_retry_at = None, time.monotonic() + 30
            return
        if (not self.children and now - self.busy_at >= config.standby_idle_s) or now < self.standby_retry_at:
            return  # idle: none until runs come
        for child in self.children.values():
            if not child.started:
                child.started = self.store.get_run(child.run.id).started_at is not None
            if not child.started:
                return
        self.standby, self.standby_at = self._start(None), now

    def _release_standby(self) -> None:
        proc, self.standby = self.standby, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # no run for it: it exits by itself; a signal makes sure
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _kill_group(proc.pid)

    def launch(self, run: Run, gpu: str | None = None) -> None:
        try:
            proc = self._hand_to_standby(run.id, gpu) or self._start(run, gpu)
        except OSError as e:  # no process could be made (memory, process limits): say so, never leave it claimed
            self.store.finish_run(run.id, "failed", error=f"its training process could not be started ({e}); "
                                                          f"free memory or processes, then resume it")
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
            _kill_group(child.proc.pid)
            self.peaks = None  # it may have measured its kind
            run = self.store.get_run(run_id)
            if child.gpu is not None and not child.settled and run.worker_id == self.id and run.status != "queued":
                self._record_gpu(run, child.gpu)
            if run.status != "running" or run.worker_id != self.id:
                continue  # it recorded its end, or went back to the queue (train.py), or is another's now
            if self.stopping:  # killed after STOP_GRACE_S: an interruption like the others
                self._lost(run, "stopped with its worker", settings.current().resume_on_restart)
            else:
                self.store.finish_run(run_id, "failed", error=f"{PROCESS_LOST} (exit code {code})")

    # 3. Placement on the GPUs (placement.py).
    def _placed(self) -> list[tuple[str, bool]]:
        """(GPU, settled) of each of our runs and jobs on a GPU: what placement.place packs beside."""
        return [(c.gpu, c.settled) for c in self.children.values() if c.gpu is not None] + \
            [(j.gpu, False) for j in self.jobs.values() if j.gpu is not None]

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
                self.store.update_run(run.id, status="queued", started_at=None, worker_pid=None, worker_id=None,
                                      executor=None)
                return None
        free = next(g.free_mb for g in measured if g.id == gpu)
        log.info(f"run {run.id} placed on GPU {gpu} ({free:.0f} MiB free; its kind "
                 f"{f'peaked at {need:.0f} MiB' if need is not None else 'never measured'})")
        return run, gpu

    def _peaks(self) -> dict[tuple, float]:
        if self.peaks is None or self.job_peaks is None or time.monotonic() - self.peaks_at >= PEAKS_TTL_S:
            self.peaks, self.job_peaks = placement.peaks(self.store), placement.job_peaks(self.store)
            self.peaks_at = time.monotonic()
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

    # 4. A page's jobs (service/jobs.py): first, placed as runs are.
    def _claim_job(self) -> tuple[Job, str | None] | None:
        """The oldest queued job that may start now, claimed, and the GPU it is placed on (None: not
        placed); None when none may. A job that must wait does not hold back a smaller one behind it."""
        queued = self.store.jobs(statuses=["queued"])
        if not queued:
            return None
        if not self.gpus:
            if len(self.jobs) >= MAX_JOBS_AT_ONCE:
                return None
            job = next((j for j in queued if self.store.claim_job(j.id, self.id, self.host, None)), None)
            return None if job is None else (job, None)
        placed, measured, run_peaks = self._placed(), placement.gpus(), self._peaks()
        for job in queued:
            need = placement.job_need(job.command, job.config, run_peaks, self.job_peaks or {})
            gpu = placement.place(measured, placed, need)
            if gpu is not None and self.store.claim_job(job.id, self.id, self.host, gpu):
                free = next(g.free_mb for g in measured if g.id == gpu)
                log.info(f"job {job.id} ({job.command}) placed on GPU {gpu} ({free:.0f} MiB free; it needs "
                         f"{f'{need:.0f} MiB' if need is not None else 'what its kind of run never measured'})")
                return job, gpu
        return None

    def launch_job(self, job: Job, gpu: str | None = None) -> None:
        """`python -m tl_core COMMAND ARGS --job ID` in a process of its own (on `gpu` alone, if
        given), stopped by the kernel if this worker dies; it records its own end in the store."""
        log = job_log(job.id)
        env = None if gpu is None else settings.child_environment(**settings.gpu_environment(gpu))
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:
                proc = subprocess.Popen([sys.executable, "-m", "tl_core", job.command, *job.args, "--job", job.id,
                                         "--db", self.db_url, "--json"], stdout=f, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, preexec_fn=_own_group_dying_with_parent,
                                        cwd=os.getcwd())
        except OSError as e:
            self.store.finish_job(job.id, "failed", error=f"its process could not be started ({e})")
            return
        self.store.update_job(job.id, pid=proc.pid, log=str(log))
        self.jobs[job.id] = JobChild(job, proc, gpu)

    def reap_jobs(self) -> None:
        """Forget our jobs' processes that ended (one that did not record its end failed, with the end
        of its log); stop those of jobs cancelled meanwhile."""
        cancelled = set()
        if self.jobs:
            cancelled = {j.id for j in self.store.jobs(ids=list(self.jobs), statuses=["cancelled"])}
        for job_id, child in list(self.jobs.items()):
            code = child.proc.poll()
            if code is None:
                if job_id in cancelled:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.proc.pid, signal.SIGTERM)
                continue
            del self.jobs[job_id]
            _kill_group(child.proc.pid)
            self.job_peaks = None  # it may have measured its kind
            why = log_tail(job_log(job_id)) or "no output"
            if self.store.finish_job(job_id, "failed", error=f"its process ended (exit code {code}) without "
                                                             f"recording an end: {why}"):
                log.warning(f"job {job_id} failed: its process ended with exit code {code}")

    # 5. The loop.
    def start(self) -> None:
        """Register in the store and claim this host's worker.pid if no live worker holds it."""
        self.files.mkdir(parents=True, exist_ok=True)
        self.id = self.store.register_worker(self.host, os.getpid(), "local")
        self.beat_at = time.monotonic()
        if _pidfile_worker(self.store) in (None, os.getpid()):
            pidfile(self.store).write_text(str(os.getpid()))

    def step(self) -> None:
        if self.id is None:
            self.start()
        if time.monotonic() - self.beat_at >= settings.current().heartbeat_s:
            self.store.heartbeat(self.id)
            self.beat_at = time.monotonic()
        self.reap()
        self.reap_jobs()
        self.recover()
        if orphaned := self.store.fail_orphaned():
            log.warning(f"runs {orphaned} failed: their worker stopped heartbeating")
        if orphaned_jobs := self.store.fail_orphaned_jobs():
            log.warning(f"jobs {orphaned_jobs} failed: their worker stopped heartbeating")
        self._follow()
        while not self.stopping and (job := self._claim_job()):  # jobs first: a person waits for each
            self.launch_job(*job)
        while not self.stopping and (claimed := self._claim()):
            self.launch(*claimed)
        if self.children:
            self.busy_at = time.monotonic()
        self._keep_standby()

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        self.start()
        runs = (f"runs and jobs placed on GPUs {', '.join(self.gpus)} by memory, at most "
                f"{settings.current().runs_per_gpu} per GPU" if self.gpus else f"up to {self.concurrency} runs at once")
        log.info(f"worker {os.getpid()} (id {self.id}): {runs}, db {masked_url(self.db_url)}")
        self.loop()

    def stop(self) -> None:
        """Ask each run to stop at its next batch (it goes back to the queue), wait for them (a second
        signal: don't), then release the standby and record this worker's stop. Jobs are stopped at
        once and go back to the queue: the next worker runs them again from the start."""
        self.stopping = True
        self._release_standby()
        for job in self.jobs.values():
            _kill_group(job.proc.pid)
            job.proc.wait()
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(c.proc.poll() is None for c in self.children.values()) and time.monotonic() < deadline \
                and self.signals < 2:
            time.sleep(0.1)
        for child in self.children.values():
            if child.proc.poll() is None:
                log.warning(f"run {child.run.id} did not stop within {STOP_GRACE_S:g} s; killed")
                _kill_group(child.proc.pid)
                child.proc.wait()
        try:
            self.reap()
            for job_id in list(self.jobs):
                if self.store.requeue_job(job_id, self.id):
                    log.info(f"job {job_id} stopped with its worker; back in the queue")
                del self.jobs[job_id]
            if self.id is not None:
                self.store.stop_worker(self.id)
        except Exception as e:  # the database is away: our runs are found by the next worker's recovery
            log.warning(f"could not record the stop ({type(e).__name__}: {e})")
        if _pidfile_worker(self.store) in (None, os.getpid()):
            pidfile(self.store).unlink(missing_ok=True)
        log.info(f"worker {os.getpid()}: stopped")


# --- this host's workers of a database: found, started by a dashboard, stopped ------------


def pidfile(store: Store) -> Path:
    """Where the pid of this host's worker of `store`'s database is kept (see the module's docstring)."""
    return worker_folder(store.instance_id) / "worker.pid"


def _pidfile_worker(store: Store) -> int | None:
    try:
        pid = int(pidfile(store).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_worker_process(pid) else None


def local_workers(store: Store) -> list[int]:
    """Pids of the live workers of `store`'s database on this host: worker.pid's first, then the
    others registered in the store (heartbeating, and still a worker process)."""
    found = [pid] if (pid := _pidfile_worker(store)) else []
    host = socket.gethostname()
    for w in store.workers(alive=True):
        if w.host == host and w.pid not in found and w.pid != os.getpid() and is_worker_process(w.pid):
            found.append(w.pid)
    return found


def running_worker(store: Store) -> int | None:
    """The pid of a live worker of `store`'s database on this host (worker.pid's first), or None."""
    return next(iter(local_workers(store)), None)


def ensure_worker(store: Store) -> int:
    """The pid of this host's worker of `store`'s database, starting a detached one only if none
    is alive (a dashboard started by hand, without the service)."""
    pid = running_worker(store)
    if pid:
        return pid
    folder = worker_folder(store.instance_id)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tl_core", "worker", "--db", store.url], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile(store).write_text(str(proc.pid))
    return proc.pid


def stop_workers(store: Store, timeout: float = STOP_GRACE_S + 15) -> list[int]:
    """Stop every worker of `store`'s database on this host (their runs stop at their next batch and
    go back to the queue; their standbys go); the pids stopped. One still alive after `timeout` is
    killed, and the kernel stops its processes with it."""
    pids = local_workers(store)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) worker must run to stop
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids
