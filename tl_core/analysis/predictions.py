"""A run's predictions on its validation images, and what they say: which images it gets wrong,
which land in a cell of its confusion matrix, and what changed between two runs.

The predictions are those of the best epoch's own validation pass (train.py keeps each image's
predicted class, its probability, the true class's probability and its loss while validating,
and the store replaces them at each new best), so they reproduce the run's best accuracy and
confusion matrix exactly, and a page reads them rather than running a model.

Two runs are compared image by image (matched by file path): "fixed" images are wrong in the
reference and right in the other run, "broken" the reverse, "still wrong" wrong in both. This
module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..store import Prediction

__all__ = ["Diff", "Prediction", "accuracy", "confusion", "diff", "errors", "from_outputs", "in_cell"]


def from_outputs(paths: list[str], labels, preds, pred_log_probs, true_log_probs) -> list[Prediction]:
    """One Prediction per image, in order, from its label, predicted class and the log-probabilities
    of both (what train.evaluate keeps)."""
    return [
        Prediction(i, path, int(y), int(p), float(np.exp(q)), float(np.exp(t)), float(-t))
        for i, (path, y, p, q, t) in enumerate(zip(paths, labels, preds, pred_log_probs, true_log_probs))
    ]


def accuracy(preds: list[Prediction]) -> float:
    """Correct / images, computed as the training loop computes validation accuracy."""
    return sum(p.correct for p in preds) / max(len(preds), 1)


def confusion(preds: list[Prediction], num_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p in preds:
        out[p.label, p.pred] += 1
    return out


def errors(preds: list[Prediction]) -> list[Prediction]:
    """The images predicted wrong, worst loss first (fastai's top losses)."""
    return sorted((p for p in preds if not p.correct), key=lambda p: -p.loss)


def in_cell(preds: list[Prediction], true: int, predicted: int) -> list[Prediction]:
    """The images of one confusion-matrix cell, most confident first."""
    return sorted((p for p in preds if p.label == true and p.pred == predicted), key=lambda p: -p.prob)


@dataclass
class Diff:
    """Run `other` against `reference`, over the validation images both predicted."""

    fixed: list[Prediction]  # wrong in the reference, right in other (other's predictions)
    broken: list[Prediction]  # right in the reference, wrong in other
    still_wrong: list[Prediction]  # wrong in both (other's predictions)
    both_right: int
    shared: int  # images both runs validated on
    unmatched: int  # images only one of them validated on
    confusion_delta: list[list[int]]  # other's confusion minus the reference's, on the shared images
    class_deltas: list[dict]  # per class: reference and other accuracy, their difference, images

    @property
    def net(self) -> int:
        return len(self.fixed) - len(self.broken)


def diff(
    reference: list[Prediction], other: list[Prediction], classes: list[str], other_classes: list[str] | None = None
) -> Diff:
    """What `other` fixed and broke relative to `reference`, image by image."""
    if other_classes is not None and list(other_classes) != list(classes):
        raise UserError(
            "the two runs have different classes, so their predictions cannot be compared; "
            "pick a reference run trained on the same dataset"
        )
    if not reference or not other:
        raise UserError(
            "a run has no stored predictions (it has not finished an epoch, or it was trained "
            "before predictions were stored); pick runs that have them"
        )
    ref = {p.path: p for p in reference}
    pairs = [(ref[p.path], p) for p in other if p.path in ref]
    if not pairs:
        raise UserError(
            "the two runs share no validation image (another dataset or another --split-seed); "
            "pick a reference run validated on the same images"
        )
    fixed = [o for r, o in pairs if not r.correct and o.correct]
    broken = [o for r, o in pairs if r.correct and not o.correct]
    still = [o for r, o in pairs if not r.correct and not o.correct]
    n = len(classes)
    delta = confusion([o for _, o in pairs], n) - confusion([r for r, _ in pairs], n)
    deltas = []
    for c, name in enumerate(classes):
        mine = [(r, o) for r, o in pairs if r.label == c]
        if not mine:
            continue
        ref_acc, acc = (sum(x.correct for x, _ in mine) / len(mine), sum(y.correct for _, y in mine) / len(mine))
        deltas.append(
            {"class": name, "images": len(mine), "reference_acc": ref_acc, "acc": acc, "delta": acc - ref_acc}
        )
    return Diff(
        sorted(fixed, key=lambda p: p.loss),
        sorted(broken, key=lambda p: -p.loss),
        sorted(still, key=lambda p: -p.loss),
        sum(r.correct and o.correct for r, o in pairs),
        len(pairs),
        len(reference) + len(other) - 2 * len(pairs),
        delta.tolist(),
        deltas,
    )
