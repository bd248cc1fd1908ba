"""Is a difference between strategies real? (Where their data-efficiency curves cross: crossovers.py.)

Pure functions over numbers a front end already has (no torch, no store):
  paired_difference(name_a, a, name_b, b): a and b map a seed, or a (split seed, seed) pair, to that
      run's score (0..1: accuracy, macro-F1, ...). Runs that share seed and split are paired, which
      removes the variance both strategies share. The mean paired difference is tested with the
      paired t-test and given its t-interval, in points (x100), with a verdict ("a", "b", "noise",
      "too_few"), a plain label and, for a difference not yet told from noise, about how many seeds
      would tell one of the observed size.
  family(pairs), pairwise(groups): the same for many pairs at once, Holm-corrected so that the
      chance of any false verdict among them stays at 1 - confidence.
  units_needed(effect, sd, level): the paired t-test's sample size for 80% power.

What a verdict claims, and why these methods (README, "How to read a verdict"):
- The unit. Seeds of one split are the replicates: the claim is about the mean difference over
  training seeds on that split (the text names it). Where the runs span several splits, the split
  is the unit: each split's paired differences are averaged and the t-test runs over the splits'
  means, so the claim is about splits of this dataset. Pooling every (split, seed) pair as if
  independent would ignore that pairs of one split share that split's strategy-by-split effect:
  simulated with that effect as large as the seed noise, pooled 3 splits x 3 seeds named a winner
  in 17% of null trials, the split means in 5%.
- The interval. The paired t-interval is exact for normal differences at every n >= 2 (scipy's
  `ttest_rel(a, b).confidence_interval()` gives the same numbers). It replaced a percentile bootstrap,
  which can only span the differences it saw and named a winner in about half of null trials with
  2 seeds, a quarter with 3 and one in seven with 5 (the t-interval: 5%).
- No spread. When every unit's difference is the same, t is undefined, and accuracies are counts
  over a validation set, so equal differences happen by chance with few seeds. The statement then
  rests on the exact sign-flip test (under "no difference" each difference's sign is a coin flip,
  so n equal signs have p = 2^(1-n)): a verdict from 6 such seeds at 95%, "too_few" below. Every
  difference 0: "noise", nothing seen to tell apart.
- Many pairs. Holm's step-down correction keeps the chance of any false verdict in a family at
  1 - confidence under any dependence between the pairs. Each pair's interval is the t-interval
  at the level Holm tested it at (alpha / (m - k + 1) for the k-th smallest p while rejecting;
  the level where it stopped for the rest), so a verdict and its interval always agree.
  `p_adjusted` is Holm's adjusted p; a verdict names a winner exactly when it is <= alpha.
- Seeds needed. For a difference within noise: the smallest n at which the paired t-test at the
  pair's level (alpha alone, or Holm's level where it stopped) would find a true difference of
  the observed size with the observed spread 80% of the time (noncentral t). It is a planning
  guide, not evidence: observed effect and spread are themselves noisy with few seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special

VERDICTS = ("a", "b", "noise", "too_few")
CORRECTIONS = ("holm", "none")
SAME = 1e-7  # paired differences (in points) closer than this are the same: no spread
POWER = 0.8  # the chance "seeds needed" aims at, of finding a true difference of the observed size
MOST_UNITS = 100  # the most seeds (or splits) a power calculation looks for; more: "more than 100"

# One strategy's scores, by seed or by (split seed, seed) pair. The keys are Any, not Hashable: they
# are sorted and indexed, and a Mapping's key type is invariant (a dict keyed by pairs is no Mapping[Hashable]).
Scores = Mapping[Any, float]


@dataclass(frozen=True)
class Difference:
    """Strategy a minus strategy b over the runs both have, paired by seed (and split), in points (x100).

    `mean`, `low` and `high` keep the sign a - b whoever wins; `text` names the winner first.
    `low`/`high` are None where no interval is calibrated (fewer than 2 units, or the same
    difference on every unit too few times for the sign-flip test). `interval_confidence` is the
    interval's own level: `confidence` widened for the pairs tested with it (Holm).
    """

    a: str
    b: str
    n_pairs: int  # paired runs
    seeds: tuple  # their keys: seeds, or (split seed, seed) pairs
    mean: float | None  # mean difference a - b over the units; None without a pair
    low: float | None
    high: float | None
    confidence: float  # asked for: 1 - the family's chance of any false verdict
    verdict: str  # "a" or "b" wins, "noise" (not told apart) or "too_few" (no calibrated statement)
    text: str
    interval_confidence: float  # the level of [low, high]
    sd: float | None  # standard deviation of the units' differences (points)
    p: float | None  # two-sided p of this pair alone (paired t, or the sign-flip test with no spread)
    p_adjusted: float | None  # Holm's adjusted p (= p alone); a winner exactly when <= 1 - confidence
    correction: str  # "holm" or "none"
    family: int  # the pairs tested together (the correction's m)
    test: str  # "paired t", "sign-flip", "identical" or "none"
    unit: str  # "seed" or "split": what the test counts as independent
    n_units: int
    splits: tuple[Hashable, ...]  # the split seeds of the pairs, where the keys carry them
    units_needed: int | None  # "noise"/"too_few": units for 80% power at the observed size; None: unknown

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "seeds": [list(k) if isinstance(k, tuple) else k for k in self.seeds],
            "splits": list(self.splits),
        }


@dataclass(frozen=True)
class _Evidence:
    """What the data of one pair say, before a level is chosen for it."""

    a: str
    b: str
    keys: tuple
    unit: str
    splits: tuple
    diffs: np.ndarray  # one difference per unit, in points
    mean: float | None
    sd: float | None
    p: float | None
    test: str


def paired_difference(
    name_a: str,
    a: Scores,
    name_b: str,
    b: Scores,
    *,
    confidence: float = 0.95,
    what: str = "",
) -> Difference:
    """`name_a`'s score minus `name_b`'s, paired on the keys both have: the t-interval and its verdict.

    Keys are seeds (runs of one split) or (split seed, seed) pairs. `what` names the score in the
    text ("test accuracy"). A pair tested alone: no correction.
    """
    return family([(name_a, a, name_b, b)], confidence=confidence, correction="none", what=what)[0]


def pairwise(groups: Mapping[str, Scores], **kw: Any) -> list[Difference]:
    """`paired_difference` for every pair of groups, each once, in the mapping's order, as one family."""
    return family([(na, groups[na], nb, groups[nb]) for na, nb in itertools.combinations(groups, 2)], **kw)


def family(
    pairs: Sequence[tuple[str, Scores, str, Scores]],
    *,
    confidence: float = 0.95,
    correction: str = "holm",
    what: str = "",
) -> list[Difference]:
    """Each (name_a, a, name_b, b) compared, Holm-corrected as one family (or not: `correction="none"`).

    Pairs without a test (fewer than 2 units) are left out of the family's count m.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction {correction!r}: choose one of {CORRECTIONS}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: give a level between 0 and 1, e.g. 0.95")
    alpha = 1 - confidence
    evidence = [_evidence(*pair) for pair in pairs]
    tested = [i for i, e in enumerate(evidence) if e.p is not None]
    p = [e.p for e in evidence if e.p is not None]  # in the order of `tested`
    adjusted, held = holm(p, alpha) if correction == "holm" else (p, [alpha] * len(p))
    p_adjusted, level = dict(zip(tested, adjusted)), dict(zip(tested, held))
    m = len(tested) if correction == "holm" else 1
    told = {i: p_adjusted[i] <= alpha for i in tested}
    unsure = [i for i in tested if not told[i] and evidence[i].test == "paired t"]
    needed = dict(
        zip(
            unsure,
            _units_needed(
                np.array([abs(evidence[i].mean) for i in unsure]),  # type: ignore[arg-type]
                np.array([evidence[i].sd for i in unsure], dtype=float),
                np.array([level[i] for i in unsure], dtype=float),
            ),
        )
    )
    return [
        _decide(
            e,
            level.get(i, alpha),
            p_adjusted.get(i),
            told.get(i, False),
            needed.get(i),
            confidence,
            correction,
            m,
            what,
        )
        for i, e in enumerate(evidence)
    ]


def holm(p: Sequence[float], alpha: float) -> tuple[list[float], list[float]]:
    """Holm's step-down: each p's adjusted p, and the level it was tested at.

    The k-th smallest p (from 1) is rejected while every p before it was and p <= alpha / (m - k + 1);
    its adjusted p is max over j <= k of min(1, (m - j + 1) p_j). A rejected p's level is its own
    alpha / (m - k + 1); every p not rejected takes the level where the procedure stopped, so an
    interval at that level contains 0 exactly when its pair is not rejected.
    """
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, level = [1.0] * m, [alpha] * m
    running, stop = 0.0, None
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
        if running <= alpha:
            level[i] = alpha / (m - rank)
        else:
            stop = alpha / (m - rank) if stop is None else stop
            level[i] = stop
    return adjusted, level


def units_needed(
    effect: float, sd: float, level: float = 0.05, power: float = POWER, most: int = MOST_UNITS
) -> int | None:
    """The smallest n >= 2 at which a two-sided paired t-test at `level` finds a true mean difference
    `effect` with unit standard deviation `sd` with probability `power`; None beyond `most`.

    Power at n: P(|T| > t_{1-level/2, n-1}) for T noncentral t with n - 1 degrees of freedom and
    noncentrality effect / sd * sqrt(n) (the textbook calculation, as G*Power and statsmodels do it).
    """
    return _units_needed(
        np.array([effect], dtype=float), np.array([sd], dtype=float), np.array([level], dtype=float), power, most
    )[0]


def _units_needed(
    effect: np.ndarray, sd: np.ndarray, level: np.ndarray, power: float = POWER, most: int = MOST_UNITS
) -> list[int | None]:
    """`units_needed` of many pairs in one pass (a family's pairs within noise: one ufunc call)."""
    out: list[int | None] = [None] * len(effect)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.abs(effect) / sd
        z = special.ndtri(1 - level / 2)
        # The normal answer with Guenther's correction for t: within 1.4 units of the t-test's answer
        # either way (checked for effects of 0.2 to 6 sd at levels 0.05, 0.05 / 21 and 0.05 / 189).
        guess = ((z + special.ndtri(power)) / delta) ** 2 + z**2 / 2
    live = np.flatnonzero((effect != 0) & (sd > 0) & np.isfinite(guess) & (guess <= most + 2))
    if not live.size:
        return out
    # Power grows with n: look in a window around the guess; a pair whose answer is not inside it
    # (its first n enough is the window's first, above 2) is searched over every n.
    start = np.maximum(2, guess[live].astype(int) - 3)
    ns = np.minimum(start[:, None] + np.arange(10), most)
    enough = _power(ns, delta[live, None], level[live, None]) >= power
    for row, i in enumerate(live):
        first = int(np.argmax(enough[row])) if enough[row].any() else None
        if first is not None and (first > 0 or start[row] == 2):
            out[i] = int(ns[row, first])
        else:
            every = np.arange(2, most + 1)
            hit = np.flatnonzero(_power(every, delta[i], level[i]) >= power)
            out[i] = int(every[hit[0]]) if hit.size else None
    return out


def _power(ns: np.ndarray, delta: np.ndarray | float, level: np.ndarray | float) -> np.ndarray:
    """The two-sided paired t-test's power at n units, standardised effect `delta`, level `level`."""
    df = ns - 1
    c = special.stdtrit(df, 1 - level / 2)
    nc = delta * np.sqrt(ns)
    # The wrong-sign tail P(T < -c) is below P(T < 0) = Phi(-nc); scipy 1.17's nctdtr returns NaN for
    # some far values (5 df, noncentrality 7.3, at -5.7), all where Phi(-nc) < 1e-5: counted as 0.
    wrong_sign = np.nan_to_num(special.nctdtr(df, nc, -c), nan=0.0)
    return 1 - special.nctdtr(df, nc, c) + wrong_sign


def _evidence(name_a: str, a: Scores, name_b: str, b: Scores) -> _Evidence:
    keys = tuple(sorted(set(a) & set(b)))
    for name, group in ((name_a, a), (name_b, b)):
        bad = [k for k in keys if not math.isfinite(group[k])]
        if bad:
            raise ValueError(
                f"{name}: the score of seed(s) {bad} is not a number; leave runs without a finished epoch out"
            )
    d = (np.array([a[k] for k in keys], dtype=float) - np.array([b[k] for k in keys], dtype=float)) * 100
    splits = tuple(sorted({k[0] for k in keys})) if keys and isinstance(keys[0], tuple) else ()
    if len(splits) > 1:  # the split is the unit: its seeds' mean difference
        index = [k[0] for k in keys]
        diffs = np.array([d[[i == s for i in index]].mean() for s in splits])
        unit = "split"
    else:
        diffs, unit = d, "seed"
    n = len(diffs)
    if n < 2:
        return _Evidence(
            name_a, name_b, keys, unit, splits, diffs, float(diffs.mean()) if n else None, None, None, "none"
        )
    mean = float(diffs.mean())
    if np.ptp(diffs) <= SAME:  # no spread: t is undefined; the exact sign-flip test still holds
        if abs(mean) <= SAME:
            return _Evidence(name_a, name_b, keys, unit, splits, diffs, 0.0, 0.0, 1.0, "identical")
        return _Evidence(name_a, name_b, keys, unit, splits, diffs, mean, 0.0, 2.0 ** (1 - n), "sign-flip")
    sd = float(diffs.std(ddof=1))
    t = mean / (sd / math.sqrt(n))
    p = float(2 * special.stdtr(n - 1, -abs(t)))
    return _Evidence(name_a, name_b, keys, unit, splits, diffs, mean, sd, p, "paired t")


def _decide(
    e: _Evidence,
    level: float,
    p_adjusted: float | None,
    told: bool,
    needed: int | None,
    confidence: float,
    correction: str,
    m: int,
    what: str,
) -> Difference:
    """The verdict, interval, units needed and words of one pair tested at `level`."""
    n = len(e.diffs)
    low = high = None
    if e.test == "paired t":
        assert e.mean is not None and e.sd is not None  # a paired t-test has both
        half = float(special.stdtrit(n - 1, 1 - level / 2)) * e.sd / math.sqrt(n)
        low, high = e.mean - half, e.mean + half
        needed = None if told or needed is None else max(needed, n + 1)
    elif e.test == "identical":
        low = high = 0.0
    elif e.test == "sign-flip":
        if told:
            low = high = e.mean
        else:  # 2^(1-n) <= level from this many units on
            needed = max(n + 1, math.ceil(1 - math.log2(level) - 1e-12))
    if e.test == "none" or (e.test == "sign-flip" and not told):
        verdict = "too_few"
    elif told:
        assert e.mean is not None  # a pair told apart was tested: it has a mean
        verdict = "a" if e.mean > 0 else "b"
    else:
        verdict = "noise"
    d = Difference(
        e.a,
        e.b,
        len(e.keys),
        e.keys,
        e.mean,
        low,
        high,
        confidence,
        verdict,
        "",
        1 - level,
        e.sd,
        e.p,
        p_adjusted,
        correction,
        m,
        e.test,
        e.unit,
        n,
        e.splits,
        needed,
    )
    return _with_text(d, what)


def _with_text(d: Difference, what: str) -> Difference:
    of = f" of {what}" if what else ""
    units = _count(d.n_units, d.unit)
    if d.unit == "split":
        basis = f"over {d.n_units} splits, {d.n_pairs} paired runs"
    elif len(d.splits) == 1:
        basis = f"{_count(d.n_units, 'seed')} on split {d.splits[0]}"
    else:
        basis = f"{_count(d.n_units, 'seed')} on one split"
    holm_note = f", Holm over {d.family} pairs" if d.correction == "holm" and d.family > 1 else ""
    ci = f"{100 * d.interval_confidence:.4g}% CI"
    if d.test == "none":
        text = f"{d.a} vs {d.b}: {d.n_pairs} paired seed{'s' * (d.n_pairs != 1)}: add seeds to tell"
    elif d.test == "identical":
        text = f"{d.a} vs {d.b}: the same {what or 'score'} on every one of the {units} ({basis}): no difference seen"
    elif d.test == "sign-flip" and d.verdict in ("a", "b"):
        assert d.mean is not None  # every test but "none" has a mean
        win, lose, gap = (d.a, d.b, d.mean) if d.verdict == "a" else (d.b, d.a, -d.mean)
        text = (
            f"{win} beats {lose} by {_pts(gap)} points{of} on every one of the {units} "
            f"(exact sign-flip test, p {d.p_adjusted:.2g}{holm_note}; {basis})"
        )
    elif d.test == "sign-flip":
        assert d.mean is not None
        text = (
            f"{d.a} vs {d.b}: the same gap ({_pts(d.mean, '+')} points{of}) on each of the {units} "
            f"({basis}): too few to tell a steady gap from chance; {d.units_needed} {d.unit}s would"
        )
    elif d.verdict == "a":
        # Verdicts from here on are the paired t-test's: mean and interval are set.
        assert d.mean is not None and d.low is not None and d.high is not None
        text = (
            f"{d.a} beats {d.b} by {_pts(d.mean)} points{of} ({ci} {_pts(d.low)} to {_pts(d.high)}{holm_note}; {basis})"
        )
    elif d.verdict == "b":
        assert d.mean is not None and d.low is not None and d.high is not None
        text = (
            f"{d.b} beats {d.a} by {_pts(-d.mean)} points{of} "
            f"({ci} {_pts(-d.high)} to {_pts(-d.low)}{holm_note}; {basis})"
        )
    else:
        assert d.mean is not None and d.low is not None and d.high is not None
        advice = (
            f"about {d.units_needed} {d.unit}s would tell a difference this size"
            if d.units_needed
            else f"a difference this size would take more than {MOST_UNITS} {d.unit}s"
        )
        text = (
            f"{d.a} vs {d.b}: within noise ({_pts(d.mean, '+')} points{of}, {ci} {_pts(d.low)} to "
            f"{_pts(d.high)}{holm_note}; {basis}): {advice}"
        )
    return Difference(**{**d.__dict__, "text": text})


def _count(n: int, unit: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {unit}{'s' * (n != 1)}"


def _pts(value: float, sign: str = "") -> str:
    """Points to one decimal, never "-0.0"."""
    return f"{value:{sign}z.1f}"
