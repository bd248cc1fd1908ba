"""Datasets' exclusion lists: images left out of training, or moved to another class, kept in the
store beside the runs and never in the user's folder. A dataset is its folder's resolved path; an
image, its path relative to that folder. An image has at most one entry: adding another replaces it,
removing it undoes it.

A part of `Store` (store.py): the methods below run on the Store's engine and sessions.
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .engine import rows_matched
from .records import ExcludedImage
from .tables import SqlExclusion


class ExclusionsMixin:
    """Store's exclusion lists, one per dataset folder."""

    engine: Engine
    _session: sessionmaker[Session]

    def exclusions(self, dataset: str) -> list[ExcludedImage]:
        """The dataset's entries, by path."""
        q = select(SqlExclusion).where(SqlExclusion.dataset == dataset).order_by(SqlExclusion.path)
        with self._session() as s:
            return [_record(row) for row in s.scalars(q)]

    def set_exclusion(
        self,
        dataset: str,
        path: str,
        action: str,
        to: str | None = None,
        added_by: str | None = None,
        note: str | None = None,
    ) -> ExcludedImage:
        """Leave the image out (`exclude`) or read it as class `to` (`relabel`), replacing its entry if it had one."""
        if action not in ("exclude", "relabel"):
            raise ValueError(f"unknown exclusion action {action!r}")
        for attempt in range(2):
            try:
                with self._session.begin() as s:
                    s.execute(delete(SqlExclusion).where(SqlExclusion.dataset == dataset, SqlExclusion.path == path))
                    row = SqlExclusion(
                        dataset=dataset, path=path, action=action, to_class=to, added_by=added_by, note=note
                    )
                    s.add(row)
                    s.flush()
                    return _record(row)
            except IntegrityError:  # another process added the same image between the delete and the insert
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def remove_exclusion(self, dataset: str, path: str) -> bool:
        """Undo the image's entry; False if it had none."""
        with self._session.begin() as s:
            gone = s.execute(delete(SqlExclusion).where(SqlExclusion.dataset == dataset, SqlExclusion.path == path))
            return rows_matched(gone) > 0


def _record(row: SqlExclusion) -> ExcludedImage:
    return ExcludedImage(row.dataset, row.path, row.action, row.to_class, row.created_at, row.added_by, row.note)
