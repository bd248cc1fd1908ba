"""Memory levers for large backbones at high resolution: activation checkpointing.

(Gradient accumulation, the other lever, is the loop's: `--accumulate K` steps the optimizer
once every K batches, with each batch's loss divided by K, so the gradient is that of a batch K
times larger. BatchNorm still normalises over each batch of --batch-size, so a network with
BatchNorm does not see exactly what one large batch would show it.)

Activation checkpointing (Chen et al. 2016, "Training deep nets with sublinear memory cost";
PyTorch's torch.utils.checkpoint): the body's groups keep only their inputs in the forward pass
and recompute their activations in the backward pass: less memory, about one more forward of
compute (`activation_memory` measures what it saves on a batch). A recomputed forward would update BatchNorm's running statistics a second time; here
the recomputation runs with their momentum at 0 (and their batch count kept), so they move once
per batch, as without it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import LayerGroup

_NORMS = (nn.modules.batchnorm._BatchNorm,)
_ACTIVE = [True]  # checkpointed modules recompute while this holds (off: to measure what they save)


@contextlib.contextmanager
def _statistics_held(module: nn.Module):
    """BatchNorm layers in `module` leave their running statistics as they are (momentum 0)."""
    norms = [m for m in module.modules() if isinstance(m, _NORMS)]
    kept = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, kept):
            m.momentum = momentum
            if tracked is not None:  # the count a cumulative average (momentum None) divides by
                m.num_batches_tracked.copy_(tracked)


def checkpoint_activations(groups: Sequence[LayerGroup]) -> int:
    """Checkpoint every module of the body's groups (all but the head, last). Returns how many
    modules now recompute their activations in the backward pass."""
    count = 0
    for group in groups[:-1]:
        for module in group.modules():
            if getattr(module, "_tl_checkpointed", False):
                continue
            forward = module.forward

            def context(module=module):
                return contextlib.nullcontext(), _statistics_held(module)

            @functools.wraps(forward)
            def checkpointed(*args, forward=forward, context=context, **kwargs):
                if not torch.is_grad_enabled() or not _ACTIVE[0]:
                    return forward(*args, **kwargs)
                return checkpoint(forward, *args, use_reentrant=False, context_fn=context, **kwargs)

            module.forward = checkpointed
            module._tl_checkpointed = True
            count += 1
    return count


def _saved_mb(net: nn.Module, x: torch.Tensor) -> float:
    """MiB of activations one forward pass keeps for its backward pass (parameters not counted)."""
    params = {p.data_ptr() for p in net.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            kept[t.data_ptr()] = max(kept.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return sum(kept.values()) / 2**20


def activation_memory(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The activations a training batch keeps for the backward pass, with activation
    checkpointing and without it, measured on one batch `x` (the model's RNG, BatchNorm statistics
    and weights are left as they were)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _statistics_held(net), torch.enable_grad():
        _ACTIVE[0] = False
        try:
            without = _saved_mb(net, x)
        finally:
            _ACTIVE[0] = True
        with_ = _saved_mb(net, x)
    return {"without_checkpointing": round(without, 3), "with_checkpointing": round(with_, 3)}
