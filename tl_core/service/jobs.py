"""Work a front end starts and waits for: an LR range test, a probe of the data, a prediction
with heat maps, an export and its parity check.

They take seconds to a minute, so they run in a process of their own (a dashboard page never
trains inside its script): `python -m tl_core lr-find|probe <the run's settings> --experiment E
--job ID` or `python -m tl_core predict|export RUN ... --job ID`, which stores its result as an artifact of experiment E tagged with the job id. The
page asks `result()` until it is there, or `failure()` says why the process ended without one.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..runfiles import runs_dir
from ..store import Store

KINDS = {"lr-find": "lr_find", "probe": "probe", "predict": "prediction", "export": "export"}  # command -> artifact kind


@dataclass(frozen=True)
class Job:
    id: str
    command: str
    experiment: str
    pid: int
    log: str


def flags(cfg: RunConfig) -> list[str]:
    """The command-line flags that recreate `cfg` (every setting that is not its default's None)."""
    out: list[str] = []
    for key, value in cfg.model_dump().items():
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def start(store: Store, command: str, cfg: RunConfig, extra: list[str] | tuple = ()) -> Job:
    """Start `python -m tl_core COMMAND` on `cfg` in a detached process; its result lands in the store."""
    return start_command(store, command, cfg.experiment, [*flags(cfg), *extra])


def start_command(store: Store, command: str, experiment: str, args: list[str]) -> Job:
    """Start `python -m tl_core COMMAND ARGS` (a command that stores its result as an artifact of
    `experiment` tagged with the job id) in a detached process."""
    if command not in KINDS:
        raise ValueError(f"unknown job {command!r}")
    job_id = uuid.uuid4().hex
    log = runs_dir() / "jobs" / f"{job_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tl_core", command, *args, "--job", job_id,
                                 "--db", store.url, "--json"], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Job(job_id, command, experiment, proc.pid, str(log))


def result(store: Store, job: Job) -> dict | None:
    """The job's stored result, once it is there."""
    for artifact in store.artifacts(job.experiment, KINDS[job.command]):
        if artifact.data.get("job") == job.id:
            return artifact.data
    return None


def failure(job: Job) -> str | None:
    """Why a job's process ended without a result (the end of its log), or None while it runs."""
    from ..worker import pid_alive

    if pid_alive(job.pid):
        return None
    path = Path(job.log)
    lines = list(deque(path.open(errors="replace"), maxlen=6)) if path.exists() else []
    errors = [line.strip() for line in lines if line.startswith("error:")]
    return errors[-1].removeprefix("error: ") if errors else ("".join(lines).strip() or "the process ended")


def latest(store: Store, experiment: str, command: str, **match) -> dict | None:
    """The experiment's newest result of `command` whose fields equal `match` (e.g. the same data)."""
    for artifact in store.artifacts(experiment, KINDS[command]):
        if all(artifact.data.get(k) == v for k, v in match.items()):
            return artifact.data
    return None
