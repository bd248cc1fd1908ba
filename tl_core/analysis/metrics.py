"""Results from a confusion matrix: the one place for their formulas.

Per class: precision, recall and F1 (`class_metrics`). Over classes, for imbalanced data, as
scikit-learn defines them (its defaults), so that a number here is the number a reader gets
from `sklearn.metrics` on the same predictions:
  macro-F1 (`f1_score(average="macro")`): the unweighted mean of the classes' F1, over the
      classes that occur as a label or a prediction (a class never seen nor predicted counts
      for nothing either way);
  balanced accuracy (`balanced_accuracy_score`): the unweighted mean of the classes' recall,
      over the classes that occur as a label.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..store import ClassMetric

Confusion = Sequence[Sequence[int]]  # rows: true class; columns: predicted class


def class_metrics(confusion: Confusion, classes: Sequence[str]) -> list[ClassMetric]:
    """Precision, recall and F1 of each class from a (true x predicted) confusion matrix."""
    n = len(classes)
    predicted = [sum(confusion[t][p] for t in range(n)) for p in range(n)]
    out = []
    for i, name in enumerate(classes):
        row = [int(v) for v in confusion[i]]
        tp, support = row[i], sum(row)
        precision, recall = tp / max(predicted[i], 1), tp / max(support, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        out.append(ClassMetric(i, name, precision, recall, f1, support, row))
    return out


def macro_f1(confusion: Confusion) -> float:
    """The mean F1 over the classes that occur as a label or a prediction (0.0 for an empty matrix)."""
    n = len(confusion)
    rows = class_metrics(confusion, [str(i) for i in range(n)])
    occurring = [r.f1 for r in rows if r.support or sum(confusion[t][r.class_index] for t in range(n))]
    return sum(occurring) / len(occurring) if occurring else 0.0


def balanced_accuracy(confusion: Confusion) -> float:
    """The mean recall over the classes that occur as a label (0.0 for an empty matrix)."""
    recalls = [row[i] / sum(row) for i, row in enumerate(confusion) if sum(row)]
    return sum(recalls) / len(recalls) if recalls else 0.0


def accuracy(confusion: Confusion) -> float:
    """The share of images on the diagonal (0.0 for an empty matrix)."""
    total = sum(sum(row) for row in confusion)
    return sum(row[i] for i, row in enumerate(confusion)) / total if total else 0.0


def scores(confusion: Confusion, classes: Sequence[str]) -> dict:
    """A split's results from its confusion matrix, as a run's summary keeps them ("test",
    "test_last"): accuracy, macro-F1, balanced accuracy, images, and each class's row as a dict."""
    return {
        "acc": accuracy(confusion),
        "macro_f1": macro_f1(confusion),
        "balanced_acc": balanced_accuracy(confusion),
        "images": sum(sum(int(v) for v in row) for row in confusion),
        "classes": [dict(c.__dict__) for c in class_metrics(confusion, classes)],
    }
