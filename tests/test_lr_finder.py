"""The LR range test (tl_core/analysis/lr_finder.py): the suggestion rules on known curves, state restored bit
for bit, repeatable under a seed, stopped on divergence, per-group LR ratios kept, a suggestion
that agrees with a grid of real runs, and errors that name the setting."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from tl_core.analysis import lr_finder
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.models import backbones
from tl_core.training import run_data

from .helpers import train

CPU = torch.device("cpu")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Run folders and the feature cache under tmp_path (lr_find caches frozen features as a run does)."""
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _cfg(data: str, **settings):
    return make_config(**{"data": data, "image_size": 32, "batch_size": 8, "workers": 0, "epochs": 2, **settings})


# --- the suggestion rules, on curves whose answer is known ------------------------------------------


def _sigmoid_curve(n: int = 100, centre: float = -3.0, width: float = 0.35):
    """A smoothed range-test curve: flat, a sigmoid fall in log10(LR) centred on `centre`, then a rise."""
    x = np.linspace(-7, 1, n)
    fall = 1 / (1 + np.exp(-(x - centre) / width))
    return 10.0**x, 2.3 - 1.5 * fall + 0.05 * np.exp(2.5 * (x + 1)), fall


def test_steepest_finds_the_steepest_point_and_valley_lies_in_the_fall():
    lrs, losses, fall = _sigmoid_curve()
    x = np.log10(lrs)
    step = x[1] - x[0]
    # The steepest point of the same curve, from its derivative on a grid 1000x finer.
    fine = np.linspace(-7, 1, 99_001)
    slope = np.gradient(_sigmoid_curve(len(fine))[1], fine)
    steepest = fine[np.argmin(slope)]
    assert abs(steepest - (-3.0)) < 0.01  # the rise barely moves it off the sigmoid's centre

    lr, i = lr_finder.suggest(lrs, losses, "steepest")
    assert lr == lrs[i] and abs(np.log10(lr) - steepest) <= step
    lr, i = lr_finder.suggest(lrs, losses, "valley")
    assert lr == lrs[i]
    assert 0.05 < fall[i] < 0.95, f"valley at log10 LR {np.log10(lr):.2f}, {fall[i]:.0%} down the fall"
    assert i < np.argmin(losses)  # before the bottom, where the rise begins
    assert lr_finder.suggest(lrs, losses) == lr_finder.suggest(lrs, losses, "steepest")  # the default rule


def _fastai_valley(losses: np.ndarray, num_it: int | None = None) -> int:
    """fastai's lr_find + valley, written out from its loops: the recorded curve trimmed
    [num_it//10:-5] (num_it: the steps asked for), then the longest strictly decreasing
    subsequence, and the index start + int(L/3) + int(L/6)."""
    lo = (len(losses) if num_it is None else num_it) // 10
    seg = list(losses[lo:-5])
    lds = [1] * len(seg)
    max_start = max_end = 0
    for i in range(1, len(seg)):
        for j in range(i):
            if seg[i] < seg[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return lo + max_start + int(sections) + int(sections / 2)


@pytest.mark.parametrize("seed", range(6))
def test_the_rules_are_fastais_valley_and_lightnings_suggestion(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 160))
    lrs = np.logspace(-7, 1, n)
    # Noisy: the rules must agree with their sources point for point, not only on smooth curves.
    noisy = _sigmoid_curve(n, centre=rng.uniform(-5, -1))[1] + rng.normal(0, 0.05, n)
    assert lr_finder.suggest(lrs, noisy, "valley")[1] == _fastai_valley(noisy)
    # Lightning: np.gradient of the losses without the first 10 and the last, argmin. On a curve that
    # falls to its end (no diverging tail) that is exactly the rule here.
    falling = 3 - np.cumsum(rng.uniform(0, 0.1, n))
    assert lr_finder.suggest(lrs, falling, "steepest")[1] == 10 + int(np.argmin(np.gradient(falling[10:-1])))


@pytest.mark.parametrize("seed", range(6))
def test_valley_trims_a_tenth_of_the_steps_asked_for_from_a_test_that_stopped_early(seed):
    """fastai's lr_find slices recorder.lrs[num_it//10:-5]: a tenth of the steps asked for, not of
    those recorded. A test asked for 100 steps that diverged at step 40-80 (the usual end with an
    end LR of 10) loses 10 leading points, not 4-8."""
    rng = np.random.default_rng(seed)
    stopped = int(rng.integers(40, 80))
    lrs = np.array([lr_finder.lr_at(i, 1e-7, 10.0, 100) for i in range(stopped)])
    noisy = _sigmoid_curve(100, centre=rng.uniform(-6, -3))[1][:stopped] + rng.normal(0, 0.05, stopped)
    assert lr_finder.suggest(lrs, noisy, "valley", num_iter=100)[1] == _fastai_valley(noisy, num_it=100)
    # Without num_iter the curve is taken to have run to its end (fastai's rule on a whole curve).
    assert lr_finder.suggest(lrs, noisy, "valley")[1] == _fastai_valley(noisy)


def test_a_test_that_stopped_early_gets_fastais_valley_not_one_read_off_its_start():
    # 100 steps asked for, 50 recorded. Two valleys of 20 points: one in the noisy start (points
    # 5-24), one the real fall (25-44). fastai skips 100 // 10 = 10 points, which leaves the first
    # 15 long, so the fall is the longest; a tenth of the 50 recorded (5) would keep it whole, and
    # the tie goes to the first: an LR 41x lower.
    lrs = np.array([lr_finder.lr_at(i, 1e-7, 10.0, 100) for i in range(50)])
    losses = np.concatenate(
        [np.full(5, 2.3), np.linspace(1.2, 0.9, 20), np.linspace(2.9, 1.0, 20), np.linspace(1.05, 1.3, 5)]
    )
    _, i = lr_finder.suggest(lrs, losses, "valley", num_iter=100)
    assert i == _fastai_valley(losses, num_it=100) == 33  # 10 + (44 - 10 - 20) + 6 + 3
    _, early = lr_finder.suggest(lrs, losses, "valley", num_iter=50)
    assert early == _fastai_valley(losses) == 13  # 5 + (19 - 20) + 6 + 3
    assert lrs[i] / lrs[early] == pytest.approx(10 ** (8 * 20 / 99))  # 41x


def test_lr_find_reads_the_valley_by_the_steps_it_asked_for(tiny, runs, monkeypatch):
    asked = []
    real = lr_finder.suggest
    monkeypatch.setattr(lr_finder, "suggest", lambda *a, **k: asked.append((a, k)) or real(*a, **k))
    found = lr_finder.lr_find(_cfg(tiny, strategy="feature_extraction"), num_iter=30, end_lr=1e3, rule="valley")
    (((lrs, losses, rule, *rest), kw),) = asked
    assert rule == "valley" and (rest or [kw.get("num_iter")]) == [30] and found.num_iter == 30


def test_steepest_ignores_a_dip_in_the_diverging_tail():
    # A fall to a minimum, then divergence with one batch that drops the smoothed loss: Lightning's rule
    # would take the dip (the most negative gradient) for the steepest descent.
    lrs, losses, _ = _sigmoid_curve()
    losses = losses.copy()
    bottom = int(np.argmin(losses))
    tail = bottom + 20
    losses[tail] = losses[bottom] + 0.1  # a dip, still above the curve's minimum
    lightning = 10 + int(np.argmin(np.gradient(losses[10:-1])))
    assert lightning in (tail - 1, tail, tail + 1)
    _, i = lr_finder.suggest(lrs, losses, "steepest")
    assert i < bottom and abs(np.log10(lrs[i]) - (-3.0)) <= np.log10(lrs[1] / lrs[0])


def test_short_curves_still_get_a_suggestion():
    lrs, losses, _ = _sigmoid_curve(8, centre=-3)
    for rule in lr_finder.RULES:
        lr, i = lr_finder.suggest(lrs, losses, rule)
        assert 0 <= i < 8 and lr == lrs[i]
    assert lr_finder.suggest([1e-3], [2.0]) == (1e-3, 0)


# --- restoring state --------------------------------------------------------------------------------


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def _equal(a, b) -> bool:
    """Bitwise equality through dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_a_range_test_is_undone_bit_for_bit(tiny, runs):
    torch.manual_seed(0)
    d = run_data.load_data(_cfg(tiny, strategy="full"), CPU)
    bb = backbones.create_backbone("efficientnet_lite0", 4)
    model, bn = bb.model, bb.model.bn1  # BatchNorm statistics are part of what must come back
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # A caller's state worth keeping: Adam moments from one step, the model in eval mode, the stem frozen.
    x, y = next(iter(d.train))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    for p in bb.groups[0].parameters():
        p.requires_grad_(False)
    before = _state(model, optimizer)

    with lr_finder.restored(model, optimizer):
        model.train()  # everything trainable, BatchNorm updating its statistics
        for p in model.parameters():
            p.requires_grad_(True)
        test = lr_finder.range_test(
            model, d.train, optimizer, nn.CrossEntropyLoss(), start_lr=1e-5, end_lr=1e-1, num_iter=20, device=CPU
        )
        torch.rand(3)  # code in the block draws from the random stream (this model has no dropout)
        during = _state(model, optimizer)

    after = _state(model, optimizer)
    assert len(test.lrs) == 20 and test.reason == "completed"  # 20 steps over 3 batches: cycled
    # Without the restore everything had moved: the check below cannot pass vacuously.
    assert not torch.equal(during["weights"]["conv_stem.weight"], before["weights"]["conv_stem.weight"])
    assert not torch.equal(during["weights"]["bn1.running_mean"], before["weights"]["bn1.running_mean"])
    assert during["weights"]["bn1.num_batches_tracked"] == before["weights"]["bn1.num_batches_tracked"] + 20
    for key in ("optimizer", "requires_grad", "training", "rng"):
        assert not _equal(during[key], before[key]), key
    # With it, all of it is back, bit for bit.
    for key in before:
        assert _equal(after[key], before[key]), key
    assert all(p.grad is None for p in model.parameters()) and not bn.training
    # The optimizer still drives the model's own parameters (restored in place, not replaced).
    assert all(a is b for a, b in zip(optimizer.param_groups[0]["params"], model.parameters()))


def test_each_group_keeps_its_lr_ratio_and_the_lr_grows_exponentially():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[2].parameters()}], lr=1.0)
    batches = [(torch.randn(8, 6), torch.randint(3, (8,))) for _ in range(4)]
    seen = []
    test = lr_finder.range_test(
        net,
        batches,
        optimizer,
        nn.CrossEntropyLoss(),
        start_lr=1e-6,
        end_lr=1e-2,
        num_iter=9,
        device=CPU,
        multipliers=[0.1, 1.0],
        on_step=lambda i, lr, loss: seen.append([pg["lr"] for pg in optimizer.param_groups]),
    )
    assert test.reason == "completed" and len(test.lrs) == 9
    np.testing.assert_allclose(test.lrs, np.logspace(-6, -2, 9), rtol=1e-12)  # start and end exactly
    np.testing.assert_allclose(seen, np.array(test.lrs)[:, None] * [0.1, 1.0], rtol=1e-12)
    # The smoothed loss is fastai's bias-corrected average of the raw losses.
    avg = 0.0
    for i, raw in enumerate(test.raw_losses):
        avg = 0.98 * avg + 0.02 * raw
        assert test.losses[i] == pytest.approx(avg / (1 - 0.98 ** (i + 1)), rel=1e-12)


# --- the whole test for a run config ---------------------------------------------------------------


@pytest.mark.parametrize("strategy, cached", [("partial", True), ("full", False)])
def test_lr_find_is_repeatable_under_its_seed(strategy, cached, tiny, runs):
    cfg = _cfg(tiny, strategy=strategy, unfreeze=1, seed=3)
    first = lr_finder.lr_find(cfg, start_lr=1e-6, end_lr=1.0, num_iter=15)
    second = lr_finder.lr_find(cfg, start_lr=1e-6, end_lr=1.0, num_iter=15)  # partial: now a cache hit
    assert first.feature_cache is cached and second.feature_cache is cached
    assert first.lrs == second.lrs and first.raw_losses == second.raw_losses and first.losses == second.losses
    assert first.suggested_lr == second.suggested_lr and len(first.lrs) >= 10
    other = lr_finder.lr_find(cfg.model_copy(update={"seed": 4}), start_lr=1e-6, end_lr=1.0, num_iter=15)
    assert other.raw_losses != first.raw_losses  # the seed is what makes them equal
    # The strategy's own groups and LR ratios: partial trains stage7 (at 1/3) and the head; full all, head x10.
    n = len(backbones.get_spec(cfg.backbone).body_groups) + 1
    if strategy == "partial":
        assert first.multipliers == {"stage7": pytest.approx(1 / 3), "head": 1.0} and first.frozen_groups == n - 2
    else:
        assert len(first.multipliers) == n and first.multipliers["head"] == 10.0 and first.frozen_groups == 0
    out = json.loads(json.dumps(first.to_dict(), allow_nan=False))
    assert out["rule"] == "steepest" and "Lightning" in out["rule_description"]
    assert out["lrs"][out["suggestion_index"]] == out["suggested_lr"]
    assert len(out["lrs"]) == len(out["losses"]) == len(out["raw_losses"])


def test_a_diverging_loss_stops_the_test_and_says_so(tiny, runs):
    result = lr_finder.lr_find(_cfg(tiny), start_lr=1e-4, end_lr=1e4, num_iter=80)
    assert len(result.lrs) < 80 and "diverging" in result.stopped
    assert result.losses[-1] > 4 * min(result.losses)  # the step that diverged is on the curve
    assert all(loss <= 4 * min(result.losses[: i + 1]) for i, loss in enumerate(result.losses[:-1]))
    assert result.suggestion_index < len(result.lrs) - 1


def test_a_non_finite_loss_stops_the_test_and_is_left_off_the_curve():
    net = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    losses = iter([1.0, 0.9, 0.8, float("nan")] + [0.5] * 10)

    def loss_fn(logits, y):
        return logits.sum() * 0 + next(losses)

    test = lr_finder.range_test(
        net,
        [(torch.randn(2, 4), torch.tensor([0, 1]))],
        optimizer,
        loss_fn,
        start_lr=1e-3,
        end_lr=1.0,
        num_iter=10,
        device=CPU,
    )
    assert test.reason == "not_finite" and test.raw_losses == pytest.approx([1.0, 0.9, 0.8]) and "nan" in test.stopped
    assert all(math.isfinite(v) for v in test.losses)


def test_the_suggestion_agrees_with_a_grid_of_real_runs(animals, store):
    # Feature extraction on the demo animals (64 px): the suggested LR must be within 10x of the grid LR
    # that trains best. The grid spans 100x, and its lowest LR trains far worse (a real check).
    settings = dict(data=animals, strategy="feature_extraction", image_size=64, epochs=3)
    grid = {lr: train(store, lr=lr, **settings).best_val_acc for lr in (1e-4, 1e-3, 1e-2)}
    best = max(grid, key=grid.get)
    assert grid[best] - min(grid.values()) >= 0.2, grid
    found = lr_finder.lr_find(_cfg(**settings), num_iter=100)
    print(
        f"grid {grid}; suggested {found.suggested_lr:.3g} ({found.rule}); "
        f"valley {lr_finder.suggest(found.lrs, found.losses, 'valley')[0]:.3g}; {found.stopped}"
    )
    assert best / 10 <= found.suggested_lr <= best * 10, (grid, found.suggested_lr)


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (dict(start_lr=1.0, end_lr=1e-3), "--start-lr 1.0 must be below --end-lr 0.001"),
        (dict(start_lr=1e-3, end_lr=1e-3), "--start-lr 0.001 must be below --end-lr 0.001"),
        (dict(start_lr=0.0), "--start-lr 0.0 / --end-lr 10.0: learning rates must be > 0"),
        (dict(end_lr=-1.0), "--start-lr 1e-07 / --end-lr -1.0: learning rates must be > 0"),
        (dict(start_lr=float("nan")), "--start-lr nan / --end-lr 10.0: learning rates must be > 0"),
        (dict(num_iter=4), "--num-iter 4: the range test needs at least 5 steps"),
        (dict(rule="middle"), "--rule 'middle': unknown suggestion rule; choose one of: steepest, valley"),
    ],
)
def test_bad_arguments_say_which_setting_and_what_to_do(args, says, tiny, monkeypatch):
    # Refused before any data or model is loaded.
    monkeypatch.setattr(run_data, "load_data", lambda *a, **k: pytest.fail("loaded data for a refused range test"))
    with pytest.raises(UserError, match=f"^{re.escape(says)}"):
        lr_finder.lr_find(_cfg(tiny), **args)


def test_suggest_refuses_an_unknown_rule_and_a_curve_without_a_finite_loss():
    with pytest.raises(UserError, match="--rule 'min'"):
        lr_finder.suggest([1e-3, 1e-2], [1.0, 0.5], "min")
    with pytest.raises(UserError, match="no finite loss"):
        lr_finder.suggest([1e-3, 1e-2], [float("nan"), float("inf")])
