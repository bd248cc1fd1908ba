"""Work a front end starts and waits for: an LR range test, a probe or a check of the data, a ranking of
candidate backbones, a prediction with heat maps, an export and its parity check.

They take seconds to a minute, so they run in a process of their own (a dashboard page never
trains inside its script): `python -m tl_core lr-find|probe|check-data|rank-backbones <the run's settings>
--experiment E --job ID` or `python -m tl_core predict|export RUN ... --job ID`, which stores its result as an
artifact of experiment E tagged with the job id, and records its own end in the store (`recorded`).
The page asks `result()` until it is there, or `failure()` says why the job ended without one.

Who runs it. A job is queued in the store's `jobs` table, as a run is, and goes through the same
queue and GPU placement: a worker of this database (on any machine) claims it before its queued
runs and places it on a GPU with room (worker.py, placement.job_need), so it does not land on cuda:0
beside packed runs, nor on the CPU of a dashboard container without a GPU. Where no worker serves
the database, the dashboard starts this host's worker as it does for runs (`runs.start_worker`);
where none may be started (TL_NO_WORKER=1: tests, a dashboard run alone; or TL_EXECUTOR=ray, whose
executor trains runs only), the dashboard's own process starts the job itself, on the GPU with the
most free memory if it has any (`run_here`). A page that waits keeps seeing that someone runs its
job (`poll`): a queued job whose worker went away meanwhile is served the same way again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence

from .. import settings
from ..config import RunConfig
from ..errors import UserError
from ..executors import placement
from ..executors.jobs import log_tail
from ..executors.processes import pid_alive
from ..store import Job, Store, UnknownRun
from ..store.run_folders import job_log
from .measure import CHECK_NOT_FLAGS, DATA_CHECK, RANK_NOT_FLAGS, RANKING
from .runs import start_worker

KINDS = {
    "lr-find": "lr_find",
    "probe": "probe",
    "check-data": DATA_CHECK,
    "rank-backbones": RANKING,
    "predict": "prediction",
    "export": "export",
}  # command -> artifact kind
ON_RUNS = ("predict", "export")  # commands whose first argument is a run id (or, for predict, a bundle's path)
NOT_FLAGS = {
    "rank-backbones": RANK_NOT_FLAGS,
    "check-data": CHECK_NOT_FLAGS,
}  # run settings a command has no flag for (its own instead)


def flags(cfg: RunConfig, skip: Sequence[str] = ()) -> list[str]:
    """The command-line flags that recreate `cfg` (every setting that is not its default's None), but `skip`
    and its exclusions: a job measures the folder as it is (only `run` and `experiment` take --exclude)."""
    out: list[str] = []
    for key, value in cfg.model_dump().items():
        if value is not None and key not in skip and key != "exclude":
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def start(store: Store, command: str, cfg: RunConfig, extra: Sequence[str] = ()) -> Job:
    """Queue `python -m tl_core COMMAND` on `cfg`; its result lands in the store."""
    args = [*flags(cfg, NOT_FLAGS.get(command, ())), *extra]
    return start_command(store, command, cfg.experiment, args, cfg.model_dump())


def start_command(store: Store, command: str, experiment: str, args: Sequence[str], config: dict | None = None) -> Job:
    """Queue `python -m tl_core COMMAND ARGS --job ID` (a command that stores its result as an
    artifact of `experiment` tagged with the job id) and see that someone runs it. `config`: the run
    settings it works on (what sets its memory); for predict and export, the run's own, by default."""
    if command not in KINDS:
        raise ValueError(f"unknown job {command!r}")
    job_id = uuid.uuid4().hex
    job = store.create_job(
        job_id,
        command,
        experiment,
        [str(a) for a in args],
        _run_config(store, command, args) if config is None else config,
        str(job_log(job_id)),
    )
    _serve(store, job)
    return job


def _run_config(store: Store, command: str, args: Sequence[str]) -> dict:
    """The settings of the run a predict or export job reads ({} for a bundle, or another command)."""
    if command in ON_RUNS and args and str(args[0]).isdigit():
        with contextlib.suppress(UnknownRun):
            return store.get_run(int(args[0])).config
    return {}


def _served(store: Store) -> bool:
    """Whether a live worker of this database (on any machine) takes jobs: a local one (Ray's
    executor trains runs only)."""
    return any(w.executor == "local" for w in store.workers(alive=True))


def _serve(store: Store, job: Job) -> None:
    """See that someone runs the queued `job` (the module's docstring says who)."""
    if _served(store):
        return
    if settings.current().executor == "local" and start_worker(store) is not None:
        return  # it claims the job as soon as it is up (or already starting: ensure_worker starts one)
    run_here(store, job)


def run_here(store: Store, job: Job) -> bool:
    """Start the queued `job` from this process (no worker serves the database), in a detached
    process of its own, on the GPU with the most free memory if NVML measures any; False if it is no
    longer queued (a worker took it meanwhile)."""
    gpus = placement.gpus()
    gpu = max(gpus, key=lambda g: g.free_mb).id if gpus else None
    if not store.claim_job(job.id, None, socket.gethostname(), gpu):
        return False
    log = job_log(job.id)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = None if gpu is None else settings.child_environment(**settings.gpu_environment(gpu))
    try:
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tl_core", job.command, *job.args, "--job", job.id, "--db", store.url, "--json"],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
    except OSError as e:
        store.finish_job(job.id, "failed", error=f"its process could not be started ({e})")
        return True
    store.update_job(job.id, pid=proc.pid, log=str(log))
    return True


def poll(store: Store, job: Job) -> Job | None:
    """The job as it is now, after seeing to it: a queued job is served (its worker may have gone
    since it was queued), a running one whose worker or process is gone is failed. None if the store
    no longer has it."""
    now = store.get_job(job.id)
    if now is None:
        return None
    if now.status == "queued":
        _serve(store, now)
    elif now.status == "running":
        if now.worker_id is None:
            _fail_if_lost(store, now)
        else:
            store.fail_orphaned_jobs()
    return store.get_job(job.id)


def _fail_if_lost(store: Store, job: Job) -> None:
    """Fail a job this host's dashboard started whose process is gone without recording its end
    (killed, out of memory), with the end of its log. Only here, by the page that waits for it: a
    worker in another container with the same host name would not see the dashboard's processes."""
    if job.host == socket.gethostname() and job.pid is not None and not pid_alive(job.pid):
        why = log_tail(job.log) or "no output"
        store.finish_job(job.id, "failed", error=f"its process ended without a result: {why}")


def result(store: Store, job: Job) -> dict | None:
    """The job's stored result, once it is there."""
    for artifact in store.artifacts(job.experiment, KINDS[job.command]):
        if artifact.data.get("job") == job.id:
            return artifact.data
    return None


def failure(store: Store, job: Job) -> str | None:
    """Why a job ended without a result, or None while it is queued or running (asked every second
    by a page that waits for it: it polls the job, see `poll`)."""
    now = poll(store, job)
    if now is None:
        return "it is no longer in the database (was the database reset?)"
    if now.status in ("queued", "running"):
        return None
    if now.status == "completed":
        return None if result(store, job) is not None else "it ended without storing a result"
    return now.error or now.status


def cancel(store: Store, job: Job) -> Job | None:
    """Cancel a queued or running job: a queued one never starts; a running one's process is stopped,
    by its worker at its next step, or here if this host's dashboard started it."""
    was = store.get_job(job.id)
    now = store.cancel_job(job.id)
    if (
        was is not None
        and was.status == "running"
        and was.worker_id is None
        and was.host == socket.gethostname()
        and pid_alive(was.pid)
    ):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(was.pid, signal.SIGTERM)  # its own session (start_new_session): its loader workers too
    return now


def latest(store: Store, experiment: str, command: str, **match) -> dict | None:
    """The experiment's newest result of `command` whose fields equal `match` (e.g. the same data)."""
    for artifact in store.artifacts(experiment, KINDS[command]):
        if all(artifact.data.get(k) == v for k, v in match.items()):
            return artifact.data
    return None


# --- in the job's own process ----------------------------------------------------------------------


def recorded(store: Store, job_id: str, command: Callable[[], int]) -> int:
    """Run a job's command (`python -m tl_core COMMAND ... --job ID`, in its process) and record its end:
    completed on exit status 0, else failed with its error, and the GPU memory it took (PyTorch's
    reserved peak, for placing the next job like it). A job id the store does not have (given by
    hand) records nothing."""
    code, error = 1, None
    try:
        code = command()
        return code
    except SystemExit as e:  # a command that exits by itself
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except BaseException as e:
        error = str(e) if isinstance(e, (UserError, UnknownRun)) else f"{type(e).__name__}: {e}"
        raise
    finally:
        failed = error is not None or code != 0
        store.finish_job(
            job_id,
            "failed" if failed else "completed",
            peak_mb=_cuda_peak_mb(),
            error=(error or f"it exited with status {code}") if failed else None,
        )


def _cuda_peak_mb() -> float | None:
    """The most memory PyTorch's allocator reserved on any GPU of this process (what NVML sees of
    it, less the CUDA context: the placement margin's part); None where CUDA was never started."""
    torch = sys.modules.get("torch")  # imported by the command if it needed it; never imported for this
    if torch is None or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count())) / 2**20
