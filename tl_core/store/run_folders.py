"""Where runs and workers keep their files, under TL_RUNS_DIR (default ./runs).

<runs dir>/<run uid>/          one run: last.pt, best.pt, train.log. Named by the run's
                               globally unique id, never its number: two databases, or a
                               database made again, can share a runs folder without a new run
                               ever finding another run's checkpoint.
<runs dir>/workers/<db id>/    one database's worker: worker.pid, worker.log, standby.log
                               (by the database's instance id: a dashboard finds only the
                               worker of its own database).
<runs dir>/cache/              decoded images and frozen features, shared by content (data/scan_cache.py).
<runs dir>/jobs/<job id>.log   the output of a page's job (service/jobs.py), where it ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .. import settings


class RunLike(Protocol):
    id: int
    uid: str
    run_dir: str | None


def runs_dir() -> Path:
    return settings.current().runs_dir


def run_folder(run: RunLike) -> Path:
    """The run's folder: where it was recorded when it started, else <runs dir>/<uid>."""
    return Path(run.run_dir) if run.run_dir else runs_dir() / run.uid


def is_run_folder(folder: Path, run: RunLike) -> bool:
    """Whether `folder` is named after `run` (its uid; its number for runs made before uids)."""
    return folder.name in (run.uid, str(run.id))


def job_log(job_id: str) -> Path:
    """Where a page's job writes its output, on the machine it runs on."""
    return runs_dir() / "jobs" / f"{job_id}.log"


def worker_folder(instance_id: str) -> Path:
    """The files of the worker that trains the queue of the database `instance_id`."""
    return runs_dir() / "workers" / instance_id
