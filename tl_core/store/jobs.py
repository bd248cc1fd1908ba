"""The store's jobs: work a page started and waits for (service/jobs.py), queued like a run,
claimed by a worker that places it on a GPU (or run by the dashboard's own process where no
worker serves the database). Every change of state is a conditional update, so that of two
claimers (or a claimer and a cancel) exactly one wins.

A part of `Store` (store.py): the methods below run on the Store's engine and sessions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from .. import settings
from .engine import rows_matched
from .records import FINISHED, STATUSES, Job, utcnow
from .tables import SqlExperiment, SqlJob, SqlWorker


class JobsMixin:
    """Store's jobs: queue, claim, finish, cancel, and fail those whose worker was lost."""

    engine: Engine
    _session: sessionmaker[Session]
    experiment_id: Callable[[str], int]  # Store's: the experiment's id, made on first use

    def create_job(
        self, job_id: str, command: str, experiment: str, args: list[str], config: dict, log: str | None = None
    ) -> Job:
        """A new job, queued."""
        exp_id = self.experiment_id(experiment)
        with self._session.begin() as s:
            row = SqlJob(
                id=job_id,
                experiment_id=exp_id,
                command=command,
                args=list(args),
                config=dict(config),
                status="queued",
                log=log,
            )
            s.add(row)
            s.flush()
            return _to_job(row, experiment)

    def get_job(self, job_id: str) -> Job | None:
        with self._session() as s:
            found = s.execute(select(SqlJob, SqlExperiment.name).join(SqlExperiment).where(SqlJob.id == job_id)).first()
            return None if found is None else _to_job(*found)

    def jobs(
        self, statuses: Iterable[str] | None = None, ids: Iterable[str] | None = None, worker_id: int | None = None
    ) -> list[Job]:
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
            done = s.execute(
                update(SqlJob)
                .where(SqlJob.id == job_id, SqlJob.status == "queued")
                .values(status="running", started_at=utcnow(), worker_id=worker_id, host=host, gpu=gpu, pid=None)
            )
            return rows_matched(done) == 1

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
            done = s.execute(
                update(SqlJob)
                .where(SqlJob.id == job_id, SqlJob.status == "running")
                .values(status=status, ended_at=utcnow(), error=error, peak_mb=peak_mb)
            )
            return rows_matched(done) == 1

    def requeue_job(self, job_id: str, worker_id: int | None) -> bool:
        """A running job of `worker_id` back in the queue (its worker stops): another worker runs it
        again from the start."""
        with self._session.begin() as s:
            done = s.execute(
                update(SqlJob)
                .where(SqlJob.id == job_id, SqlJob.status == "running", SqlJob.worker_id == worker_id)
                .values(status="queued", started_at=None, worker_id=None, host=None, pid=None, gpu=None)
            )
            return rows_matched(done) == 1

    def cancel_job(self, job_id: str) -> Job | None:
        """A queued or running job cancelled: a queued one is never started; a running one's process is
        stopped by whoever runs it (its worker, at its next step)."""
        with self._session.begin() as s:
            s.execute(
                update(SqlJob)
                .where(SqlJob.id == job_id, SqlJob.status.in_(("queued", "running")))
                .values(status="cancelled", ended_at=utcnow(), error="cancelled")
            )
        return self.get_job(job_id)

    def fail_orphaned_jobs(self, timeout_s: float | None = None) -> list[str]:
        """Fail the running jobs whose worker stopped, or went silent for timeout_s (as fail_orphaned
        does for runs); the page waiting for one says why."""
        timeout_s = settings.current().worker_timeout_s if timeout_s is None else timeout_s
        cutoff = utcnow() - dt.timedelta(seconds=timeout_s)
        q = (
            select(SqlJob.id, SqlWorker.id, SqlWorker.host)
            .join(SqlWorker, SqlWorker.id == SqlJob.worker_id)
            .where(SqlJob.status == "running", (SqlWorker.heartbeat_at < cutoff) | SqlWorker.stopped_at.is_not(None))
        )
        failed = []
        with self._session.begin() as s:
            for job_id, worker, host in s.execute(q).all():
                done = s.execute(
                    update(SqlJob)
                    .where(SqlJob.id == job_id, SqlJob.status == "running")
                    .values(
                        status="failed",
                        ended_at=utcnow(),
                        error=f"its worker {worker} on {host} stopped while it ran; start it again",
                    )
                )
                if rows_matched(done) == 1:
                    failed.append(job_id)
        return failed


def _to_job(row: SqlJob, experiment: str) -> Job:
    return Job(
        row.id,
        experiment,
        row.command,
        list(row.args),
        dict(row.config or {}),
        row.status,
        row.created_at,
        row.started_at,
        row.ended_at,
        row.worker_id,
        row.host,
        row.pid,
        row.gpu,
        row.log,
        row.error,
        row.peak_mb,
    )
