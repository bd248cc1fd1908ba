"""The experiment store: experiments, runs and their artifacts, through one `Store` object.

Shaped after mlflow's SQLAlchemy tracking store: every public method returns plain records
(records.py), never ORM rows (tables.py); the engine and SQLite's settings are engine.py's.
`Store(url)` applies the Alembic revisions (migrations/) when it opens a database: a new one gets
every table, one made by an earlier release is upgraded in place. Its other parts are mixed in
from the modules named for them: workers.py (workers and their heartbeats), jobs.py (a page's
jobs), metrics.py (epochs, class metrics, predictions), exclusions.py (datasets' exclusion lists).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, Text, delete, insert, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer, sessionmaker

from . import migrations
from .engine import database_url, default_db_url, gc_paused, make_engine, rows_matched
from .epoch_writer import EpochWriter
from .exclusions import ExclusionsMixin
from .jobs import JobsMixin
from .metrics import MetricsMixin
from .records import FINISHED, STATUSES, Artifact, ExcludedImage, Job, Prediction, Run, UnknownRun, WorkerInfo, utcnow
from .summary import ClassMetric, RunSummary
from .tables import (
    SqlArtifact,
    SqlClassMetric,
    SqlEpochMetric,
    SqlExperiment,
    SqlPrediction,
    SqlRun,
    SqlRunCurves,
    SqlStoreInfo,
)
from .workers import WorkersMixin

# Importable from here as before the store was split (training/ imports EpochWriter and Run from
# this module; the package, tl_core.store, is the place to import them from).
__all__ = [
    "FINISHED",
    "STATUSES",
    "Artifact",
    "ClassMetric",
    "EpochWriter",
    "ExcludedImage",
    "Job",
    "Prediction",
    "Run",
    "Store",
    "UnknownRun",
    "WorkerInfo",
    "default_db_url",
]


class Store(WorkersMixin, JobsMixin, MetricsMixin, ExclusionsMixin):
    """All reads and writes of experiments, runs and metrics go through here."""

    def __init__(self, url: str | None = None):
        self.url = database_url(url)
        self.engine = make_engine(self.url)
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
                    assert found is not None  # the other process's row
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
                made = s.scalar(select(SqlExperiment.id).where(SqlExperiment.name == name))
                assert made is not None  # the other process's row
                return made

    def list_experiments(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(SqlExperiment.name).order_by(SqlExperiment.id)))

    # runs
    def create_run(
        self,
        config: dict,
        experiment: str = "default",
        name: str | None = None,
        status: str = "queued",
        pid: int | None = None,
        host: str | None = None,
        launched_by: str | None = None,
    ) -> Run:
        """A new run; a foreground run is created `running` with its own pid, so no worker takes it."""
        exp_id = self.experiment_id(experiment)
        with self._session.begin() as s:
            row = SqlRun(
                experiment_id=exp_id,
                name=name or "",
                status=status,
                config=config,
                summary={},
                environment={},
                pid=pid,
                host=host,
                launched_by=launched_by,
                executor="here" if status == "running" else None,
            )
            s.add(row)
            s.flush()
            if not row.name:
                row.name = f"{config.get('strategy', 'run')}-{row.id}"
            return _to_run(row, experiment, row.summary)

    def get_run(self, run_id: int) -> Run:
        with self._session() as s:
            found = s.execute(self._select_runs().where(SqlRun.id == run_id)).first()
            if found is None:
                raise UnknownRun(f"no run with id {run_id}")
            return _to_run(*found)

    def list_runs(
        self,
        experiment: str | None = None,
        statuses: Iterable[str] | None = None,
        run_ids: Iterable[int] | None = None,
        tag: str | None = None,
        launched_by: Iterable[str] | None = None,
    ) -> list[Run]:
        """Runs, newest first: all, or those of an experiment, with these statuses, ids, a tag, or
        launched by any of these people (an empty `launched_by` is no filter, as `statuses`)."""
        q = self._select_runs().order_by(SqlRun.id.desc())
        if experiment:
            q = q.where(SqlExperiment.name == experiment)
        if statuses:
            q = q.where(SqlRun.status.in_(list(statuses)))
        if launched_by:
            q = q.where(SqlRun.launched_by.in_(list(launched_by)))
        if run_ids is not None:
            q = q.where(SqlRun.id.in_(list(run_ids)))
        with self._session() as s, gc_paused():  # hundreds of runs' configs and summaries
            runs = [_to_run(*found) for found in s.execute(q).all()]
        # Tags are a JSON list; matched here, the same on SQLite and PostgreSQL.
        return [r for r in runs if tag in r.tags] if tag else runs

    def _select_runs(self) -> Select:
        """(run, its experiment's name, its summary) rows. On SQLite the summary comes as its JSON text,
        which RunSummary.from_stored parses and validates in one pass: json.loads and then validation
        took 1.5x as long for runs with real summaries (500: 0.45 s against 0.70 s on a busy machine).
        PostgreSQL's driver parses json columns itself."""
        summary = type_coerce(SqlRun.summary, Text) if self.engine.dialect.name == "sqlite" else SqlRun.summary
        return select(SqlRun, SqlExperiment.name, summary).join(SqlExperiment).options(defer(SqlRun.summary))

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
        q = (
            select(SqlArtifact)
            .join(SqlExperiment)
            .where(SqlExperiment.name == experiment)
            .order_by(SqlArtifact.id.desc())
        )
        if kind:
            q = q.where(SqlArtifact.kind == kind)
        with self._session() as s:
            return [Artifact(r.id, experiment, r.kind, r.created_at, dict(r.data)) for r in s.scalars(q)]

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set columns of a run. `summary` replaces the whole summary: a RunSummary, or a dict of its
        fields (validated: a value of the wrong type is an error here, where it was written)."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        if "summary" in fields:
            fields["summary"] = RunSummary.of(fields["summary"]).to_dict()
        with self._session.begin() as s:
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(**fields))

    def update_summary(self, run_id: int, **fields: Any) -> RunSummary:
        """Set these fields of a run's summary (validated as update_run does), keeping the others,
        in one transaction; the summary as it is now."""
        pick = select(SqlRun).where(SqlRun.id == run_id)
        if self.engine.dialect.name == "postgresql":  # a concurrent change waits for this one
            pick = pick.with_for_update()
        with self._session.begin() as s:
            row = s.scalar(pick)
            if row is None:
                raise UnknownRun(f"no run with id {run_id}")
            summary = RunSummary.of({**RunSummary.from_stored(row.summary).to_dict(), **fields})
            row.summary = summary.to_dict()
        return summary

    def start_run(self, run_id: int, pid: int, host: str, environment: dict, run_dir: str) -> None:
        self.update_run(
            run_id,
            status="running",
            started_at=utcnow(),
            pid=pid,
            host=host,
            environment=environment,
            run_dir=run_dir,
            error=None,
        )

    def finish_run(
        self, run_id: int, status: str, error: str | None = None, summary: RunSummary | dict | None = None
    ) -> None:
        fields: dict[str, Any] = {"status": status, "ended_at": utcnow(), "error": error}
        if summary is not None:
            fields["summary"] = summary
        self.update_run(run_id, **fields)

    def requeue(self, run_id: int, status: str = "queued") -> Run:
        """A failed or cancelled run back in the queue (or `running` in the foreground), to resume
        from its own last checkpoint."""
        self.update_run(
            run_id,
            status=status,
            cancel_requested=False,
            error=None,
            ended_at=None,
            pid=None,
            worker_pid=None,
            resume=True,
        )
        return self.get_run(run_id)

    def request_cancel(self, run_id: int) -> Run:
        """Queued runs are cancelled at once; running ones stop at their next batch."""
        run = self.get_run(run_id)
        with self._session.begin() as s:
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(cancel_requested=True))
            s.execute(
                update(SqlRun)
                .where(SqlRun.id == run_id, SqlRun.status == "queued")
                .values(status="cancelled", ended_at=utcnow())
            )
        return self.get_run(run.id)

    def cancel_requested(self, run_id: int) -> bool:
        with self._session() as s:
            return bool(s.scalar(select(SqlRun.cancel_requested).where(SqlRun.id == run_id)))

    def claim_next_queued(self, worker_pid: int, worker_id: int | None = None, executor: str = "local") -> Run | None:
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
            claimed = s.execute(
                update(SqlRun)
                .where(SqlRun.id == run_id, SqlRun.status == "queued")
                .values(
                    status="running", started_at=utcnow(), worker_pid=worker_pid, worker_id=worker_id, executor=executor
                )
            )
            if rows_matched(claimed) != 1:
                return None
        return self.get_run(run_id)

    def delete_run(self, run_id: int) -> None:
        with self._session.begin() as s:
            s.execute(delete(SqlEpochMetric).where(SqlEpochMetric.run_id == run_id))
            s.execute(delete(SqlRunCurves).where(SqlRunCurves.run_id == run_id))
            s.execute(delete(SqlClassMetric).where(SqlClassMetric.run_id == run_id))
            s.execute(delete(SqlPrediction).where(SqlPrediction.run_id == run_id))
            s.execute(delete(SqlRun).where(SqlRun.id == run_id))


def _to_run(row: SqlRun, experiment: str, summary: dict | str | None) -> Run:
    return Run(
        id=row.id,
        experiment=experiment,
        name=row.name,
        status=row.status,
        config=dict(row.config or {}),
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        pid=row.pid,
        host=row.host,
        worker_pid=row.worker_pid,
        error=row.error,
        cancel_requested=bool(row.cancel_requested),
        epochs_done=row.epochs_done,
        best_val_acc=row.best_val_acc,
        best_epoch=row.best_epoch,
        summary=RunSummary.from_stored(summary),
        environment=dict(row.environment or {}),
        run_dir=row.run_dir,
        uid=row.uid,
        resume=bool(row.resume),
        notes=row.notes or "",
        tags=list(row.tags or []),
        worker_id=row.worker_id,
        executor=row.executor,
        launched_by=row.launched_by,
    )
