"""The store's measurements of a run: its epochs' metrics (narrow rows and the curves row), its
per-class results, and its best epoch's predictions on the validation images.

A part of `Store` (store.py), kept apart as mlflow keeps its metric writes: the methods below
run on the Store's engine and sessions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from .curves import add_to_curves, curve_epochs, narrow_rows
from .engine import gc_paused
from .records import Prediction, UnknownRun
from .summary import ClassMetric, PredictionsNote, RunSummary
from .tables import SqlClassMetric, SqlEpochMetric, SqlPrediction, SqlRun, SqlRunCurves


class MetricsMixin:
    """Store's epoch metrics, class metrics and predictions."""

    engine: Engine
    _session: sessionmaker[Session]

    # each epoch's metrics
    def log_epoch(
        self, run_id: int, epoch: int, metrics: dict[str, float], best: tuple[float, int] | None = None
    ) -> None:
        """One epoch's metrics and the run's progress, in one transaction."""
        with self.engine.begin() as s:  # Core, not the ORM: it runs every epoch and should cost ~1 ms
            # A resumed run may repeat an epoch that was recorded just before its process died.
            s.execute(delete(SqlEpochMetric).where(SqlEpochMetric.run_id == run_id, SqlEpochMetric.epoch == epoch))
            if rows := narrow_rows(run_id, {epoch: metrics}):
                s.execute(insert(SqlEpochMetric), rows)
            add_to_curves(s, run_id, {epoch: metrics})
            progress: dict[str, Any] = {"epochs_done": epoch + 1}
            if best is not None:
                progress.update(best_val_acc=best[0], best_epoch=best[1])
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(**progress))

    def import_epochs(self, run_id: int, epochs: dict[int, dict[str, float]]) -> None:
        """Record many epochs of a run at once (imports, generated databases), as log_epoch would."""
        with self._session.begin() as s:
            s.execute(
                delete(SqlEpochMetric).where(SqlEpochMetric.run_id == run_id, SqlEpochMetric.epoch.in_(list(epochs)))
            )
            if rows := narrow_rows(run_id, epochs):
                s.execute(insert(SqlEpochMetric), rows)
            add_to_curves(s, run_id, epochs)
            last = max(epochs)
            s.execute(update(SqlRun).where(SqlRun.id == run_id).values(epochs_done=last + 1))

    def epoch_metrics(self, run_ids: Iterable[int]) -> dict[int, dict[int, Mapping[str, float]]]:
        """{run_id: {epoch: {key: value}}} for the given runs (from run_curves: one row per run)."""
        ids = list(run_ids)
        out: dict[int, dict[int, Mapping[str, float]]] = {i: {} for i in ids}
        if not ids:
            return out
        with self._session() as s, gc_paused():
            for run_id, keys, epochs, matrix in s.execute(
                select(SqlRunCurves.run_id, SqlRunCurves.keys, SqlRunCurves.epochs, SqlRunCurves.matrix).where(
                    SqlRunCurves.run_id.in_(ids)
                )
            ):
                out[run_id] = curve_epochs(keys, epochs, matrix)
            # Runs recorded before run_curves existed: from the narrow rows.
            older = [i for i in ids if not out[i]]
            q = select(SqlEpochMetric.run_id, SqlEpochMetric.epoch, SqlEpochMetric.key, SqlEpochMetric.value).where(
                SqlEpochMetric.run_id.in_(older)
            )
            narrow: dict[int, dict[int, dict[str, float]]] = {i: {} for i in older}
            for run_id, epoch, key, value in s.execute(q) if older else []:
                narrow[run_id].setdefault(epoch, {})[key] = value
        for run_id in older:
            out[run_id] = dict(sorted(narrow[run_id].items()))
        return out

    def count_epoch_rows(self, run_id: int) -> int:
        with self._session() as s:
            return (
                s.scalar(select(func.count()).select_from(SqlEpochMetric).where(SqlEpochMetric.run_id == run_id)) or 0
            )

    def log_class_metrics(self, run_id: int, rows: list[ClassMetric]) -> None:
        with self._session.begin() as s:
            s.execute(delete(SqlClassMetric).where(SqlClassMetric.run_id == run_id))
            s.add_all(SqlClassMetric(run_id=run_id, **r.__dict__) for r in rows)

    def class_metrics(self, run_id: int) -> list[ClassMetric]:
        q = select(SqlClassMetric).where(SqlClassMetric.run_id == run_id).order_by(SqlClassMetric.class_index)
        with self._session() as s:
            return [
                ClassMetric(r.class_index, r.class_name, r.precision, r.recall, r.f1, r.support, list(r.confusion))
                for r in s.scalars(q)
            ]

    # the best checkpoint's predictions on the validation images
    def save_predictions(self, run_id: int, epoch: int, rows: list[Prediction]) -> None:
        """Replace the run's predictions with `rows`, those of (0-based) `epoch`, its best so far."""
        with self._session.begin() as s:
            s.execute(delete(SqlPrediction).where(SqlPrediction.run_id == run_id))  # the previous best's
            if rows:
                s.execute(insert(SqlPrediction), [{"run_id": run_id, **r.__dict__} for r in rows])
            row = s.get(SqlRun, run_id)
            if row is None:
                raise UnknownRun(f"no run with id {run_id}")
            summary = RunSummary.from_stored(row.summary)
            summary.predictions = PredictionsNote(epoch=epoch + 1, images=len(rows))
            row.summary = summary.to_dict()

    def delete_predictions(self, run_id: int) -> None:
        with self._session.begin() as s:
            s.execute(delete(SqlPrediction).where(SqlPrediction.run_id == run_id))

    def predictions(self, run_id: int) -> list[Prediction]:
        """The run's stored predictions in validation order (empty for a run that has none)."""
        q = select(SqlPrediction).where(SqlPrediction.run_id == run_id).order_by(SqlPrediction.position)
        with self._session() as s:
            return [Prediction(r.position, r.path, r.label, r.pred, r.prob, r.true_prob, r.loss) for r in s.scalars(q)]
