"""A run's stored predictions on its validation images, for a front end: its errors worst first,
the images of a confusion-matrix cell, what one run fixed and broke against another, the images
every run of a comparison gets wrong, thumbnails.
A page or command loads a run's predictions once (`run_predictions`) and asks the rest of them.

Nothing here runs a model: the predictions were stored by the best epoch's validation pass
(predictions.py, training/loop.py).
"""

from __future__ import annotations

import io
from pathlib import Path

from ..analysis import predictions
from ..analysis.predictions import Diff, Prediction
from ..data import images
from ..store import Run, Store


def run_predictions(store: Store, run_id: int) -> list[Prediction]:
    return store.predictions(run_id)


def errors(preds: list[Prediction], limit: int | None = None) -> list[Prediction]:
    """The validation images (of a run's loaded predictions) the best checkpoint gets wrong, worst loss first."""
    return predictions.errors(preds)[:limit]


def cell(preds: list[Prediction], true: int, predicted: int) -> list[Prediction]:
    """The validation images of one confusion-matrix cell (true class, predicted class)."""
    return predictions.in_cell(preds, true, predicted)


def confusion(preds: list[Prediction], num_classes: int) -> list[list[int]]:
    """Counts[true][predicted] of a run's loaded predictions."""
    return predictions.confusion(preds, num_classes).tolist()


def classes(run: Run) -> list[str]:
    return list(run.summary.classes)


def diff(store: Store, reference_id: int, run_id: int) -> Diff:
    """What run `run_id` fixed, broke and still gets wrong against run `reference_id`."""
    ref, run = store.get_run(reference_id), store.get_run(run_id)
    return predictions.diff(store.predictions(ref.id), store.predictions(run.id), classes(ref), classes(run))


def references(store: Store, run: Run, runs: list[Run]) -> list[Run]:
    """The runs of `runs` that `run` can be compared with image by image: same classes, predictions stored."""
    return [r for r in runs if r.id != run.id and classes(r) == classes(run) and r.summary.predictions]


def wrong_in_every_run(store: Store, runs: list[Run]) -> list[Prediction]:
    """The validation images every one of `runs` (those with stored predictions and the first one's
    classes) predicts wrong, worst mean loss first, as the first of them predicted each; [] with
    fewer than two such runs."""
    with_preds = [r for r in runs if r.summary.predictions]
    if not with_preds:
        return []
    same = [r for r in with_preds if classes(r) == classes(with_preds[0])]
    if len(same) < 2:
        return []
    by_run = [{p.path: p for p in store.predictions(r.id)} for r in same]
    shared = set(by_run[0]).intersection(*by_run[1:])
    wrong = [path for path in shared if all(not preds[path].correct for preds in by_run)]
    loss = {path: sum(preds[path].loss for preds in by_run) / len(by_run) for path in wrong}
    return [by_run[0][path] for path in sorted(wrong, key=lambda path: -loss[path])]


def thumbnail(path: str, size: int = 160) -> bytes | None:
    """A PNG at most `size` px on its longer side, or None for a file that is gone or unreadable."""
    if not Path(path).is_file():
        return None
    try:
        img = images.load_image(path)
    except images.UnreadableImage:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
