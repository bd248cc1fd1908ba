"""The experiment store: experiments, runs, per-epoch metrics and per-class results.

Shaped after mlflow's SQLAlchemy tracking store: a run holds its config as JSON, metrics are
narrow rows (run, epoch, key, value) so a new metric needs no migration, the run status sits
under a check constraint, and every public method returns plain dataclasses, never ORM rows.
SQLite (the default) gets WAL, a busy timeout and foreign keys; the same code runs on
PostgreSQL through `DATABASE_URL`. The tables below are the models; the schema itself is made and
changed by Alembic revisions (tl_core/migrations), which `Store(url)` applies when it opens a
database: a new one gets every table, one made by an earlier release is upgraded in place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import math
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from . import migrations
from .. import settings

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
_BUSY_TIMEOUT_S = 30  # how long SQLite waits out another connection's write lock before "database is locked"


def default_db_url() -> str:
    """$DATABASE_URL, else SQLite experiments.db in the working folder."""
    return settings.current().database_url


def _make_folder(url: str) -> None:
    """The folder of a SQLite database file, made if missing (as the runs folder is): SQLite makes
    the file, not its folder. One that cannot be made is left to SQLite's own error."""
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        with contextlib.suppress(OSError):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# --- tables -----------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class SqlExperiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


class SqlStoreInfo(Base):
    """Facts about the database itself: `instance_id`, made once when the database is created."""

    __tablename__ = "store_info"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SqlRun(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')",
            name="run_status",
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Unique across every database and reset: the name of the run's folder of checkpoints and log.
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=lambda: uuid.uuid4().hex)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    config: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    best_val_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    environment: Mapped[dict] = mapped_column(JSON, default=dict)
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set by an explicit resume: the next start continues from the run's own last checkpoint.
    resume: Mapped[bool] = mapped_column(default=False)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)  # a person's words on the run
    tags: Mapped[list | None] = mapped_column(JSON, nullable=True)  # labels to filter runs by
    # Who ran it: the worker (workers.id) that claimed it, how ("local", "ray", "here" for a run
    # trained in the foreground) and who launched it (a signed-in person's e-mail or name).
    worker_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    executor: Mapped[str | None] = mapped_column(String(20), nullable=True)
    launched_by: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)


class SqlWorker(Base):
    """A worker (or Ray executor) serving this database: it heartbeats while it lives, so another
    worker can tell its runs were orphaned when it stops heartbeating."""

    __tablename__ = "workers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    executor: Mapped[str] = mapped_column(String(20), default="local")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class SqlArtifact(Base):
    """Something measured for an experiment rather than a run: an LR finder's curve, a probe."""

    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    data: Mapped[dict] = mapped_column(JSON)


class SqlJob(Base):
    """Work a page started and waits for (service/jobs.py): an LR range test, a probe, a prediction,
    an export. Queued like a run, claimed by a worker that places it on a GPU (or started by the
    dashboard itself where no worker serves the database); it records its own end, and its result
    lands as an artifact of its experiment tagged with its id."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'completed', 'failed', 'cancelled')", name="job_status"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # what the artifact is tagged with
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    command: Mapped[str] = mapped_column(String(20))  # lr-find, probe, predict, export (jobs.KINDS)
    args: Mapped[list] = mapped_column(JSON)  # `python -m tl_core COMMAND ARGS --job ID`
    config: Mapped[dict] = mapped_column(JSON)  # the run settings it works on: what sets its memory
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Who runs it: a worker (workers.id), or None for the dashboard's own process; where and on what.
    worker_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpu: Mapped[str | None] = mapped_column(String(100), nullable=True)  # its CUDA_VISIBLE_DEVICES; None: not placed
    log: Mapped[str | None] = mapped_column(Text, nullable=True)  # its output, on its host
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    peak_mb: Mapped[float | None] = mapped_column(Float, nullable=True)  # PyTorch's reserved memory at its peak


class SqlEpochMetric(Base):
    __tablename__ = "epoch_metrics"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class SqlRunCurves(Base):
    """Every epoch's metrics of one run in one row: what the Compare page loads.

    The narrow epoch_metrics table stays the record; this copy is written in the same
    transaction as a float64 (epochs x keys) matrix, so that loading 500 runs reads 500 rows
    instead of 700,000. A metric an epoch lacks (or a NaN) is NaN in the matrix.
    """

    __tablename__ = "run_curves"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    keys: Mapped[list] = mapped_column(JSON)
    epochs: Mapped[list] = mapped_column(JSON)
    matrix: Mapped[bytes] = mapped_column(LargeBinary)


class SqlClassMetric(Base):
    __tablename__ = "class_metrics"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_name: Mapped[str] = mapped_column(String(300))
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    f1: Mapped[float] = mapped_column(Float)
    support: Mapped[int] = mapped_column(Integer)
    # This class's row of the confusion matrix: counts of predictions per class.
    confusion: Mapped[list] = mapped_column(JSON)


class SqlPrediction(Base):
    """One validation image as the run's best checkpoint saw it: written by the validation pass of
    the best epoch itself (so they reproduce its accuracy exactly), replaced at each new best."""

    __tablename__ = "predictions"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # in the validation order
    path: Mapped[str] = mapped_column(Text)
    label: Mapped[int] = mapped_column(Integer)
    pred: Mapped[int] = mapped_column(Integer)
    prob: Mapped[float] = mapped_column(Float)  # of the predicted class
    true_prob: Mapped[float] = mapped_column(Float)  # of the true class
    loss: Mapped[float] = mapped_column(Float)  # cross-entropy, -log(true_prob)


# --- plain domain objects ---------------------------------------------------------------


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
    summary: dict = field(default_factory=dict)
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
        return ((self.ended_at or _now()) - self.started_at).total_seconds()

    @property
    def best_epoch_number(self) -> int | None:
        """The best epoch as people count them, from 1 (best_epoch is the loop's 0-based index)."""
        return None if self.best_epoch is None else self.best_epoch + 1

    @property
    def test_acc(self) -> float | None:
        """Accuracy on the held-out test split of the epoch chosen on val (summary["test"], written
        once after training: train._test_metrics); None for a run without a test split, or not yet scored."""
        return (self.summary.get("test") or {}).get("acc")

    def to_dict(self) -> dict[str, Any]:
        """The run as a JSON consumer reads it: epochs counted from 1, times in ISO format, test_acc
        at the top level (its test block is in the summary)."""
        d = dict(self.__dict__)
        for k in ("created_at", "started_at", "ended_at"):
            d[k] = d[k].isoformat() if d[k] else None
        d["best_epoch"] = self.best_epoch_number
        d["duration_s"] = self.duration_s
        d["test_acc"] = self.test_acc
        return d


@dataclass(frozen=True)
class Prediction:
    """One validation image at the run's best epoch (see SqlPrediction)."""

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
class ClassMetric:
    class_index: int
    class_name: str
    precision: float
    recall: float
    f1: float
    support: int
    confusion: list[int]


def _to_run(row: SqlRun, experiment: str) -> Run:
    return Run(
        id=row.id, experiment=experiment, name=row.name, status=row.status,
        config=dict(row.config or {}), created_at=row.created_at, started_at=row.started_at,
        ended_at=row.ended_at, pid=row.pid, host=row.host, worker_pid=row.worker_pid,
        error=row.error, cancel_requested=bool(row.cancel_requested),
        epochs_done=row.epochs_done, best_val_acc=row.best_val_acc, best_epoch=row.best_epoch,
        summary=dict(row.summary or {}), environment=dict(row.environment or {}),
        run_dir=row.run_dir, uid=row.uid, resume=bool(row.resume), notes=row.notes or "",
        tags=list(row.tags or []), worker_id=row.worker_id, executor=row.executor,
        launched_by=row.launched_by,
    )


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
        return self.stopped_at is None and (_now() - self.heartbeat_at).total_seconds() <= \
            settings.current().worker_timeout_s


@dataclass
class Artifact:
    id: int
    experiment: str
    kind: str
    created_at: dt.datetime
    data: dict


@dataclass(frozen=True)
class Job:
    """A page's job (see SqlJob) as it was read."""

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


def _to_job(row: SqlJob, experiment: str) -> Job:
    return Job(row.id, experiment, row.command, list(row.args), dict(row.config or {}), row.status, row.created_at,
               row.started_at, row.ended_at, row.worker_id, row.host, row.pid, row.gpu, row.log, row.error,
               row.peak_mb)


class UnknownRun(LookupError):
    pass


# --- the store --------------------------------------------------------------------------


class Store:
    """All reads and writes of experiments, runs and metrics go through here."""

    def __init__(self, url: str | None = None):
        self.url = url or default_db_url()
        if "://" not in self.url:  # a plain file path: the SQLite database in that file
            self.url = f"sqlite:///{Path(self.url).expanduser().resolve()}"
        is_sqlite = self.url.startswith("sqlite")
        if is_sqlite:
            _make_folder(self.url)
        connect_args = {"timeout": _BUSY_TIMEOUT_S} if is_sqlite else {}
        # PostgreSQL's json type has no NaN or Infinity (a diverged run's summary has them): there
        # they are written as {"$float": "NaN"} and read back as floats. SQLite keeps them as they are.
        codec = {} if is_sqlite else {"json_serializer": _json_dumps, "json_deserializer": _json_loads}
        self.engine = create_engine(self.url, connect_args=connect_args, pool_pre_ping=not is_sqlite, **codec)
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrations.upgrade(self.engine)  # a new database gets every table, an older one its new columns
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._instance_id: str | None = None

    @property
    def instance_id(self) -> str:
        """This database's own identity, made when it was created: a new file at the same path (a
        deleted experiments.db made again) is another database, with another worker."""
        if self._instance_id is None:
            key = SqlStoreInfo.key == "instance_id"
            try:
                with self.engine.begin() as c:
                    found = c.scalar(select(SqlStoreInfo.value).where(key))
                    if found is None:
                        found = uuid.uuid4().hex
                        c.execute(insert(SqlStoreInfo).values(key="instance_id", value=found))
            except IntegrityError:  # another process made it first
                with self.engine.connect() as c:
                    found = c.scalar(select(SqlStoreInfo.value).where(key))
            self._instance_id = found
        return self._instance_id

    def close(self) -> None:
        self.engine.dispose()

    # experiments
    def experiment_id(self, name: str) -> int:
        """Id of the experiment called `name`, made on first use."""
        try:
            with self._session.begin() as s:
                found = s.scalar(select(SqlExperiment.id).where(SqlExperiment.name == name))
                if found is not None:
                    return found
                exp = SqlExperiment(name=name)
                s.add(exp)
                s.flush()
                return exp.id
        except IntegrityError:  # another process made it between the look and the insert
            with self._session() as s:
                return s.scalar(select(SqlExperiment.id).where(SqlExperiment.name == name))

    def list_experiments(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(SqlExperiment.name).order_by(SqlExperiment.id)))

    # runs
    def create_run(self, config: dict, experiment: str = "default", name: str | None = None,
                   status: str = "queued", pid: int | None = None, host: str | None = None,
                   launched_by: str | None = None) -> Run:
        """A new run; a foreground run is created `running` with its own pid, so no worker takes it."""
        exp_id = self.experiment_id(experiment)
        with self._session.begin() as s:
            row = SqlRun(experiment_id=exp_id, name=name or "", status=status, config=config,
                         summary={}, environment={}, pid=pid, host=host, launched_by=launched_by,
                         executor="here" if status == "running" else None)
            s.add(row)
            s.flush()
            if not row.name:
                row.name = f"{config.get('strategy', 'run')}-{row.id}"
            return _to_run(row, experiment)

    def get_run(self, run_id: int) -> Run:
        with self._session() as s:
            found = s.execute(
                select(SqlRun, SqlExperiment.name).join(SqlExperiment).where(SqlRun.id == run_id)
            ).first()
            if found is None:
                raise UnknownRun(f"no run with id {run_id}")
            return _to_run(found[0], found[1])

    def list_runs(self, experiment: str | None = None, statuses: Iterable[str] | None = None,
                  run_ids: Iterable[int] | None = None, tag: str | None = None,
                  launched_by: Iterable[str] | None = None) -> list[Run]:
        """Runs, newest first: all, or those of an experiment, with these statuses, ids, a tag, or
        launched by any of these people (an empty `launched_by` is no filter, as `statuses`)."""
        q = select(SqlRun, SqlExperiment.name).join(SqlExperiment).order_by(SqlRun.id.desc())
        if experiment:
            q = q.where(SqlExperiment.name == experiment)
        if statuses:
            q = q.where(SqlRun.status.in_(list(statuses)))
        if launched_by:
            q = q.where(SqlRun.launched_by.in_(list(launched_by)))
        if run_ids is not None:
            q = q.where(SqlRun.id.in_(list(run_ids)))
        with self._session() as s, _gc_paused():  # hundreds of runs' configs and summaries
            runs = [_to_run(r, e) for r, e in s.execute(q).all()]
        # Tags are a JSON list; matched here, the same on SQLite and PostgreSQL.
        return [r for r in runs if tag in r.tags] if tag else runs

    def annotate(self, run_id: int, notes: str | None = None, tags: Iterable[str] | None = None) -> Run:
        """Set a run's notes and/or tags (tags trimmed, empty ones dropped, each once, in order)."""
        fields: dict[str, Any] = {}
        if notes is not None:
            fields["notes"] = notes.strip()
        if tags is not None:
            fields["tags"] = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
        self.get_run(run_id)  # an unknown run is an error, not a silent no-op
        self.update_run(run_id, **fields)
        return self.get_run(run_id)

    def tags(self, experiment: str | None = None) -> list[str]:
        """Every tag in use (in an experiment), sorted: the tags column alone, however many runs."""
        q = select(SqlRun.tags).join(SqlExperiment).where(SqlRun.tags.is_not(None))
        if experiment:
            q = q.where(SqlExperiment.name == experiment)
        with self._session() as s:
            return sorted({t for (tags,) in s.execute(q) for t in tags or []})

    def launchers(self, experiment: str | None = None) -> list[str]:
        """Who launched runs (in an experiment), each once, alphabetically; runs naming nobody left out."""
        q = select(SqlRun.launched_by).distinct().join(SqlExperiment).where(SqlRun.launched_by.is_not(None))
        if experiment:
            q = q.where(SqlExperiment.name == experiment)
        with self._session() as s:
            return sorted(s.scalars(q), key=str.lower)

    # experiments' artifacts
    def add_artifact(self, experiment: str, kind: str, data: dict) -> Artifact:
        exp_id = self.experiment_id(experiment)
        with self._session.begin() as s:
            row = SqlArtifact(experiment_id=exp_id, kind=kind, data=data)
            s.add(row)
            s.flush()
            return Artifact(row.id, experiment, kind, row.created_at, dict(row.data))

    def artifacts(self, experiment: str, kind: str | None = None) -> list[Artifact]:
        """An experiment's artifacts, newest first."""
        q = (select(SqlArtifact).join(SqlExperiment).where(SqlExperiment.name == experiment)
             .order_by(SqlArtifact.id.desc()))
        if kind:
            q = q.where(SqlArtifact.kind == kind)
        with self._session() as s:
            return [Artifact(r.id, experiment, r.kind, r.created_at, dict(r.data)) for r in s.scalars(q)]

    def update_run(self, run_id: int, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        with self._session.begin() as s:
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(**fields))

    def start_run(self, run_id: int, pid: int, host: str, environment: dict, run_dir: str) -> None:
        self.update_run(run_id, status="running", started_at=_now(), pid=pid, host=host,
                        environment=environment, run_dir=run_dir, error=None)

    def finish_run(self, run_id: int, status: str, error: str | None = None,
                   summary: dict | None = None) -> None:
        fields: dict[str, Any] = {"status": status, "ended_at": _now(), "error": error}
        if summary is not None:
            fields["summary"] = summary
        self.update_run(run_id, **fields)

    def requeue(self, run_id: int, status: str = "queued") -> Run:
        """A failed or cancelled run back in the queue (or `running` in the foreground), to resume
        from its own last checkpoint."""
        self.update_run(run_id, status=status, cancel_requested=False, error=None, ended_at=None,
                        pid=None, worker_pid=None, resume=True)
        return self.get_run(run_id)

    def request_cancel(self, run_id: int) -> Run:
        """Queued runs are cancelled at once; running ones stop at their next batch."""
        run = self.get_run(run_id)
        with self._session.begin() as s:
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(cancel_requested=True))
            s.execute(update(SqlRun).where(SqlRun.id == run_id, SqlRun.status == "queued")
                      .values(status="cancelled", ended_at=_now()))
        return self.get_run(run.id)

    def cancel_requested(self, run_id: int) -> bool:
        with self._session() as s:
            return bool(s.scalar(select(SqlRun.cancel_requested).where(SqlRun.id == run_id)))

    def claim_next_queued(self, worker_pid: int, worker_id: int | None = None,
                          executor: str = "local") -> Run | None:
        """Atomically move the oldest queued run to running for this worker, or None. Several
        workers may claim at once: on PostgreSQL the row is taken with FOR UPDATE SKIP LOCKED (a
        worker skips rows another is claiming), on SQLite the update is conditional on the run
        still being queued, so exactly one of two racing workers gets it."""
        pick = select(SqlRun.id).where(SqlRun.status == "queued").order_by(SqlRun.id).limit(1)
        if self.engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        with self._session.begin() as s:
            run_id = s.scalar(pick)
            if run_id is None:
                return None
            claimed = s.execute(update(SqlRun).where(SqlRun.id == run_id, SqlRun.status == "queued")
                                .values(status="running", started_at=_now(), worker_pid=worker_pid,
                                        worker_id=worker_id, executor=executor))
            if claimed.rowcount != 1:
                return None
        return self.get_run(run_id)

    # workers
    def register_worker(self, host: str, pid: int, executor: str = "local") -> int:
        """A new worker of this database, heartbeating from now; its id."""
        with self._session.begin() as s:
            row = SqlWorker(host=host, pid=pid, executor=executor)
            s.add(row)
            s.flush()
            return row.id

    def heartbeat(self, worker_id: int) -> None:
        with self.engine.begin() as c:
            c.execute(update(SqlWorker).where(SqlWorker.id == worker_id).values(heartbeat_at=_now()))

    def stop_worker(self, worker_id: int) -> None:
        with self.engine.begin() as c:
            c.execute(update(SqlWorker).where(SqlWorker.id == worker_id).values(stopped_at=_now()))

    def workers(self, alive: bool | None = None) -> list[WorkerInfo]:
        """Every worker recorded (newest first), or only the live or only the gone ones."""
        with self._session() as s:
            found = [WorkerInfo(w.id, w.host, w.pid, w.executor, w.started_at, w.heartbeat_at, w.stopped_at)
                     for w in s.scalars(select(SqlWorker).order_by(SqlWorker.id.desc()))]
        return found if alive is None else [w for w in found if w.alive == alive]

    def fail_orphaned(self, timeout_s: float | None = None) -> list[int]:
        """Fail the running runs whose worker stopped, or stopped heartbeating more than timeout_s
        (default settings.worker_timeout_s) ago, saying so; each is resumable from its last
        checkpoint. Safe when several workers notice at once: the update is conditional."""
        timeout_s = settings.current().worker_timeout_s if timeout_s is None else timeout_s
        cutoff = _now() - dt.timedelta(seconds=timeout_s)
        q = (select(SqlRun.id, SqlWorker.id, SqlWorker.host, SqlWorker.heartbeat_at, SqlWorker.stopped_at)
             .join(SqlWorker, SqlWorker.id == SqlRun.worker_id)
             .where(SqlRun.status == "running", (SqlWorker.heartbeat_at < cutoff) | SqlWorker.stopped_at.is_not(None)))
        failed = []
        with self._session.begin() as s:
            for run_id, worker, host, beat, stopped in s.execute(q).all():
                why = (f"its worker {worker} on {host} stopped at {stopped:%Y-%m-%d %H:%M:%S} UTC" if stopped else
                       f"its worker {worker} on {host} stopped heartbeating at {beat:%Y-%m-%d %H:%M:%S} UTC")
                done = s.execute(update(SqlRun).where(SqlRun.id == run_id, SqlRun.status == "running").values(
                    status="failed", ended_at=_now(),
                    error=f"worker lost: {why} (resumable from its last checkpoint)"))
                if done.rowcount == 1:
                    failed.append(run_id)
        return failed

    # a page's jobs (service/jobs.py)
    def create_job(self, job_id: str, command: str, experiment: str, args: list[str], config: dict,
                   log: str | None = None) -> Job:
        """A new job, queued."""
        exp_id = self.experiment_id(experiment)
        with self._session.begin() as s:
            row = SqlJob(id=job_id, experiment_id=exp_id, command=command, args=list(args), config=dict(config),
                         status="queued", log=log)
            s.add(row)
            s.flush()
            return _to_job(row, experiment)

    def get_job(self, job_id: str) -> Job | None:
        with self._session() as s:
            found = s.execute(select(SqlJob, SqlExperiment.name).join(SqlExperiment).where(SqlJob.id == job_id)).first()
            return None if found is None else _to_job(*found)

    def jobs(self, statuses: Iterable[str] | None = None, ids: Iterable[str] | None = None,
             worker_id: int | None = None) -> list[Job]:
        """Jobs, oldest first: all, or those with these statuses, ids, or of this worker."""
        q = select(SqlJob, SqlExperiment.name).join(SqlExperiment).order_by(SqlJob.created_at, SqlJob.id)
        if statuses:
            q = q.where(SqlJob.status.in_(list(statuses)))
        if ids is not None:
            q = q.where(SqlJob.id.in_(list(ids)))
        if worker_id is not None:
            q = q.where(SqlJob.worker_id == worker_id)
        with self._session() as s:
            return [_to_job(r, e) for r, e in s.execute(q).all()]

    def claim_job(self, job_id: str, worker_id: int | None, host: str, gpu: str | None) -> bool:
        """Move `job_id` from queued to running for this worker (None: the dashboard's own process) on
        `gpu`; False if it is no longer queued (another worker took it, or it was cancelled). The
        update is conditional: of two claimers, one gets it (PostgreSQL re-reads the row it waited for)."""
        with self._session.begin() as s:
            done = s.execute(update(SqlJob).where(SqlJob.id == job_id, SqlJob.status == "queued").values(
                status="running", started_at=_now(), worker_id=worker_id, host=host, gpu=gpu, pid=None))
            return done.rowcount == 1

    def update_job(self, job_id: str, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        with self._session.begin() as s:
            s.execute(update(SqlJob).where(SqlJob.id == job_id).values(**fields))

    def finish_job(self, job_id: str, status: str, error: str | None = None, peak_mb: float | None = None) -> bool:
        """Record a running job's end; False if it was not running (cancelled meanwhile, or ended)."""
        if status not in FINISHED:
            raise ValueError(f"not an end: {status!r}")
        with self._session.begin() as s:
            done = s.execute(update(SqlJob).where(SqlJob.id == job_id, SqlJob.status == "running").values(
                status=status, ended_at=_now(), error=error, peak_mb=peak_mb))
            return done.rowcount == 1

    def requeue_job(self, job_id: str, worker_id: int | None) -> bool:
        """A running job of `worker_id` back in the queue (its worker stops): another worker runs it
        again from the start."""
        with self._session.begin() as s:
            done = s.execute(update(SqlJob).where(SqlJob.id == job_id, SqlJob.status == "running",
                                                  SqlJob.worker_id == worker_id).values(
                status="queued", started_at=None, worker_id=None, host=None, pid=None, gpu=None))
            return done.rowcount == 1

    def cancel_job(self, job_id: str) -> Job | None:
        """A queued or running job cancelled: a queued one is never started; a running one's process is
        stopped by whoever runs it (its worker, at its next step)."""
        with self._session.begin() as s:
            s.execute(update(SqlJob).where(SqlJob.id == job_id, SqlJob.status.in_(("queued", "running")))
                      .values(status="cancelled", ended_at=_now(), error="cancelled"))
        return self.get_job(job_id)

    def fail_orphaned_jobs(self, timeout_s: float | None = None) -> list[str]:
        """Fail the running jobs whose worker stopped, or went silent for timeout_s (as fail_orphaned
        does for runs); the page waiting for one says why."""
        timeout_s = settings.current().worker_timeout_s if timeout_s is None else timeout_s
        cutoff = _now() - dt.timedelta(seconds=timeout_s)
        q = (select(SqlJob.id, SqlWorker.id, SqlWorker.host).join(SqlWorker, SqlWorker.id == SqlJob.worker_id)
             .where(SqlJob.status == "running", (SqlWorker.heartbeat_at < cutoff) | SqlWorker.stopped_at.is_not(None)))
        failed = []
        with self._session.begin() as s:
            for job_id, worker, host in s.execute(q).all():
                done = s.execute(update(SqlJob).where(SqlJob.id == job_id, SqlJob.status == "running").values(
                    status="failed", ended_at=_now(), error=f"its worker {worker} on {host} stopped while it ran; "
                                                            f"start it again"))
                if done.rowcount == 1:
                    failed.append(job_id)
        return failed

    def delete_run(self, run_id: int) -> None:
        with self._session.begin() as s:
            s.execute(delete(SqlEpochMetric).where(SqlEpochMetric.run_id == run_id))
            s.execute(delete(SqlRunCurves).where(SqlRunCurves.run_id == run_id))
            s.execute(delete(SqlClassMetric).where(SqlClassMetric.run_id == run_id))
            s.execute(delete(SqlPrediction).where(SqlPrediction.run_id == run_id))
            s.execute(delete(SqlRun).where(SqlRun.id == run_id))

    # metrics
    def log_epoch(self, run_id: int, epoch: int, metrics: dict[str, float],
                  best: tuple[float, int] | None = None) -> None:
        """One epoch's metrics and the run's progress, in one transaction."""
        with self.engine.begin() as s:  # Core, not the ORM: it runs every epoch and should cost ~1 ms
            # A resumed run may repeat an epoch that was recorded just before its process died.
            s.execute(delete(SqlEpochMetric).where(SqlEpochMetric.run_id == run_id, SqlEpochMetric.epoch == epoch))
            if rows := _narrow_rows(run_id, {epoch: metrics}):
                s.execute(insert(SqlEpochMetric), rows)
            _add_to_curves(s, run_id, {epoch: metrics})
            progress: dict[str, Any] = {"epochs_done": epoch + 1}
            if best is not None:
                progress.update(best_val_acc=best[0], best_epoch=best[1])
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(**progress))

    def import_epochs(self, run_id: int, epochs: dict[int, dict[str, float]]) -> None:
        """Record many epochs of a run at once (imports, generated databases), as log_epoch would."""
        with self._session.begin() as s:
            s.execute(delete(SqlEpochMetric).where(SqlEpochMetric.run_id == run_id,
                                                   SqlEpochMetric.epoch.in_(list(epochs))))
            if rows := _narrow_rows(run_id, epochs):
                s.execute(insert(SqlEpochMetric), rows)
            _add_to_curves(s, run_id, epochs)
            last = max(epochs)
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(epochs_done=last + 1))

    def epoch_metrics(self, run_ids: Iterable[int]) -> dict[int, dict[int, dict[str, float]]]:
        """{run_id: {epoch: {key: value}}} for the given runs (from run_curves: one row per run)."""
        ids = list(run_ids)
        out: dict[int, dict[int, dict[str, float]]] = {i: {} for i in ids}
        if not ids:
            return out
        with self._session() as s, _gc_paused():
            for run_id, keys, epochs, matrix in s.execute(
                    select(SqlRunCurves.run_id, SqlRunCurves.keys, SqlRunCurves.epochs, SqlRunCurves.matrix)
                    .where(SqlRunCurves.run_id.in_(ids))):
                out[run_id] = _curve_epochs(keys, epochs, matrix)
            # Runs recorded before run_curves existed: from the narrow rows.
            older = [i for i in ids if not out[i]]
            q = select(SqlEpochMetric.run_id, SqlEpochMetric.epoch, SqlEpochMetric.key,
                       SqlEpochMetric.value).where(SqlEpochMetric.run_id.in_(older))
            for run_id, epoch, key, value in (s.execute(q) if older else []):
                out[run_id].setdefault(epoch, {})[key] = value
        for run_id in older:
            out[run_id] = dict(sorted(out[run_id].items()))
        return out

    def count_epoch_rows(self, run_id: int) -> int:
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(SqlEpochMetric)
                            .where(SqlEpochMetric.run_id == run_id)) or 0

    def log_class_metrics(self, run_id: int, rows: list[ClassMetric]) -> None:
        with self._session.begin() as s:
            s.execute(delete(SqlClassMetric).where(SqlClassMetric.run_id == run_id))
            s.add_all(SqlClassMetric(run_id=run_id, **r.__dict__) for r in rows)

    def class_metrics(self, run_id: int) -> list[ClassMetric]:
        q = select(SqlClassMetric).where(SqlClassMetric.run_id == run_id).order_by(SqlClassMetric.class_index)
        with self._session() as s:
            return [ClassMetric(r.class_index, r.class_name, r.precision, r.recall, r.f1,
                                r.support, list(r.confusion)) for r in s.scalars(q)]


    # the best checkpoint's predictions on the validation images
    def save_predictions(self, run_id: int, epoch: int, rows: list[Prediction]) -> None:
        """Replace the run's predictions with `rows`, those of (0-based) `epoch`, its best so far."""
        with self._session.begin() as s:
            s.execute(delete(SqlPrediction).where(SqlPrediction.run_id == run_id))  # the previous best's
            if rows:
                s.execute(insert(SqlPrediction), [{"run_id": run_id, **r.__dict__} for r in rows])
            row = s.get(SqlRun, run_id)
            row.summary = {**(row.summary or {}), "predictions": {"epoch": epoch + 1, "images": len(rows)}}

    def delete_predictions(self, run_id: int) -> None:
        with self._session.begin() as s:
            s.execute(delete(SqlPrediction).where(SqlPrediction.run_id == run_id))

    def predictions(self, run_id: int) -> list[Prediction]:
        """The run's stored predictions in validation order (empty for a run that has none)."""
        q = select(SqlPrediction).where(SqlPrediction.run_id == run_id).order_by(SqlPrediction.position)
        with self._session() as s:
            return [Prediction(r.position, r.path, r.label, r.pred, r.prob, r.true_prob, r.loss) for r in s.scalars(q)]


class EpochWriter:
    """Store.log_epoch on a background thread, as MLflow's and W&B's asynchronous logging: the
    training loop hands an epoch's metrics over and goes on while they are written (about 1 ms of
    SQLite), so a short epoch does not wait on the database. Rows are written in order; close()
    (or flush()) waits for all of them, and an error in a write is raised there, or at the next
    hand-over. An epoch handed over just before the process is killed may be lost: the training
    loop keeps each epoch's metrics in its checkpoint too, and a resume writes them again.
    """

    def __init__(self, store: Store):
        self.store = store
        self.pending: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="epoch-writer", daemon=True)
        self.thread.start()

    def log_epoch(self, run_id: int, epoch: int, metrics: dict[str, float],
                  best: tuple[float, int] | None = None) -> None:
        self._raise()
        self.pending.put((run_id, epoch, dict(metrics), best))

    def flush(self) -> None:
        self.pending.join()
        self._raise()

    def close(self) -> None:
        """Wait for every handed-over epoch, then stop the thread."""
        try:
            self.flush()
        finally:
            self.pending.put(None)
            self.thread.join()

    def __enter__(self) -> "EpochWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _write(self) -> None:
        while (item := self.pending.get()) is not None:
            try:
                if self.error is None:  # after a failed write, the rest wait for the error to be seen
                    self.store.log_epoch(*item)
            except BaseException as e:  # noqa: BLE001 (raised in the training thread)
                self.error = e
            finally:
                self.pending.task_done()
        self.pending.task_done()


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while a load allocates its many small objects at once: each
    collection would walk every object made so far (it tripled a 500-run comparison's load)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class EpochRow(Mapping):
    """One epoch's metrics, read from its run's curves row (a numpy row) as they are asked for:
    {key: value}, leaving out the NaNs (metrics that epoch lacks). A 500-run comparison reads a
    few keys of each epoch; making a float and a dict entry of every key of every epoch first cost
    it most of its load time. Reads as a Mapping; pickles as a dict."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: np.ndarray):
        self._index, self._values = index, values

    def __getitem__(self, key: str) -> float:
        value = float(self._values[self._index[key]])
        if value != value:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        i = self._index.get(key)
        return i is not None and not math.isnan(self._values[i])

    def __iter__(self):
        present = ~np.isnan(self._values)
        return (k for k, i in self._index.items() if present[i])

    def __len__(self) -> int:
        return int((~np.isnan(self._values)).sum())

    def __repr__(self) -> str:
        return repr(dict(self))

    def __reduce__(self):  # pickled (Streamlit's caches) as the plain dict it reads as
        return dict, (dict(self),)


def _narrow_rows(run_id: int, epochs: dict[int, dict[str, float]]) -> list[dict]:
    """epoch_metrics rows of `epochs`, leaving out NaN (a diverged loss): a value the narrow table
    cannot hold on SQLite (NULL), and one the curves already read as absent."""
    return [{"run_id": run_id, "epoch": e, "key": k, "value": float(v)}
            for e, metrics in epochs.items() for k, v in metrics.items() if not math.isnan(float(v))]


def _curve_epochs(keys: list[str], epochs: list[int], matrix: bytes) -> dict[int, EpochRow]:
    """{epoch: {key: value}} from a curves row (each epoch's row read as it is asked for)."""
    index = {k: i for i, k in enumerate(keys)}
    values = np.frombuffer(matrix, dtype="<f8").reshape(len(epochs), len(keys))
    return {e: EpochRow(index, row) for e, row in zip(epochs, values)}


def _add_to_curves(s: Session | Connection, run_id: int, epochs: dict[int, dict[str, float]]) -> None:
    """Put `epochs` into the run's curves row (an epoch recorded again replaces its row)."""
    c = SqlRunCurves
    row = s.execute(select(c.keys, c.epochs, c.matrix).where(c.run_id == run_id)).first()
    keys, rows = ([], {}) if row is None else (list(row.keys), dict(zip(row.epochs, np.frombuffer(
        row.matrix, dtype="<f8").reshape(len(row.epochs), len(row.keys)).tolist())))
    for epoch, metrics in epochs.items():
        keys += [k for k in metrics if k not in keys]
        rows[epoch] = [float(metrics[k]) if k in metrics else math.nan for k in keys]
    order = sorted(rows)
    values = {"keys": keys, "epochs": order, "matrix": np.array(
        [rows[e] + [math.nan] * (len(keys) - len(rows[e])) for e in order], dtype="<f8").tobytes()}
    if row is None:
        s.execute(insert(c).values(run_id=run_id, **values))
    else:
        s.execute(update(c).where(c.run_id == run_id).values(**values))


_NOT_FINITE = "$float"  # {"$float": "NaN" | "Infinity" | "-Infinity"}: a float JSON cannot hold


def _json_dumps(value: Any) -> str:
    """JSON without the NaN and Infinity tokens that PostgreSQL refuses (see Store.__init__)."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # only when a float is not finite: the slow path
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {_NOT_FINITE: repr(value).replace("nan", "NaN").replace("inf", "Infinity")}
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_loads(text: str) -> Any:
    return json.loads(text, object_hook=_float_back)


def _float_back(d: dict) -> Any:
    return float(d[_NOT_FINITE]) if len(d) == 1 and _NOT_FINITE in d else d


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the dashboard read while a run writes; busy_timeout waits out a writer
    # instead of failing with "database is locked"; SQLite enforces foreign keys only on ask.
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
    _switch_to_wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _switch_to_wal(cur: sqlite3.Cursor) -> None:
    """PRAGMA journal_mode=WAL, retried for up to the busy timeout while another connection holds
    the database's write lock. On a file not yet in WAL (a new one) the switch reads the header and
    then writes it, and SQLite refuses that read-to-write upgrade at once with SQLITE_BUSY, without
    waiting out busy_timeout (waiting could deadlock): several processes opening a new database at
    the same moment meet it. On a database already in WAL the switch only reads: it never waits."""
    deadline, pause = time.monotonic() + _BUSY_TIMEOUT_S, 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() > deadline:
                path = cur.execute("PRAGMA database_list").fetchone()[2]
                raise sqlite3.OperationalError(
                    f"could not switch {path} to WAL (PRAGMA journal_mode=WAL): another connection held "
                    f"its write lock for {_BUSY_TIMEOUT_S} s") from e
        time.sleep(pause)
        pause = min(2 * pause, 0.05)
