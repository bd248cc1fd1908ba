"""The LR range test ("LR finder"): which base LR to train a run's strategy at.

Leslie Smith's range test as fastai's `lr_find` and Lightning's `Tuner.lr_find` run it, under the
strategy's own plan for the first epoch: its frozen groups (fastai's freeze_to, in eval mode, on
the cached frozen features where train._fit would use them) and its per-group LR multipliers.
  1. `range_test`: step i of N trains one batch at base LR start * (end/start)^(i/(N-1)), every
     optimizer group at that base LR times its own multiplier; the loss is smoothed by fastai's
     bias-corrected moving average; it stops when the smoothed loss passes 4x its best so far
     (fastai and Lightning both use 4x) or a loss is not finite.
  2. `suggest`: a base LR read off the smoothed curve by a named rule (RULES): "steepest",
     PyTorch Lightning's `_LRFinder.suggestion`, or "valley", fastai's `valley`.
  3. `restored`: the model's state_dict (BatchNorm statistics included), the optimizer's state,
     every requires_grad and train/eval flag, gradients and the random streams come back bit for
     bit after the test, so a caller's model is left as it was.
  4. `lr_find(cfg)`: the whole test for a run config, deterministic under its seed, returning an
     `LRFind` whose `to_dict()` is the JSON a front end shows and plots (loss against LR, log axis).
The suggested LR is a base LR (the run's --lr): each group trains at it times its multiplier.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import RunConfig
from ..errors import UserError
from ..models.backbones import Backbone
from ..models.cuts import modes_kept
from ..training import loop, run_data, startup
from ..training.finetuning import Finetuning, sync_param_groups
from ..training.strategies import get_strategy

RULES = {
    "steepest": "steepest descent of the smoothed loss against log LR, before its lowest point (PyTorch "
    "Lightning's _LRFinder.suggestion, kept out of the diverging tail)",
    "valley": "halfway down the longest valley of the smoothed loss (fastai's valley)",
}
DEFAULT_RULE = "steepest"
MIN_STEPS = 5
# Lightning's suggestion skips the curve's first 10 points (a naive start) and its last (the jump).
SKIP_BEGIN, SKIP_END = 10, 1


# --- arguments ------------------------------------------------------------------------------


def check_arguments(start_lr: float, end_lr: float, num_iter: int, rule: str = DEFAULT_RULE) -> None:
    """Raise UserError, naming the setting, for a range the test cannot run."""
    if not (start_lr > 0 and end_lr > 0):  # also refuses NaN
        raise UserError(
            f"--start-lr {start_lr} / --end-lr {end_lr}: learning rates must be > 0 (the usual range is 1e-7 to 10)"
        )
    if start_lr >= end_lr:
        raise UserError(
            f"--start-lr {start_lr} must be below --end-lr {end_lr}: the range test raises the LR "
            f"from one to the other (e.g. 1e-7 to 10)"
        )
    if num_iter < MIN_STEPS:
        raise UserError(
            f"--num-iter {num_iter}: the range test needs at least {MIN_STEPS} steps; 100 (the "
            f"default) to a few hundred give a readable curve"
        )
    check_rule(rule)


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise UserError(f"--rule {rule!r}: unknown suggestion rule; choose one of: {', '.join(RULES)}")


def lr_at(step: int, start_lr: float, end_lr: float, num_iter: int) -> float:
    """The base LR of step `step` (0-based): start_lr on the first step, end_lr on step num_iter-1."""
    return start_lr * (end_lr / start_lr) ** (step / (num_iter - 1))


# --- the range test ---------------------------------------------------------------------------


@dataclass
class RangeTest:
    """A range test's curve: the base LR, raw loss and smoothed loss of every step it recorded."""

    lrs: list[float] = field(default_factory=list)
    raw_losses: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    reason: str = "completed"  # completed, diverged or not_finite
    stopped: str = ""  # the same, as a sentence


def _cycle(batches: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches again and again (a test may outlast an epoch), without empty ones."""
    while True:
        seen = False
        for x, y in batches:
            if len(y):  # a batch whose every image was unreadable has no labels left
                seen = True
                yield x, y
        if not seen:
            raise UserError(
                "the range test found no training batch: the training split has no readable image; check the dataset"
            )


def range_test(
    net: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    start_lr: float,
    end_lr: float,
    num_iter: int,
    device: torch.device,
    beta: float = 0.98,
    diverge: float = 4.0,
    amp: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    multipliers: Sequence[float] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> RangeTest:
    """Train `net` one batch per step at exponentially growing LRs; the curve, and why it stopped.

    Each optimizer group k trains at the step's base LR x multipliers[k] (None: 1 for every
    group), so the ratios a strategy sets between groups hold. `batches` is cycled if shorter
    than `num_iter`. Nothing is restored here: wrap the call in `restored` for that. `on_step`
    hears (step, base LR, smoothed loss) after each recorded step.
    """
    check_arguments(start_lr, end_lr, num_iter)
    if not 0 <= beta < 1 or not diverge > 1:
        raise UserError(f"beta {beta} must be in [0, 1) and diverge {diverge} above 1 (fastai: 0.98 and 4)")
    mults = list(multipliers) if multipliers is not None else [1.0] * len(optimizer.param_groups)
    if len(mults) != len(optimizer.param_groups):
        raise ValueError(f"{len(mults)} LR multipliers for {len(optimizer.param_groups)} optimizer groups")
    out, avg, best = RangeTest(), 0.0, math.inf
    stream = _cycle(batches)
    for step in range(num_iter):
        lr = lr_at(step, start_lr, end_lr, num_iter)
        for pg, m in zip(optimizer.param_groups, mults):
            pg["lr"] = lr * m
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(net(x), y)
        raw = loss.item()  # the curve needs every step's value: one read-back per step
        if not math.isfinite(raw):  # nothing to learn from this step, and no point taking it
            out.reason = "not_finite"
            out.stopped = f"stopped at step {step + 1} of {num_iter} (LR {lr:.3g}): the loss was {raw}"
            break
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # fastai's smoothing: an exponential moving average, divided by 1 - beta^(i+1) so that the
        # first steps are not pulled towards the average's zero start.
        avg = beta * avg + (1 - beta) * raw
        smooth = avg / (1 - beta ** (step + 1))
        out.lrs.append(lr)
        out.raw_losses.append(raw)
        out.losses.append(smooth)
        if on_step is not None:
            on_step(step, lr, smooth)
        best = min(best, smooth)
        if smooth > diverge * best:
            out.reason = "diverged"
            out.stopped = (
                f"stopped at step {step + 1} of {num_iter} (LR {lr:.3g}): the smoothed loss "
                f"{smooth:.3g} passed {diverge:g}x its best {best:.3g} (diverging)"
            )
            break
    else:
        out.stopped = f"ran all {num_iter} steps up to LR {end_lr:.3g} without diverging"
    return out


# --- the suggestion ---------------------------------------------------------------------------


def suggest(
    lrs: Sequence[float], losses: Sequence[float], rule: str = DEFAULT_RULE, num_iter: int | None = None
) -> tuple[float, int]:
    """The suggested base LR and its index in `lrs`, read off a smoothed curve by `rule` (RULES).

    `num_iter`: the steps the test was asked for (None: as many as it recorded). A test that
    stopped early recorded fewer; "valley" trims the curve by the steps asked for, as fastai does.
    """
    check_rule(rule)
    lr, loss = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(lr) != len(loss):
        raise ValueError(f"{len(lr)} LRs but {len(loss)} losses")
    if not np.isfinite(loss).any():
        raise UserError("the range test recorded no finite loss: lower --start-lr, or check the data")
    index = _steepest(lr, loss) if rule == "steepest" else _valley(loss, len(loss) if num_iter is None else num_iter)
    return float(lr[index]), index


def _steepest(lrs: np.ndarray, losses: np.ndarray) -> int:
    """PyTorch Lightning's `_LRFinder.suggestion`: skip the first 10 and the last point, drop non-finite
    losses, and take the most negative gradient of the loss; here only up to the loss's minimum.

    The gradient is taken against log10(LR): on the range test's geometric grid that is
    numpy.gradient of the losses by index (as Lightning computed it until 2025) up to a constant,
    i.e. the slope the log-axis plot shows. (Lightning later passed the LRs themselves as the
    spacing, which weights small LRs by 1/LR; its issue #21141 asks for log10(LR) instead.)
    The one departure from Lightning: points past the smoothed loss's minimum are the diverging
    tail, where a dip between two exploding batches reads as the steepest "descent" (seen on the
    demo data); they are not candidates. A curve too short for all this is read whole.
    """
    idx = np.arange(len(losses))
    keep = idx[SKIP_BEGIN : len(idx) - SKIP_END]
    keep = keep[np.isfinite(losses[keep])]
    if len(keep) < 2:
        keep = idx[np.isfinite(losses)]
    if len(keep) < 2:
        return int(keep[0])
    grads = np.gradient(losses[keep], np.log10(lrs[keep]))
    falling = keep <= keep[np.argmin(losses[keep])]
    if falling.sum() >= 2:  # the gradient is still taken on the whole kept curve: no new edge at the minimum
        keep, grads = keep[falling], grads[falling]
    return int(keep[np.argmin(grads)])


def _valley(losses: np.ndarray, num_iter: int) -> int:
    """fastai's `valley`, on the curve trimmed as fastai's lr_find trims it: `recorded[num_it//10:-5]`,
    a tenth of the steps ASKED FOR off the start (not of those recorded: a test that stops early,
    the usual case with an end LR of 10, loses as many leading points as one that ran to the end)
    and the last 5.

    The longest valley is the longest strictly decreasing run of losses (a subsequence, so noise
    does not break it); its index is start + int(L/3) + int(L/6), about halfway down it, with
    fastai's start one point before the valley's first (clamped at the curve's start). Like fastai,
    the curve ends at its first non-finite loss. A curve too short to trim is read whole.
    """
    n = len(losses)
    finite = np.isfinite(losses)
    end = int(np.argmin(finite)) if not finite.all() else n
    lo, hi = num_iter // 10, min(end, n - 5)
    if hi - lo < 2:
        lo, hi = 0, end
    seg = losses[lo:hi]
    if not len(seg):  # the very first loss was not finite: the first finite point is all there is
        return int(np.argmax(finite))
    # lds[i]: the length of the longest strictly decreasing subsequence ending at point i.
    lds = np.ones(len(seg), dtype=int)
    last = 0
    for i in range(1, len(seg)):
        higher = lds[:i][seg[:i] > seg[i]]
        if len(higher):
            lds[i] = higher.max() + 1
        if lds[i] > lds[last]:
            last = i
    start = last - int(lds[last])
    third = (last - start) / 3
    return lo + max(0, start + int(third) + int(third / 2))


# --- restoring what the test trained ------------------------------------------------------------


@contextlib.contextmanager
def restored(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
    """On the way out, everything a range test changes back bit for bit, whatever happened inside.

    The model's state_dict (parameters and buffers: BatchNorm running statistics and
    num_batches_tracked), each parameter's requires_grad and gradient, every module's train/eval
    flag, the optimizer's state_dict (moments, step counts, each group's LRs), and the random
    streams (torch's CPU and CUDA generators, Python's and numpy's).
    """
    # Copies, not references: state_dict()s hand out the live tensors the test will update in place.
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    opt_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    rng = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        random.getstate(),
        np.random.get_state(),
    )
    try:
        with modes_kept(model):
            yield
    finally:
        with torch.no_grad():
            model.load_state_dict(weights)  # copies into the existing tensors: the optimizer keeps its params
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        if optimizer is not None and opt_state is not None:  # both or neither
            optimizer.load_state_dict(opt_state)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
        random.setstate(rng[2])
        np.random.set_state(rng[3])


# --- the whole test for a run config ---------------------------------------------------------------


@dataclass
class LRFind:
    """A range test's result: the suggested base LR, the curve it was read from, and how it ran."""

    suggested_lr: float
    suggestion_index: int  # into lrs and losses
    rule: str  # a key of RULES
    lrs: list[float]
    losses: list[float]  # smoothed: what the suggestion reads and the plot shows
    raw_losses: list[float]
    stopped: str  # why the test ended, as a sentence
    start_lr: float
    end_lr: float
    num_iter: int
    strategy: str
    backbone: str
    multipliers: dict[str, float]  # trainable group -> its LR as a multiple of the base LR
    frozen_groups: int  # fastai's freeze_to(n) in the first epoch
    feature_cache: bool  # trained on cached frozen features (else on images)
    seconds: float

    @property
    def rule_description(self) -> str:
        return RULES[self.rule]

    def to_dict(self) -> dict:
        """The JSON a front end prints or plots."""
        return {**asdict(self), "rule_description": self.rule_description}


def lr_find(
    cfg: RunConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    rule: str = DEFAULT_RULE,
    show: bool = False,
) -> LRFind:
    """The range test for run config `cfg`, as its first epoch would train (the training loop's own
    data, model, plan, optimizer and loss); deterministic under cfg.seed.

    cfg.lr is not used (the test sweeps it); --compile is not applied (it would cost more than
    the test); a strategy that unfreezes later is tested in its first phase.
    """
    check_arguments(start_lr, end_lr, num_iter, rule)
    started = time.perf_counter()
    loop.seed_everything(cfg.seed)
    # 1. The run's data and model, its plan for epoch 0, and the optimizer over the trainable groups.
    device = startup.pick_device(cfg.device)
    d = run_data.load_data(cfg, device)
    bb = run_data.load_model(cfg, len(d.classes), device)
    amp, scaler = startup.amp_for(device)
    plan = Finetuning(get_strategy(cfg.strategy), cfg.strategy_params(), bb.groups, cfg.epochs)
    plan.plan(0)
    multipliers = plan.multipliers()
    optimizer = sync_param_groups(None, cfg, bb.groups, plan.planned_boundary, multipliers)
    of_group = {g.name: m for g, m in zip(bb.groups[plan.planned_boundary :], multipliers)}
    per_optimizer_group = [of_group[pg["group"]] for pg in optimizer.param_groups]  # two a layer group
    # 2. What trains: the layers above the boundary on cached frozen features, where train._fit would.
    net, batches, cached = _what_trains(cfg, bb, d, plan, device, amp)
    # 3. The test, with everything it trains put back afterwards.
    with (
        tqdm(
            total=num_iter, unit="batch", desc="LR range test", disable=not show, file=sys.stderr, dynamic_ncols=True
        ) as bar,
        restored(bb.model, optimizer),
    ):
        plan.train_mode(bb.model)
        test = range_test(
            net,
            batches,
            optimizer,
            run_data.training_loss(cfg, d, device)[0],
            start_lr=start_lr,
            end_lr=end_lr,
            num_iter=num_iter,
            device=device,
            amp=amp,
            scaler=scaler,
            multipliers=per_optimizer_group,
            on_step=lambda *_: bar.update(1),
        )
    lr, index = suggest(test.lrs, test.losses, rule, num_iter)
    return LRFind(
        suggested_lr=lr,
        suggestion_index=index,
        rule=rule,
        lrs=test.lrs,
        losses=test.losses,
        raw_losses=test.raw_losses,
        stopped=test.stopped,
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        strategy=cfg.strategy,
        backbone=cfg.backbone,
        multipliers=of_group,
        frozen_groups=plan.planned_boundary,
        feature_cache=cached,
        seconds=round(time.perf_counter() - started, 3),
    )


def _what_trains(
    cfg: RunConfig, bb: Backbone, d: run_data.RunData, plan: Finetuning, device: torch.device, amp: torch.dtype | None
) -> tuple[nn.Module, Iterable, bool]:
    """(net, batches, cached): train._fit's choice for epoch 0, and whether it is the feature cache."""
    feats = run_data.frozen_features(cfg, bb, d, device, amp).at(plan.planned_boundary, 0, plan.phase.end)
    if feats is None:
        return bb.model, d.train, False
    return feats.cut.rest, feats.train.for_epoch(0), True
