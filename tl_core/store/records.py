"""The plain records the store hands out: a run, a worker, an experiment's artifact, a page's job,
one stored prediction, an image of a dataset's exclusion list; and the statuses a run or a job goes through. (A class's results,
ClassMetric, are summary.py's: a run's summary holds them too.)

Dataclasses, never ORM rows (as mlflow's `entities`): a reader keeps, pickles and compares them
with no session open. Times are naive UTC, as the tables store them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .. import settings
from .summary import RunSummary

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")


def utcnow() -> dt.datetime:
    """Now, as the store keeps times: UTC without a time zone."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class UnknownRun(LookupError):
    """No run (or job) with that id in the store."""


@dataclass
class Run:
    id: int
    experiment: str
    name: str
    status: str
    config: dict
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    pid: int | None
    host: str | None
    worker_pid: int | None
    error: str | None
    cancel_requested: bool
    epochs_done: int
    best_val_acc: float | None
    best_epoch: int | None
    summary: RunSummary = field(default_factory=RunSummary)  # what training found and did (summary.py)
    environment: dict = field(default_factory=dict)
    run_dir: str | None = None
    uid: str = ""  # globally unique: names the run's folder
    resume: bool = False  # the next start continues from the run's last checkpoint
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    worker_id: int | None = None  # the worker that claimed it
    executor: str | None = None  # "local", "ray", or "here" (trained in the foreground)
    launched_by: str | None = None  # the signed-in person who launched it

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs", 0))

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.ended_at or utcnow()) - self.started_at).total_seconds()

    @property
    def best_epoch_number(self) -> int | None:
        """The best epoch as people count them, from 1 (best_epoch is the loop's 0-based index)."""
        return None if self.best_epoch is None else self.best_epoch + 1

    @property
    def test_acc(self) -> float | None:
        """Accuracy on the held-out test split of the epoch chosen on val (summary.test, written once
        after training); None for a run without a test split, or not yet scored."""
        return self.summary.test.acc if self.summary.test else None

    def to_dict(self) -> dict[str, Any]:
        """The run as a JSON consumer reads it: epochs counted from 1, times in ISO format, the summary
        as stored, test_acc at the top level (its test block is in the summary)."""
        d = dict(self.__dict__)
        for k in ("created_at", "started_at", "ended_at"):
            d[k] = d[k].isoformat() if d[k] else None
        d["summary"] = self.summary.to_dict()
        d["best_epoch"] = self.best_epoch_number
        d["duration_s"] = self.duration_s
        d["test_acc"] = self.test_acc
        return d


@dataclass(frozen=True)
class Prediction:
    """One validation image at the run's best epoch (see tables.SqlPrediction)."""

    position: int
    path: str
    label: int
    pred: int
    prob: float
    true_prob: float
    loss: float

    @property
    def correct(self) -> bool:
        return self.pred == self.label


@dataclass
class WorkerInfo:
    id: int
    host: str
    pid: int
    executor: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    stopped_at: dt.datetime | None

    @property
    def alive(self) -> bool:
        """Stopped neither by itself nor for lack of heartbeats (settings.worker_timeout_s)."""
        return (
            self.stopped_at is None
            and (utcnow() - self.heartbeat_at).total_seconds() <= settings.current().worker_timeout_s
        )


@dataclass
class Artifact:
    id: int
    experiment: str
    kind: str
    created_at: dt.datetime
    data: dict


@dataclass(frozen=True)
class Job:
    """A page's job (see tables.SqlJob) as it was read."""

    id: str
    experiment: str
    command: str
    args: list[str]
    config: dict
    status: str
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    worker_id: int | None = None
    host: str | None = None
    pid: int | None = None
    gpu: str | None = None
    log: str | None = None
    error: str | None = None
    peak_mb: float | None = None


@dataclass(frozen=True)
class ExcludedImage:
    """An entry of a dataset's exclusion list (see tables.SqlExclusion): the image, by its path
    relative to the dataset folder, left out (`exclude`) or read as class `to` (`relabel`)."""

    dataset: str
    path: str
    action: str
    to: str | None
    created_at: dt.datetime
    added_by: str | None = None
    note: str | None = None

    def entry(self) -> dict[str, Any]:
        """The entry as a run's config records it (config.RunConfig.exclude)."""
        return {"path": self.path, "action": self.action, "to": self.to}
