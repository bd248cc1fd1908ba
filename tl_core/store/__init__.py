"""The experiment store: tables, plain records, the store itself, the background epoch writer,
run folders and schema migrations (SQLite or PostgreSQL).

Its public surface is re-exported here (`from tl_core.store import Store, Run`); the store's own
modules import one another, never this package.

  tables.py        the SQLAlchemy models (Base, Sql*)
  records.py       the plain dataclasses out: Run, Job, Prediction, Artifact, WorkerInfo, ExcludedImage
  summary.py       a run's summary, typed (RunSummary and its blocks), and ClassMetric
  store.py         Store: experiments, runs, artifacts; workers.py, jobs.py, metrics.py, exclusions.py are its parts
  curves.py        a run's epochs as one matrix row (run_curves), read back as EpochRow
  epoch_writer.py  EpochWriter: Store.log_epoch on a background thread
  engine.py        the database URL, the engine, SQLite's settings, JSON without NaN on PostgreSQL
  run_folders.py   where runs and workers keep their files
  migrations/      the schema, revision by revision (Alembic)
"""

from .curves import EpochRow
from .engine import default_db_url
from .epoch_writer import EpochWriter
from .records import FINISHED, STATUSES, Artifact, ExcludedImage, Job, Prediction, Run, UnknownRun, WorkerInfo
from .store import Store
from .summary import ClassMetric, RunSummary

__all__ = [
    "FINISHED",
    "STATUSES",
    "Artifact",
    "ClassMetric",
    "EpochRow",
    "EpochWriter",
    "ExcludedImage",
    "Job",
    "Prediction",
    "Run",
    "RunSummary",
    "Store",
    "UnknownRun",
    "WorkerInfo",
    "default_db_url",
]
