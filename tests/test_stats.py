"""tl_core/analysis/stats.py: calibrated verdicts on paired differences between strategies, Holm's
correction over many pairs, seeds needed, and where data-efficiency curves cross.

Each test fails if the behaviour breaks: a null difference is called a win more often than the
error rate promises (at any number of seeds, alone or in a family of pairs), a real difference
goes unfound, a verdict disagrees with its interval, unpaired seeds leak in, a crossing is misplaced.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tl_core.analysis import crossovers, stats


def _seeds(n: int, rng: np.random.Generator) -> dict[int, float]:
    return {seed: float(v) for seed, v in enumerate(rng.uniform(0.6, 0.8, n))}


def _false_rate(rng: np.random.Generator, trials: int, n: int, draw) -> float:
    """The share of trials in which two strategies with no true difference get a winner."""
    wins = 0
    for _ in range(trials):
        a, b = draw(rng, n)
        wins += stats.paired_difference("a", a, "b", b).verdict in ("a", "b")
    return wins / trials


def _normal_null(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    # Seeds share a lot (one split, one data order per seed): accuracy ~ 0.70 + seed effect + own noise.
    shared = rng.normal(0.70, 0.03, n)
    return (dict(enumerate(shared + rng.normal(0, 0.01, n))), dict(enumerate(shared + rng.normal(0, 0.01, n))))


def _counted_null(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    # Accuracies are counts over a validation set (here 20 images): equal differences on every seed
    # happen by chance, where a t-test without a guard would see no spread and name a winner.
    p = np.clip(rng.normal(0.70, 0.03, n)[:, None] + rng.normal(0, 0.01, (n, 2)), 0, 1)
    acc = rng.binomial(20, p) / 20
    return dict(enumerate(acc[:, 0])), dict(enumerate(acc[:, 1]))


# --- calibration: the promise a verdict makes ------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_with_no_true_difference_a_winner_is_named_at_most_at_the_error_rate(n):
    # The old percentile bootstrap named a winner in 53% of these trials at 2 seeds, 26% at 3, 17% at 5.
    rng = np.random.default_rng(100 + n)
    assert _false_rate(rng, 3000, n, _normal_null) <= 0.07
    assert _false_rate(rng, 3000, n, _counted_null) <= 0.07


def test_a_real_difference_is_found_with_eight_seeds():
    # b = a + 2 points, paired differences spread by 1.2 points: the paired t-test at 8 seeds finds
    # it with probability _power (about 0.93); found in at least 85% of 1,000 trials.
    rng = np.random.default_rng(8)
    expected = float(stats._power(np.array([8]), 2 / 1.2, 0.05)[0])
    found = 0
    for _ in range(1000):
        shared = rng.normal(0.70, 0.03, 8)
        a = shared + rng.normal(0, 0.012 / math.sqrt(2), 8)
        b = shared + 0.02 + rng.normal(0, 0.012 / math.sqrt(2), 8)
        found += stats.paired_difference("a", dict(enumerate(a)), "b", dict(enumerate(b))).verdict == "b"
    assert expected > 0.9 and found / 1000 >= 0.85


def test_seven_null_strategies_keep_the_chance_of_any_false_verdict_controlled():
    # 21 pairs per family, 1,000 families: without a correction (each pair's own p) some pair "wins" in
    # about half of them (54%; the old bootstrap: 88%); Holm keeps any false verdict to about 5% (5.7%).
    rng = np.random.default_rng(21)
    names = [f"s{i}" for i in range(7)]
    holm = uncorrected = 0
    for _ in range(1000):
        shared = rng.normal(0.70, 0.03, 5)
        diffs = stats.pairwise({name: dict(enumerate(shared + rng.normal(0, 0.01, 5))) for name in names})
        holm += any(d.verdict in ("a", "b") for d in diffs)
        uncorrected += any(d.p <= 0.05 for d in diffs)
    assert holm / 1000 <= 0.07
    assert uncorrected / 1000 > 0.4  # the family is what needed controlling
    assert len(diffs) == 21 and all(d.family == 21 and d.correction == "holm" for d in diffs)
    alone = stats.pairwise({name: {0: 0.5, 1: 0.6} for name in names[:3]}, correction="none")
    assert all(d.family == 1 and d.interval_confidence == 0.95 for d in alone)


def test_across_splits_the_split_is_the_unit_and_stays_calibrated():
    # 3 splits x 3 seeds, a strategy-by-split effect as large as the seed noise: pooling the 9 pairs as
    # if independent names a winner in ~17% of null trials; the split means, in ~5%.
    rng = np.random.default_rng(3)
    wins = pooled = 0
    for _ in range(1000):
        split_effect = rng.normal(0, 0.01, (3, 1))
        d = split_effect + rng.normal(0, 0.01, (3, 3))
        base = rng.normal(0.7, 0.03, (3, 3))
        a = {(s, k): float(base[s, k] + d[s, k]) for s in range(3) for k in range(3)}
        b = {(s, k): float(base[s, k]) for s in range(3) for k in range(3)}
        diff = stats.paired_difference("a", a, "b", b)
        wins += diff.verdict in ("a", "b")
        pooled += scipy_stats.ttest_1samp(d.ravel(), 0).pvalue <= 0.05
    assert wins / 1000 <= 0.07 and pooled / 1000 > 0.12
    assert diff.unit == "split" and diff.n_units == 3 and diff.n_pairs == 9 and diff.splits == (0, 1, 2)
    assert diff.mean == pytest.approx(100 * d.mean(axis=1).mean())
    assert "over 3 splits, 9 paired runs" in diff.text


# --- the interval, the verdict and their words -------------------------------------------------------


def test_the_interval_is_scipys_paired_t_interval_and_names_the_winner_first():
    rng = np.random.default_rng(7)
    a = _seeds(8, rng)
    b = {seed: acc + 0.03 + float(rng.normal(0, 0.004)) for seed, acc in a.items()}
    d = stats.paired_difference("feature_extraction", a, "two_phase", b)
    ref = scipy_stats.ttest_rel([100 * a[s] for s in a], [100 * b[s] for s in a])
    ci = ref.confidence_interval(confidence_level=0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-9) and d.p == pytest.approx(ref.pvalue)
    assert d.n_pairs == 8 and d.seeds == tuple(range(8)) and d.confidence == d.interval_confidence == 0.95
    assert d.low < -3 < d.high < 0 and d.verdict == "b" and d.test == "paired t" and d.unit == "seed"
    assert d.text == (
        f"two_phase beats feature_extraction by {-d.mean:.1f} points "
        f"(95% CI {-d.high:.1f} to {-d.low:.1f}; 8 seeds on one split)"
    )
    # The same pair the other way round: same numbers, opposite sign, same label.
    r = stats.paired_difference("two_phase", b, "feature_extraction", a)
    assert r.verdict == "a" and r.text == d.text
    assert (r.mean, r.low, r.high) == pytest.approx((-d.mean, -d.high, -d.low))


def test_the_text_names_the_split_and_the_score():
    a = {(0, s): 0.70 + 0.01 * s for s in range(4)}
    b = {(0, s): 0.60 + 0.01 * s + 0.002 * (s % 2) for s in range(4)}
    d = stats.paired_difference("full", a, "partial", b, what="test accuracy")
    assert d.verdict == "a" and d.splits == (0,) and d.unit == "seed" and d.seeds == tuple((0, s) for s in range(4))
    assert d.text.startswith("full beats partial by 9.9 points of test accuracy (95% CI ")
    assert d.text.endswith("; 4 seeds on split 0)")


def test_identical_runs_are_within_noise_without_warnings():
    a = {0: 0.71, 1: 0.74, 2: 0.69}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = stats.paired_difference("two_phase", a, "feature_extraction", dict(a))
    assert (d.mean, d.low, d.high, d.verdict, d.p, d.test) == (0.0, 0.0, 0.0, "noise", 1.0, "identical")
    assert d.units_needed is None
    assert d.text == (
        "two_phase vs feature_extraction: the same score on every one of the 3 seeds "
        "(3 seeds on one split): no difference seen"
    )


def test_a_steady_gap_needs_six_seeds_for_the_sign_flip_test():
    # Every seed 2.5 points apart (one image in 40): no spread, so no t; the exact sign-flip test's
    # p is 2^(1-n), below 0.05 from 6 seeds on.
    few = stats.paired_difference("full", {s: 0.725 for s in range(3)}, "partial", {s: 0.70 for s in range(3)})
    assert few.verdict == "too_few" and few.test == "sign-flip" and few.p == 0.25
    assert few.low is few.high is None and few.units_needed == 6
    assert few.text == (
        "full vs partial: the same gap (+2.5 points) on each of the 3 seeds (3 seeds on one split): "
        "too few to tell a steady gap from chance; 6 seeds would"
    )
    six = stats.paired_difference("full", {s: 0.725 for s in range(6)}, "partial", {s: 0.70 for s in range(6)})
    assert six.verdict == "a" and six.p == 2**-5 and six.low == six.high == pytest.approx(2.5)
    assert six.text == (
        "full beats partial by 2.5 points on every one of the 6 seeds "
        "(exact sign-flip test, p 0.031; 6 seeds on one split)"
    )


def test_noise_says_how_many_seeds_would_tell_a_difference_of_its_size():
    rng = np.random.default_rng(3)
    a = _seeds(4, rng)
    spread = np.array([1.0, -1.0, 1.0, -1.0]) * 0.02
    b = {seed: a[seed] - 0.01 + float(e) for seed, e in zip(a, spread)}  # +1 point, sd ~2.3 points
    d = stats.paired_difference("two_phase", a, "feature_extraction", b)
    assert d.low < 0 < d.high and d.verdict == "noise"
    assert d.units_needed == stats.units_needed(abs(d.mean), d.sd, 0.05) > 4
    assert d.text.startswith("two_phase vs feature_extraction: within noise (+1.0 points, 95% CI ")
    assert d.text.endswith(f"; 4 seeds on one split): about {d.units_needed} seeds would tell a difference this size")


def test_units_needed_is_the_paired_t_tests_sample_size_for_80_percent_power():
    # G*Power's paired t-test (two-sided, alpha 0.05, power 0.8): d = 1 -> 10, 0.8 -> 15, 0.5 -> 34.
    assert [stats.units_needed(d, 1.0) for d in (1.0, 0.8, 0.5)] == [10, 15, 34]
    assert stats.units_needed(3.0, 1.0) == 4 and stats.units_needed(3.0, 1.0, level=0.05 / 21) == 6  # stricter: more
    assert stats.units_needed(0.0, 1.0) is None and stats.units_needed(0.1, 1.0) is None  # > 100 seeds
    # The window search agrees with the plain scan; and at the answer, simulated power is about 80%.
    for effect, level in itertools.product((0.3, 0.6, 1.7, 4.0, 6.0), (0.05, 0.05 / 21, 0.05 / 189)):
        ns = np.arange(2, 101)
        scan = ns[stats._power(ns, effect, level) >= 0.8]
        assert stats.units_needed(effect, 1.0, level) == (scan[0] if scan.size else None)
    rng = np.random.default_rng(0)
    d = rng.normal(1.0, 1.0, (4000, 10))
    found = np.mean(scipy_stats.ttest_1samp(d, 0, axis=1).pvalue <= 0.05)
    assert 0.77 <= found <= 0.83


def test_only_seeds_both_ran_are_paired_and_the_mean_is_of_paired_differences():
    a = {1: 0.70, 2: 0.75, 3: 0.72, 9: 0.10}  # seed 9: a alone
    b = {1: 0.66, 2: 0.70, 3: 0.71, 5: 0.99}  # seed 5: b alone
    d = stats.paired_difference("full", a, "partial", b)
    assert d.seeds == (1, 2, 3) and d.n_pairs == 3
    assert d.mean == pytest.approx(100 * ((0.70 - 0.66) + (0.75 - 0.70) + (0.72 - 0.71)) / 3)


@pytest.mark.parametrize("a, b, n", [({1: 0.7, 2: 0.8}, {2: 0.6, 3: 0.9}, 1), ({1: 0.7}, {2: 0.6}, 0)])
def test_fewer_than_two_pairs_is_too_few_and_says_add_seeds(a, b, n):
    d = stats.paired_difference("two_phase", a, "feature_extraction", b)
    assert d.n_pairs == n and d.verdict == "too_few" and d.low is None and d.high is None and d.p is None
    assert d.mean == (pytest.approx(20.0) if n else None)
    seeds = "seed" if n == 1 else "seeds"
    assert d.text == f"two_phase vs feature_extraction: {n} paired {seeds}: add seeds to tell"


def test_a_difference_serialises_to_json():
    d = stats.paired_difference("x", {(0, 0): 0.5, (0, 1): 0.6}, "y", {(0, 0): 0.4, (0, 1): 0.45})
    back = json.loads(json.dumps(d.to_dict()))
    assert back["seeds"] == [[0, 0], [0, 1]] and back["splits"] == [0]
    assert back["verdict"] == d.verdict and back["text"] == d.text
    assert {
        "a",
        "b",
        "n_pairs",
        "mean",
        "low",
        "high",
        "confidence",
        "interval_confidence",
        "p",
        "p_adjusted",
        "correction",
        "family",
        "units_needed",
        "unit",
        "n_units",
    } <= set(back)


# --- many pairs: Holm --------------------------------------------------------------------------------


def test_holm_adjusts_step_down_and_tests_each_pair_at_its_level():
    # The textbook case: sorted p 0.005, 0.01, 0.03, 0.04 against alpha/4, /3, /2, /1.
    adjusted, level = stats.holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert level == pytest.approx([0.05 / 3, 0.025, 0.025, 0.05 / 4])  # the two not rejected: where it stopped


def test_pairwise_covers_each_pair_once_in_order_as_one_family():
    rng = np.random.default_rng(0)
    groups = {name: _seeds(3, rng) for name in ("feature_extraction", "partial", "full", "two_phase")}
    diffs = stats.pairwise(groups, confidence=0.9)
    pairs = [(d.a, d.b) for d in diffs]
    assert len(pairs) == 6 == len({frozenset(p) for p in pairs})
    assert pairs[0] == ("feature_extraction", "partial") and pairs[-1] == ("full", "two_phase")
    assert all(d.confidence == 0.9 and d.family == 6 and d.correction == "holm" for d in diffs)
    # Nothing is told apart here: every interval is at the level Holm stopped at, alpha / 6.
    assert all(d.verdict == "noise" and d.interval_confidence == pytest.approx(1 - 0.1 / 6) for d in diffs)
    assert all("98.33% CI" in d.text and "Holm over 6 pairs" in d.text for d in diffs)


def test_every_verdict_agrees_with_its_interval_and_its_adjusted_p():
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(60):
        n = int(rng.integers(2, 9))
        shared = rng.normal(0.7, 0.03, n)
        shift = rng.choice([0.0, 0.01, 0.03], 5)  # some strategies really differ
        groups = {f"s{i}": dict(enumerate(shared + shift[i] + rng.normal(0, 0.01, n))) for i in range(5)}
        for d in stats.pairwise(groups):
            told = d.verdict in ("a", "b")
            seen.add(told)
            assert told == (d.p_adjusted <= 0.05) == (d.low > 0 or d.high < 0), d
            assert d.p_adjusted >= d.p and d.interval_confidence >= 0.95
            if told:
                assert (d.verdict == "a") == (d.mean > 0) and d.units_needed is None
    assert seen == {True, False}


def test_pairs_without_a_test_are_left_out_of_the_family():
    groups = {"a": {0: 0.7, 1: 0.72, 2: 0.69}, "b": {0: 0.6, 1: 0.61, 2: 0.62}, "c": {7: 0.5}}
    diffs = stats.pairwise(groups)
    assert [d.verdict for d in diffs] == ["a", "too_few", "too_few"]
    assert diffs[0].family == 1 and "Holm" not in diffs[0].text


# --- data-efficiency curves ---------------------------------------------------------------------------


def test_crossing_lines_cross_where_log_x_interpolation_puts_it():
    # a - b is +0.1 at x=10 and -0.3 at x=100: zero a quarter of the way in log10 x, at 10^1.25.
    curves = {"feature_extraction": [(10, 0.70), (100, 0.80)], "full": [(10, 0.60), (100, 1.10)]}
    [c] = crossovers.crossovers(curves)
    assert 10**1.25 == pytest.approx(17.78, abs=0.01)
    assert c.x == 18 and c.between == (10, 100)
    assert (c.below, c.above) == ("feature_extraction", "full")
    assert c.text == "below ~18 images per class, feature_extraction wins; above, full"
    # The order of the curves changes names, not the answer.
    [r] = crossovers.crossovers(dict(reversed(curves.items())))
    assert (r.x, r.below, r.above, r.text) == (c.x, c.below, c.above, c.text)


def test_only_shared_x_values_count_and_the_crossing_rounds_to_two_figures():
    # b has an extra point at x=30 that a lacks: the crossing is between the shared 10 and 1000.
    curves = {"a": [(10, 0.5), (1000, 0.7)], "b": [(10, 0.4), (30, 0.9), (1000, 0.8)]}
    [c] = crossovers.crossovers(curves)
    assert c.between == (10, 1000) and c.x == 100 and (c.below, c.above) == ("a", "b")


def test_curves_that_never_cross_or_only_touch_give_none():
    apart = {"full": [(5, 0.6), (50, 0.8), (500, 0.9)], "feature_extraction": [(5, 0.5), (50, 0.7), (500, 0.85)]}
    touch = {"full": [(5, 0.6), (50, 0.7), (500, 0.9)], "feature_extraction": [(5, 0.5), (50, 0.7), (500, 0.85)]}
    equal = {"full": [(5, 0.6), (50, 0.7)], "feature_extraction": [(5, 0.6), (50, 0.7)]}
    assert crossovers.crossovers(apart) == crossovers.crossovers(touch) == crossovers.crossovers(equal) == []


def test_a_tie_between_opposite_leads_is_the_crossing_without_dividing_by_zero():
    at_point = {"a": [(4, 0.6), (40, 0.7), (400, 0.8)], "b": [(4, 0.5), (40, 0.7), (400, 0.9)]}
    [c] = crossovers.crossovers(at_point)
    assert c.x == 40 and c.between == (40, 40) and (c.below, c.above) == ("a", "b")
    stretch = {
        "a": [(1, 0.6), (10, 0.7), (1000, 0.8), (10000, 0.8)],
        "b": [(1, 0.5), (10, 0.7), (1000, 0.8), (10000, 0.9)],
    }
    [s] = crossovers.crossovers(stretch)
    assert s.x == 100 and s.between == (10, 1000)  # the middle of the tied stretch in log x
    assert math.isfinite(s.x)


def test_mean_std_is_the_sample_std_and_zero_for_one_value():
    assert crossovers.mean_std([0.7]) == (0.7, 0.0)
    mean, std = crossovers.mean_std([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.1)  # ddof 1 (population: 0.0816)
    with pytest.raises(ValueError, match="at least one"):
        crossovers.mean_std([])
