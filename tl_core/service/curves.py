"""What a curve shows, computed for the charts: per-epoch mean and spread over runs, smoothing, the fine-tuning phases.

The dashboard's charts (ui/charts) draw these numbers and compute none; epochs are counted from 1
in what is returned here, as everywhere in the service (the store keeps the loop's 0-based index).
`epoch_spread` is vectorised (numpy over runs x epochs): a grid's hundreds of runs per chart.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..store.store import Run
from .readings import Metrics


class Spread(NamedTuple):
    """A key's mean and sample standard deviation over runs, at each epoch (1-based) with enough values."""

    epochs: np.ndarray
    mean: np.ndarray
    std: np.ndarray  # 0 at an epoch with one value: no spread to show


def epoch_spread(runs: Sequence[Run], metrics: Metrics, key: str, min_runs: int = 1) -> Spread:
    """The mean and sample std of `key` over `runs` at each epoch where at least `min_runs` of them recorded it."""
    last = max((e for r in runs for e in metrics.get(r.id, {})), default=-1)
    values = np.full((len(runs), last + 1), np.nan)
    for row, r in enumerate(runs):
        for e, m in metrics.get(r.id, {}).items():
            values[row, e] = m.get(key, np.nan)
    counts = (~np.isnan(values)).sum(0)
    keep = np.flatnonzero(counts >= max(min_runs, 1))
    if not len(keep):
        return Spread(keep, np.zeros(0), np.zeros(0))
    kept = values[:, keep]
    with warnings.catch_warnings():  # an epoch with one value has no spread: 0, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(kept, 0)
        std = np.nan_to_num(np.nanstd(kept, 0, ddof=1)) if len(runs) > 1 else np.zeros(len(keep))
    return Spread(keep + 1, mean, np.where(counts[keep] > 1, std, 0.0))


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """An exponential moving average (TensorBoard's smoothing, debiased), for noisy curves."""
    if weight <= 0 or not values:
        return list(values)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def unfreeze_epochs(epochs: Mapping[int, Mapping[str, float]]) -> dict[int, int]:
    """{epoch (1-based): trainable groups} for each epoch where more groups train than the epoch before."""
    out, before = {}, None
    for e, m in sorted(epochs.items()):
        n = m.get("trainable_groups")
        if n is not None and before is not None and n != before:
            out[e + 1] = int(n)
        before = n if n is not None else before
    return out


def phases(epochs: Mapping[int, Mapping[str, float]]) -> list[tuple[int, int, int]]:
    """The fine-tuning timeline: (first epoch, last epoch, trainable groups), 1-based, per phase."""
    out: list[tuple[int, int, int]] = []
    for e, m in sorted(epochs.items()):
        n = int(m.get("trainable_groups", 0))
        if out and out[-1][2] == n and out[-1][1] == e:
            out[-1] = (out[-1][0], e + 1, n)
        else:
            out.append((e + 1, e + 1, n))
    return out
