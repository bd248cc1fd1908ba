"""Memory: whether a run fits on its GPU (the probe step), and the levers for large backbones
at high resolution (activation checkpointing, gradient accumulation).

The probe step (`probe_step`, on a GPU, before a run decodes or caches anything): one forward
and backward pass of the whole model at the run's batch size and image size, with the widest
set of groups its strategy will ever train, measured with PyTorch's allocator statistics and then
undone (weights, gradients, BatchNorm statistics, random streams and the frozen flags as they
were). What the optimizer's state will add at its first step is counted from the trainable
parameters (AdamW: two moments; SGD: one momentum buffer). A run predicted not to fit in what is
free on its GPU is refused at once, with a batch size that would fit (`MemoryProbe.advice`), instead
of running out of memory minutes in. Runs trained on cached frozen features, and phases with
fewer groups trainable, need less than the probe measures: it is an upper bound.

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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from ..models.backbones import LayerGroup
from .finetuning import freeze_to

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
                assert m.num_batches_tracked is not None  # the count `tracked` was copied from
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
            # nn.Module's __setattr__ takes any value; torch's stubs say Tensor | Module.
            module._tl_checkpointed = True  # type: ignore[assignment]
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


# --- will it fit: the probe step ------------------------------------------------------------

HEADROOM = 0.92  # of the memory available: the allocator's fragmentation, validation's batches, cuDNN's workspaces


@dataclass
class MemoryProbe:
    """One training step at the run's batch size, measured on its GPU (MiB)."""

    batch_size: int
    before_mb: float  # allocated before the step: weights, buffers
    peak_mb: float  # the step's peak: + activations, gradients, workspaces
    grads_mb: float  # the trainable parameters' gradients (in the peak)
    optimizer_mb: float  # what the optimizer's state adds at its first step (not in the peak)
    available_mb: float  # free on the GPU, plus what this process's allocator holds
    total_mb: float
    seconds: float  # the step's time: CUDA's and cuDNN's start-up for this shape included

    @property
    def predicted_mb(self) -> float:
        return self.peak_mb + self.optimizer_mb

    def fits(self) -> bool:
        return self.predicted_mb <= HEADROOM * self.available_mb

    def batch_that_fits(self) -> int:
        """The largest batch size predicted to fit: what does not grow with the batch, plus the
        step's activations per image."""
        fixed = self.before_mb + self.grads_mb + self.optimizer_mb
        per_image = max(self.peak_mb - self.before_mb - self.grads_mb, 1e-3) / self.batch_size
        return max(0, int((HEADROOM * self.available_mb - fixed) // per_image))

    def advice(self, device_name: str) -> str:
        b = self.batch_that_fits()
        lower = (
            f"lower --batch-size to {b} or less (with --accumulate {-(-self.batch_size // b)} for the same "
            f"effective batch)"
            if b >= 1
            else "the model alone does not fit at this image size: lower --image-size or choose a smaller backbone"
        )
        return (
            f"this run would not fit in GPU memory: a training step at batch size {self.batch_size} needs about "
            f"{self.predicted_mb / 1024:.1f} GiB (its probe step peaked at {self.peak_mb / 1024:.1f} GiB, plus "
            f"{self.optimizer_mb / 1024:.1f} GiB of optimizer state), and {device_name} has "
            f"{self.available_mb / 1024:.1f} GiB free of {self.total_mb / 1024:.1f} GiB; {lower}, or turn "
            f"--checkpointing on, then start it again"
        )

    def summary(self) -> dict:
        return {
            **{k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()},
            "predicted_mb": round(self.predicted_mb, 1),
        }


def ran_out(batch_size: int, device_name: str, available: int, total: int) -> UserError:
    """What to say when the probe step itself runs out of memory (bytes free and in all)."""
    return UserError(
        f"this run would not fit in GPU memory: one training step at batch size {batch_size} ran out "
        f"of it on {device_name} ({available / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB); lower "
        f"--batch-size (try {max(1, batch_size // 2)}, with --accumulate 2 for the same effective batch), "
        f"or turn --checkpointing on, then start it again"
    )


def optimizer_state_mb(params: list[nn.Parameter], optimizer: str) -> float:
    """MiB of state the optimizer allocates at its first step: AdamW keeps two moments per
    parameter, SGD with momentum one buffer (in the parameters' dtype)."""
    per = 2 if optimizer == "adamw" else 1
    return per * sum(p.numel() * p.element_size() for p in params) / 2**20


def probe_step(
    model: nn.Module,
    groups: Sequence[LayerGroup],
    boundary: int,
    shape: tuple[int, ...],
    loss_fn: nn.Module,
    amp,
    optimizer: str,
    device: torch.device,
    channels_last: bool = False,
    forwards: int = 1,
    trains: str = "all",
) -> MemoryProbe:
    """One forward and backward pass of `model` on a batch of `shape` with groups[boundary:]
    trainable, measured, then undone. `forwards`: the batches a step sends through the model (2
    with domain adaptation: the target domain's batch too), probed as one batch that many times
    larger. `trains`: which parameters of those groups train (Strategy.trains: a parameter-efficient
    strategy keeps no gradient or optimizer state for the rest). On a CPU only the time is measured
    (memory: zeros)."""
    cuda = device.type == "cuda"
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    params = {name for name, _ in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k not in params}
    freeze_to(groups, boundary, trains)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads_mb = sum(p.numel() * p.element_size() for p in trainable) / 2**20
    x = torch.zeros((shape[0] * forwards, *shape[1:]), device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.zeros(len(x), dtype=torch.long, device=device)
    if cuda:
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        available = free + torch.cuda.memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device] if cuda else []):
            model.train()
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = loss_fn(model(x), y)
            loss.backward()
            if cuda:
                torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        raise ran_out(shape[0], torch.cuda.get_device_name(device), available, total) from None
    finally:
        seconds = time.perf_counter() - t
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            state = model.state_dict()
            for k, v in buffers.items():
                state[k].copy_(v)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)
    measured = (
        dict(
            before_mb=before / 2**20,
            peak_mb=torch.cuda.max_memory_allocated(device) / 2**20,
            available_mb=available / 2**20,
            total_mb=total / 2**20,
        )
        if cuda
        else dict(before_mb=0.0, peak_mb=0.0, available_mb=0.0, total_mb=0.0)
    )
    return MemoryProbe(
        batch_size=shape[0],
        grads_mb=grads_mb,
        optimizer_mb=optimizer_state_mb(trainable, optimizer),
        seconds=seconds,
        **measured,
    )
