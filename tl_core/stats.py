"""Is a difference between strategies real, and where do their data-efficiency curves cross?

Pure functions over numbers a front end already has (no torch, no store):
  paired_difference(name_a, a, name_b, b): a and b map a seed to that run's best val accuracy
      (0..1). Runs of one experiment share a train/val split and differ only by seed, so the
      difference is taken per seed (paired), which removes the seed-to-seed variance both
      strategies share; its mean is bootstrapped (scipy) into a confidence interval, reported
      in accuracy points (x100) with a verdict and a plain label.
  pairwise(groups): the same for every pair of groups, each pair once.
  crossovers(curves): where two strategies' (images per class, accuracy) curves change order,
      interpolated in log(images per class), with a plain label.
  mean_std(values): a chart's band: the mean and the sample standard deviation.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

VERDICTS = ("a", "b", "noise", "too_few")
TIE = 1e-9  # accuracies closer than this are equal (float noise, not a difference)


@dataclass(frozen=True)
class Difference:
    """Strategy a minus strategy b over the seeds both ran, in accuracy points (x100).

    `mean`, `low` and `high` keep the sign a - b whoever wins; `text` names the winner first.
    With fewer than 2 paired seeds there is no interval (`low`, `high` None).
    """

    a: str
    b: str
    n_pairs: int
    seeds: tuple[int, ...]
    mean: float | None  # mean of the paired differences a - b; None without a pair
    low: float | None
    high: float | None
    confidence: float
    verdict: str  # "a" wins, "b" wins, "noise" (the interval contains 0) or "too_few" (< 2 pairs)
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds)}


# Fewer paired seeds than this: a clear verdict is still reported, marked as resting on few seeds.
FEW_SEEDS = 5


def paired_difference(name_a: str, a: Mapping[int, float], name_b: str, b: Mapping[int, float], *,
                      confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> Difference:
    """Best val accuracy of `name_a` minus `name_b`, paired on shared seeds, with a bootstrap CI."""
    seeds = tuple(sorted(set(a) & set(b)))
    for name, group in ((name_a, a), (name_b, b)):
        bad = [s for s in seeds if not math.isfinite(group[s])]
        if bad:
            raise ValueError(f"{name}: best val accuracy of seed(s) {bad} is not a number; "
                             f"leave runs without a finished epoch out")
    xa = np.array([a[s] for s in seeds], dtype=float) * 100
    xb = np.array([b[s] for s in seeds], dtype=float) * 100
    mean = float(np.mean(xa - xb)) if seeds else None
    if len(seeds) < 2:
        text = f"{name_a} vs {name_b}: {len(seeds)} paired seed{'s' * (len(seeds) != 1)}: add seeds to tell"
        return Difference(name_a, name_b, len(seeds), seeds, mean, None, None, confidence, "too_few", text)

    # The percentile method, deliberately. BCa's acceleration is a jackknife ratio that is 0/0
    # when every paired difference is the same (identical runs, or a constant gap), so scipy
    # returns NaN with a DegenerateDataWarning; with the usual 2-10 seeds that is common, and BCa's
    # corrections are themselves estimated from those few seeds. The percentile interval always
    # exists, is a point when the differences are, and stays within the differences seen (the
    # basic method can reach past them). Its known cost: with very few seeds it is narrow (no
    # bootstrap can see variance the seeds did not show), so "beats" on 2-3 seeds is a hint.
    ci = stats.bootstrap((xa, xb), _mean_difference, paired=True, vectorized=True, method="percentile",
                         confidence_level=confidence, n_resamples=n_resamples,
                         rng=np.random.default_rng(seed)).confidence_interval
    low, high = float(ci.low), float(ci.high)
    verdict = "a" if low > 0 else "b" if high < 0 else "noise"
    label = f"{confidence * 100:g}% CI"
    if verdict == "a":
        text = f"{name_a} beats {name_b} by {_pts(mean)} points ({label} {_pts(low)} to {_pts(high)})"
    elif verdict == "b":
        text = f"{name_b} beats {name_a} by {_pts(-mean)} points ({label} {_pts(-high)} to {_pts(-low)})"
    else:
        text = (f"{name_a} vs {name_b}: within noise ({_pts(mean, '+')} points, "
                f"{label} {_pts(low)} to {_pts(high)}): add seeds")
    if verdict in ("a", "b") and len(seeds) < FEW_SEEDS:
        # The percentile bootstrap of a handful of pairs can only span the differences it saw (two
        # seeds: their min to max), so it is narrower than the truth: say so beside the verdict.
        text += f"; from {len(seeds)} seeds only: add seeds to be sure"
    return Difference(name_a, name_b, len(seeds), seeds, mean, low, high, confidence, verdict, text)


def pairwise(groups: Mapping[str, Mapping[int, float]], **kw: Any) -> list[Difference]:
    """`paired_difference` for every pair of groups, each once, in the mapping's order."""
    return [paired_difference(na, groups[na], nb, groups[nb], **kw) for na, nb in itertools.combinations(groups, 2)]


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


def _mean_difference(xa: np.ndarray, xb: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(xa - xb, axis=axis)


def _pts(value: float, sign: str = "") -> str:
    """Points to one decimal, never "-0.0"."""
    return f"{value:{sign}z.1f}"


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
