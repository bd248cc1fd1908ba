"""Cutting a model at a freeze boundary: `frozen` (images -> activations) and `rest` (-> logits).

A boundary b is fastai's `freeze_to(b)`: groups 0..b-1 frozen (finetuning.py). The head
boundary is generic: the activations are the head's input, for every backbone (the model run
with its head swapped for nn.Identity; dropout between body and head stays in `rest`). A
deeper boundary runs the family's stages (families.py: one per layer group, in forward order)
below it, and those above it then the tail. Every cut is checked against the whole model's
output (eval mode) before it is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from .backbones import Backbone
from .channels import input_channels


class NoCut(Exception):
    """This model cannot be cut at this boundary (the message says why)."""


# --- cutting a model at a freeze boundary -----------------------------------------------------


class Rest(nn.Module):
    """The trainable part of a cut model: activations in, logits out; shares its layers with the model.

    train()/eval() switch the whole model, because part of a forward may read the model's own
    flag (timm's head dropout reads `model.training`); the loop's set_train_mode then puts the
    frozen groups back in eval mode every epoch.
    """

    _model: nn.Module  # set in __init__, past nn.Module's registration

    def __init__(self, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        object.__setattr__(self, "_model", model)  # not a submodule: no second copy in state_dict
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def train(self, mode: bool = True) -> Rest:
        self._model.train(mode)
        return self


@dataclass
class Cut:
    boundary: int  # groups 0..boundary-1 are frozen
    name: str  # "head input", or the first trainable group's name
    frozen: Callable[[torch.Tensor], torch.Tensor]
    rest: Rest
    shape: tuple[int, ...] = ()  # one image's activations


@contextlib.contextmanager
def _without_head(bb: Backbone) -> Iterator[None]:
    head = bb.head
    bb.model.set_submodule(bb.spec.head_path, nn.Identity())
    try:
        yield
    finally:
        bb.model.set_submodule(bb.spec.head_path, head)


def _head_cut(bb: Backbone) -> Cut:
    """Generic: the head's input. Dropout between the body and the head stays in `rest`."""
    model = bb.model
    grouped = {id(m) for g in bb.groups for part in g.modules() for m in part.modules()}
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0 and id(m) not in grouped]
    p = (
        float(getattr(model, "drop_rate", 0.0) or 0.0) if bb.spec.source in ("package", "timm") else 0.0
    )  # timm, functional
    if len(drops) + (p > 0) > 1:
        raise NoCut("several dropout layers sit outside the layer groups")

    def frozen(x):
        with _without_head(bb):
            return model(x)

    def rest(x):
        for d in drops:
            x = d(x)
        if p:
            x = nnf.dropout(x, p, training=model.training)
        return bb.head(x)

    return Cut(len(bb.groups) - 1, "head input", frozen, Rest(model, rest, [*drops, bb.head]))


def _chain_cut(bb: Backbone, boundary: int) -> Cut:
    """A deeper boundary: the family's stages below it, then those above and the tail."""
    stages, tail = bb.layout.stages, bb.layout.tail
    below, above = stages[:boundary], stages[boundary:]

    def frozen(x):
        for stage in below:
            x = stage(x)
        return x

    def rest(x):
        for stage in above:
            x = stage(x)
        return tail(x)

    trainable = [bb.head, *(p for s in above for p in s.parts if isinstance(p, nn.Module))]
    return Cut(boundary, f"{bb.groups[boundary].name} input", frozen, Rest(bb.model, rest, trainable))


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval mode on the way out."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def cut_at(bb: Backbone, boundary: int, image_size: int, device: torch.device) -> Cut:
    """The model cut below group `boundary`, checked: rest(frozen(x)) == model(x) in eval mode."""
    if not 0 < boundary < len(bb.groups):
        raise NoCut("nothing is frozen" if boundary <= 0 else "every group is frozen")
    cut = _head_cut(bb) if boundary == len(bb.groups) - 1 else _chain_cut(bb, boundary)
    channels = input_channels(bb.model, bb.spec)  # 3, or --in-channels
    x = torch.randn(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    with modes_kept(bb.model), torch.no_grad():
        bb.model.eval()
        want, acts = bb.model(x), cut.frozen(x)
        got = cut.rest(acts)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise NoCut(f"the cut at {cut.name} does not reproduce the model's output")
    cut.shape = tuple(acts.shape[1:])
    return cut
