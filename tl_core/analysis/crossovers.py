"""Where data-efficiency curves cross, and the mean and spread each point of a curve is drawn from.

Pure functions over numbers a front end already has (no torch, no store):
  crossovers(curves): where two strategies' (images per class, accuracy) curves change order,
      interpolated in log(images per class), with a plain label.
  mean_std(values): a chart's band: the mean and the sample standard deviation.
Whether a difference between two strategies is real is stats.py's.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

TIE = 1e-9  # accuracies closer than this are equal (float noise, not a difference)


@dataclass(frozen=True)
class Crossover:
    """Strategies a and b change order near `x` images per class, between grid points `between`."""

    a: str
    b: str
    x: float  # images per class where they cross, 2 significant figures
    between: tuple[float, float]  # the neighbouring shared x values it lies between (or at)
    below: str  # the winner for fewer images per class
    above: str  # the winner for more
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "between": list(self.between)}


def crossovers(curves: Mapping[str, Sequence[tuple[float, float]]]) -> list[Crossover]:
    """Where each pair of curves (images per class, mean best val accuracy) changes order.

    Only x values both curves have count. Between two neighbouring ones where the difference
    changes sign the crossing is interpolated linearly in log(x); a tie at a point between a
    lead and the opposite lead is a crossing at that point (a tied stretch: its middle in
    log x). A pair that touches without changing order, or never meets, gives none.
    """
    for name, points in curves.items():
        bad = [x for x, _ in points if not x > 0]
        if bad:
            raise ValueError(f"{name}: images per class must be positive (log x), got {bad}")
    out = []
    for na, nb in itertools.combinations(curves, 2):
        ya, yb = dict(curves[na]), dict(curves[nb])
        diffs = [(x, ya[x] - yb[x]) for x in sorted(set(ya) & set(yb))]
        out += [_crossover(na, nb, *c) for c in _sign_changes(diffs)]
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) for a chart's band."""
    if len(values) == 0:
        raise ValueError("mean_std of no values: a band needs at least one run")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _sign_changes(diffs: list[tuple[float, float]]) -> list[tuple[float, tuple[float, float], int]]:
    """(x, between, sign below) of each change of sign of d(x), ties of |d| < TIE as 0."""
    changes, last, ties = [], None, []  # last: (x, d) of the previous non-tied point
    for x, d in diffs:
        if abs(d) < TIE:
            ties.append(x)
            continue
        if last is not None and (last[1] > 0) != (d > 0):
            if ties:  # equal over [ties[0], ties[-1]]: cross in its middle (log x)
                at, between = math.sqrt(ties[0] * ties[-1]), (ties[0], ties[-1])
            else:  # d0 and d are non-zero with opposite signs, so d0 - d is not 0
                x0, d0 = last
                t = d0 / (d0 - d)
                at, between = math.exp(math.log(x0) + t * (math.log(x) - math.log(x0))), (x0, x)
            changes.append((at, between, 1 if last[1] > 0 else -1))
        last, ties = (x, d), []
    return changes


def _crossover(na: str, nb: str, at: float, between: tuple[float, float], sign_below: int) -> Crossover:
    x = _round_sig(at)
    below, above = (na, nb) if sign_below > 0 else (nb, na)
    text = f"below ~{x:g} images per class, {below} wins; above, {above}"
    return Crossover(na, nb, x, between, below, above, text)


def _round_sig(x: float, digits: int = 2) -> float:
    """x to `digits` significant figures (37.4 -> 37, 1234 -> 1200, 3.74 -> 3.7)."""
    return float(round(x, digits - 1 - math.floor(math.log10(x))))
