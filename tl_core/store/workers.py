"""The store's workers: each worker (or Ray executor) serving a database registers, heartbeats
while it lives and says when it stops, so that another can tell the runs it held were orphaned.

A part of `Store` (store.py): the methods below run on the Store's engine and sessions.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from .. import settings
from .engine import rows_matched
from .records import WorkerInfo, utcnow
from .tables import SqlRun, SqlWorker


class WorkersMixin:
    """Store's workers, their heartbeats, and the runs they left behind."""

    engine: Engine
    _session: sessionmaker[Session]

    def register_worker(self, host: str, pid: int, executor: str = "local") -> int:
        """A new worker of this database, heartbeating from now; its id."""
        with self._session.begin() as s:
            row = SqlWorker(host=host, pid=pid, executor=executor)
            s.add(row)
            s.flush()
            return row.id

    def heartbeat(self, worker_id: int) -> None:
        with self.engine.begin() as c:
            c.execute(update(SqlWorker).where(SqlWorker.id == worker_id).values(heartbeat_at=utcnow()))

    def stop_worker(self, worker_id: int) -> None:
        with self.engine.begin() as c:
            c.execute(update(SqlWorker).where(SqlWorker.id == worker_id).values(stopped_at=utcnow()))

    def workers(self, alive: bool | None = None) -> list[WorkerInfo]:
        """Every worker recorded (newest first), or only the live or only the gone ones."""
        with self._session() as s:
            found = [
                WorkerInfo(w.id, w.host, w.pid, w.executor, w.started_at, w.heartbeat_at, w.stopped_at)
                for w in s.scalars(select(SqlWorker).order_by(SqlWorker.id.desc()))
            ]
        return found if alive is None else [w for w in found if w.alive == alive]

    def fail_orphaned(self, timeout_s: float | None = None) -> list[int]:
        """Fail the running runs whose worker stopped, or stopped heartbeating more than timeout_s
        (default settings.worker_timeout_s) ago, saying so; each is resumable from its last
        checkpoint. Safe when several workers notice at once: the update is conditional."""
        timeout_s = settings.current().worker_timeout_s if timeout_s is None else timeout_s
        cutoff = utcnow() - dt.timedelta(seconds=timeout_s)
        q = (
            select(SqlRun.id, SqlWorker.id, SqlWorker.host, SqlWorker.heartbeat_at, SqlWorker.stopped_at)
            .join(SqlWorker, SqlWorker.id == SqlRun.worker_id)
            .where(SqlRun.status == "running", (SqlWorker.heartbeat_at < cutoff) | SqlWorker.stopped_at.is_not(None))
        )
        failed = []
        with self._session.begin() as s:
            for run_id, worker, host, beat, stopped in s.execute(q).all():
                why = (
                    f"its worker {worker} on {host} stopped at {stopped:%Y-%m-%d %H:%M:%S} UTC"
                    if stopped
                    else f"its worker {worker} on {host} stopped heartbeating at {beat:%Y-%m-%d %H:%M:%S} UTC"
                )
                done = s.execute(
                    update(SqlRun)
                    .where(SqlRun.id == run_id, SqlRun.status == "running")
                    .values(
                        status="failed",
                        ended_at=utcnow(),
                        error=f"worker lost: {why} (resumable from its last checkpoint)",
                    )
                )
                if rows_matched(done) == 1:
                    failed.append(run_id)
        return failed
