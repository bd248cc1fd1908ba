"""A worker's share of a page's jobs (an LR range test, a probe, a prediction, an export:
service/jobs.py, which queues them and reads their results).

They come through the store's `jobs` table and go first: a person is waiting for them, and they last
seconds to a minute. Each is placed like a run (by its own need, placement.job_need; settling until
it ends), so it lands on a GPU with room rather than on cuda:0 beside packed runs, and runs
`python -m tl_core COMMAND ARGS --job ID` in a process of its own that sees that GPU alone and
records its own end. Where runs are not placed (a CPU machine, a fixed number of runs) up to
MAX_JOBS_AT_ONCE run beside the runs, which they do not count against: a job never waits hours for
a run to end. A job whose process ends without recording its end is failed with the end of its
log; the process of a cancelled job is stopped; when the worker stops, its jobs go back to the queue
for the next worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..logs import logger
from ..store.run_folders import job_log
from ..store.store import Job, Store
from . import placement
from .processes import kill_group, start_child

log = logger(__name__)  # timed lines (logs.py): the service's output, worker.log

MAX_JOBS_AT_ONCE = 4  # jobs not placed on GPUs (a CPU machine, a fixed number of runs) running at once
JOB_PEAKS_TTL_S = 60.0  # the measured needs of kinds of jobs are read again after this (others' jobs end too)


@dataclass
class JobChild:
    job: Job  # as it was claimed
    proc: subprocess.Popen
    gpu: str | None = None  # the GPU it was placed on; it counts as settling until it ends


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


class Jobs:
    """The jobs one worker runs: claimed (`claim`), started (`launch`), their ends recorded (`reap`),
    put back in the queue when the worker stops (`kill`, then `requeue`)."""

    def __init__(self, store: Store, db_url: str, host: str, gpus: list[str]):
        self.store, self.db_url, self.host = store, db_url, host
        self.gpus = gpus  # the worker's GPUs when it places by memory; [] when it does not
        self.running: dict[str, JobChild] = {}  # by job id
        self.peaks: dict[tuple, float] | None = None  # placement.job_peaks, read at most every JOB_PEAKS_TTL_S
        self.peaks_at = 0.0

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.running

    def placed(self) -> list[tuple[str, bool]]:
        """(GPU, settled) of each job on a GPU: a job counts as settling until it ends."""
        return [(j.gpu, False) for j in self.running.values() if j.gpu is not None]

    def _peaks(self) -> dict[tuple, float]:
        if self.peaks is None or time.monotonic() - self.peaks_at >= JOB_PEAKS_TTL_S:
            self.peaks, self.peaks_at = placement.job_peaks(self.store), time.monotonic()
        return self.peaks

    def claim(
        self,
        worker_id: int | None,
        placed: Callable[[], list[tuple[str, bool]]],
        run_peaks: Callable[[], dict[tuple, float]],
    ) -> tuple[Job, str | None] | None:
        """The oldest queued job that may start now, claimed for worker `worker_id`, and the GPU it is
        placed on (None: not placed); None when none may. A job that must wait does not hold back a
        smaller one behind it. `placed`: what the worker's runs and jobs hold of its GPUs;
        `run_peaks`: placement.peaks (asked only when a job is queued)."""
        queued = self.store.jobs(statuses=["queued"])
        if not queued:
            return None
        if not self.gpus:
            if len(self.running) >= MAX_JOBS_AT_ONCE:
                return None
            job = next((j for j in queued if self.store.claim_job(j.id, worker_id, self.host, None)), None)
            return None if job is None else (job, None)
        held, measured, peaks = placed(), placement.gpus(), run_peaks()
        for job in queued:
            need = placement.job_need(job.command, job.config, peaks, self._peaks())
            gpu = placement.place(measured, held, need)
            if gpu is not None and self.store.claim_job(job.id, worker_id, self.host, gpu):
                free = next(g.free_mb for g in measured if g.id == gpu)
                log.info(
                    f"job {job.id} ({job.command}) placed on GPU {gpu} ({free:.0f} MiB free; it needs "
                    f"{f'{need:.0f} MiB' if need is not None else 'what its kind of run never measured'})"
                )
                return job, gpu
        return None

    def launch(self, job: Job, gpu: str | None = None) -> None:
        """`python -m tl_core COMMAND ARGS --job ID` in a process of its own (on `gpu` alone, if
        given), stopped by the kernel if this worker dies; it records its own end in the store."""
        path = job_log(job.id)
        try:
            proc = start_child([job.command, *job.args, "--job", job.id, "--db", self.db_url, "--json"], path, gpu)
        except OSError as e:
            self.store.finish_job(job.id, "failed", error=f"its process could not be started ({e})")
            return
        self.store.update_job(job.id, pid=proc.pid, log=str(path))
        self.running[job.id] = JobChild(job, proc, gpu)

    def reap(self) -> None:
        """Forget the processes that ended (a job that did not record its end failed, with the end of
        its log); stop those of jobs cancelled meanwhile."""
        cancelled = set()
        if self.running:
            cancelled = {j.id for j in self.store.jobs(ids=list(self.running), statuses=["cancelled"])}
        for job_id, child in list(self.running.items()):
            code = child.proc.poll()
            if code is None:
                if job_id in cancelled:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.proc.pid, signal.SIGTERM)
                continue
            del self.running[job_id]
            kill_group(child.proc.pid)
            self.peaks = None  # it may have measured its kind
            why = log_tail(job_log(job_id)) or "no output"
            if self.store.finish_job(
                job_id, "failed", error=f"its process ended (exit code {code}) without recording an end: {why}"
            ):
                log.warning(f"job {job_id} failed: its process ended with exit code {code}")

    def kill(self) -> None:
        """Stop every job's process at once (the worker stops): `requeue` then puts them back."""
        for child in self.running.values():
            kill_group(child.proc.pid)
            child.proc.wait()

    def requeue(self, worker_id: int | None) -> None:
        """Put the jobs of worker `worker_id` back in the queue: the next worker runs them from the start."""
        for job_id in list(self.running):
            if self.store.requeue_job(job_id, worker_id):
                log.info(f"job {job_id} stopped with its worker; back in the queue")
            del self.running[job_id]
