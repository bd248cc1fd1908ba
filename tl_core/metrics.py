"""Per-class results from a confusion matrix: the one formula for precision, recall and F1."""

from __future__ import annotations

from typing import Sequence

from .store import ClassMetric


def class_metrics(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[ClassMetric]:
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
