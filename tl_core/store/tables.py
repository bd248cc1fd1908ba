"""The store's tables, as SQLAlchemy 2.x models (mlflow's `dbmodels/models.py`).

A run holds its config and summary as JSON; metrics are narrow rows (run, epoch, key, value), so
a new metric needs no migration, with every epoch of a run also kept as one matrix row
(`run_curves`) for fast loading; the run and job statuses sit under check constraints. These
models are what the schema should be; the schema itself is made and changed by the Alembic
revisions in migrations/ (tests/test_migrations.py checks that the two agree). Nothing outside
the store reads these rows: it hands out records.py's dataclasses.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import JSON, CheckConstraint, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .records import utcnow


class Base(DeclarativeBase):
    """The store's tables' metadata: every model below, and what the migrations are checked against."""


class SqlExperiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
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
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class SqlArtifact(Base):
    """Something measured for an experiment rather than a run: an LR finder's curve, a probe."""

    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
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


class SqlExclusion(Base):
    """An image of a dataset left out of training, or moved to another class, without touching the
    user's files: the dataset's exclusion list, which runs copy into their config when queued."""

    __tablename__ = "exclusions"
    __table_args__ = (CheckConstraint("action IN ('exclude', 'relabel')", name="exclusion_action"),)
    dataset: Mapped[str] = mapped_column(Text, primary_key=True)  # the dataset folder, resolved
    path: Mapped[str] = mapped_column(Text, primary_key=True)  # the image, relative to the folder (forward slashes)
    action: Mapped[str] = mapped_column(String(20))
    to_class: Mapped[str | None] = mapped_column(String(300), nullable=True)  # relabel: the class it is read as
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    added_by: Mapped[str | None] = mapped_column(String(200), nullable=True)  # who added it
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # why: the finding it came from
