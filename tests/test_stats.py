"""tl_core/stats.py: paired bootstrap differences between strategies, and where curves cross.

Each test fails if the behaviour breaks: the interval misses a known difference, noise is called
a win, unpaired seeds leak in, a rerun gives another interval, a crossing is misplaced.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from tl_core import stats


def _seeds(n: int, rng: np.random.Generator) -> dict[int, float]:
    return {seed: float(v) for seed, v in enumerate(rng.uniform(0.6, 0.8, n))}


def test_the_interval_covers_a_known_difference_and_names_the_winner_first():
    # b = a + 3 points + small per-seed noise: the CI must hold +3 (as a - b: -3) and exclude 0.
    rng = np.random.default_rng(7)
    a = _seeds(8, rng)
    b = {seed: acc + 0.03 + float(rng.normal(0, 0.004)) for seed, acc in a.items()}
    d = stats.paired_difference("feature_extraction", a, "two_phase", b)
    assert d.n_pairs == 8 and d.seeds == tuple(range(8)) and d.confidence == 0.95
    assert d.low < -3 < d.high < 0  # a - b, in points
    assert d.verdict == "b"
    assert d.text == (f"two_phase beats feature_extraction by {-d.mean:.1f} points "
                      f"(95% CI {-d.high:.1f} to {-d.low:.1f})")
    # The same pair the other way round: same numbers, opposite sign, same label.
    r = stats.paired_difference("two_phase", b, "feature_extraction", a)
    assert r.verdict == "a" and r.text == d.text
    assert (r.mean, r.low, r.high) == pytest.approx((-d.mean, -d.high, -d.low), abs=0.05)


def test_identical_runs_are_within_noise_without_warnings():
    # Every paired difference 0: a degenerate sample (BCa would give NaN and warn).
    a = {0: 0.71, 1: 0.74, 2: 0.69}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = stats.paired_difference("two_phase", a, "feature_extraction", dict(a))
    assert (d.mean, d.low, d.high, d.verdict) == (0.0, 0.0, 0.0, "noise")
    assert d.text == "two_phase vs feature_extraction: within noise (+0.0 points, 95% CI 0.0 to 0.0): add seeds"


def test_differences_that_are_noise_around_zero_are_within_noise():
    rng = np.random.default_rng(3)
    a = _seeds(6, rng)
    noise = rng.normal(0, 0.02, 6)
    noise -= noise.mean()  # mean difference exactly 0, spread of 2 points
    b = {seed: a[seed] + float(e) for seed, e in zip(a, noise)}
    d = stats.paired_difference("two_phase", a, "feature_extraction", b)
    assert d.low < 0 < d.high and d.verdict == "noise"
    assert d.text.startswith("two_phase vs feature_extraction: within noise (")
    assert d.text.endswith(f"95% CI {d.low:.1f} to {d.high:.1f}): add seeds")


def test_only_seeds_both_ran_are_paired_and_the_mean_is_of_paired_differences():
    a = {1: 0.70, 2: 0.75, 3: 0.72, 9: 0.10}  # seed 9: a alone
    b = {1: 0.66, 2: 0.70, 3: 0.71, 5: 0.99}  # seed 5: b alone
    d = stats.paired_difference("full", a, "partial", b)
    assert d.seeds == (1, 2, 3) and d.n_pairs == 3
    assert d.mean == pytest.approx(100 * ((0.70 - 0.66) + (0.75 - 0.70) + (0.72 - 0.71)) / 3)
    assert d.low >= 1.0 - 1e-9 and d.high <= 5.0 + 1e-9  # within the paired differences seen


@pytest.mark.parametrize("a, b, n", [({1: 0.7, 2: 0.8}, {2: 0.6, 3: 0.9}, 1), ({1: 0.7}, {2: 0.6}, 0)])
def test_fewer_than_two_pairs_is_too_few_and_says_add_seeds(a, b, n):
    d = stats.paired_difference("two_phase", a, "feature_extraction", b)
    assert d.n_pairs == n and d.verdict == "too_few" and d.low is None and d.high is None
    assert d.mean == (pytest.approx(20.0) if n else None)
    seeds = "seed" if n == 1 else "seeds"
    assert d.text == f"two_phase vs feature_extraction: {n} paired {seeds}: add seeds to tell"


def test_the_interval_is_deterministic_under_its_seed():
    rng = np.random.default_rng(11)
    a, b = _seeds(5, rng), _seeds(5, rng)
    first = stats.paired_difference("x", a, "y", b, seed=4)
    assert stats.paired_difference("x", a, "y", b, seed=4) == first
    other = stats.paired_difference("x", a, "y", b, seed=5)
    assert (other.low, other.high) != (first.low, first.high)  # the seed is what fixes it


def test_a_difference_serialises_to_json():
    d = stats.paired_difference("x", {0: 0.5, 1: 0.6}, "y", {0: 0.4, 1: 0.45}, n_resamples=999)
    back = json.loads(json.dumps(d.to_dict()))
    assert back["seeds"] == [0, 1] and back["verdict"] == d.verdict and back["text"] == d.text
    assert set(back) == {"a", "b", "n_pairs", "seeds", "mean", "low", "high", "confidence", "verdict", "text"}


def test_pairwise_covers_each_pair_once_in_order():
    rng = np.random.default_rng(0)
    groups = {name: _seeds(3, rng) for name in ("feature_extraction", "partial", "full", "two_phase")}
    diffs = stats.pairwise(groups, n_resamples=999, confidence=0.9)
    pairs = [(d.a, d.b) for d in diffs]
    assert len(pairs) == 6 == len({frozenset(p) for p in pairs})
    assert pairs[0] == ("feature_extraction", "partial") and pairs[-1] == ("full", "two_phase")
    assert all(d.confidence == 0.9 and "90% CI" in d.text for d in diffs if d.verdict != "too_few")


def test_crossing_lines_cross_where_log_x_interpolation_puts_it():
    # a - b is +0.1 at x=10 and -0.3 at x=100: zero a quarter of the way in log10 x, at 10^1.25.
    curves = {"feature_extraction": [(10, 0.70), (100, 0.80)], "full": [(10, 0.60), (100, 1.10)]}
    [c] = stats.crossovers(curves)
    assert 10 ** 1.25 == pytest.approx(17.78, abs=0.01)
    assert c.x == 18 and c.between == (10, 100)
    assert (c.below, c.above) == ("feature_extraction", "full")
    assert c.text == "below ~18 images per class, feature_extraction wins; above, full"
    # The order of the curves changes names, not the answer.
    [r] = stats.crossovers(dict(reversed(curves.items())))
    assert (r.x, r.below, r.above, r.text) == (c.x, c.below, c.above, c.text)


def test_only_shared_x_values_count_and_the_crossing_rounds_to_two_figures():
    # b has an extra point at x=30 that a lacks: the crossing is between the shared 10 and 1000.
    curves = {"a": [(10, 0.5), (1000, 0.7)], "b": [(10, 0.4), (30, 0.9), (1000, 0.8)]}
    [c] = stats.crossovers(curves)
    assert c.between == (10, 1000) and c.x == 100 and (c.below, c.above) == ("a", "b")


def test_curves_that_never_cross_or_only_touch_give_none():
    apart = {"full": [(5, 0.6), (50, 0.8), (500, 0.9)], "feature_extraction": [(5, 0.5), (50, 0.7), (500, 0.85)]}
    touch = {"full": [(5, 0.6), (50, 0.7), (500, 0.9)], "feature_extraction": [(5, 0.5), (50, 0.7), (500, 0.85)]}
    equal = {"full": [(5, 0.6), (50, 0.7)], "feature_extraction": [(5, 0.6), (50, 0.7)]}
    assert stats.crossovers(apart) == stats.crossovers(touch) == stats.crossovers(equal) == []


def test_a_tie_between_opposite_leads_is_the_crossing_without_dividing_by_zero():
    at_point = {"a": [(4, 0.6), (40, 0.7), (400, 0.8)], "b": [(4, 0.5), (40, 0.7), (400, 0.9)]}
    [c] = stats.crossovers(at_point)
    assert c.x == 40 and c.between == (40, 40) and (c.below, c.above) == ("a", "b")
    stretch = {"a": [(1, 0.6), (10, 0.7), (1000, 0.8), (10000, 0.8)],
               "b": [(1, 0.5), (10, 0.7), (1000, 0.8), (10000, 0.9)]}
    [s] = stats.crossovers(stretch)
    assert s.x == 100 and s.between == (10, 1000)  # the middle of the tied stretch in log x
    assert math.isfinite(s.x)


def test_mean_std_is_the_sample_std_and_zero_for_one_value():
    assert stats.mean_std([0.7]) == (0.7, 0.0)
    mean, std = stats.mean_std([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.1)  # ddof 1 (population: 0.0816)
    with pytest.raises(ValueError, match="at least one"):
        stats.mean_std([])


def test_a_clear_verdict_on_few_seeds_says_they_are_few():
    a = {s: 0.70 + 0.001 * s for s in range(3)}
    b = {s: 0.80 + 0.001 * s for s in range(3)}
    few = stats.paired_difference("fe", a, "full", b)
    assert few.verdict == "b" and few.text.endswith("; from 3 seeds only: add seeds to be sure")
    many = stats.paired_difference("fe", {s: 0.7 for s in range(stats.FEW_SEEDS)},
                                   "full", {s: 0.8 for s in range(stats.FEW_SEEDS)})
    assert many.verdict == "b" and "seeds only" not in many.text
