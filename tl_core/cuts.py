"""Cutting a model at a freeze boundary: `frozen` (images -> activations) and `rest` (-> logits).

The head boundary is generic: the activations are the head's input, for every backbone (the
model run with its head swapped for nn.Identity; dropout between body and head stays in
`rest`). A deeper boundary needs the family's stages in forward order, one per layer group,
then the tail (pooling, classifier): CHAINS, for the families whose groups are a plain chain.
Every cut is checked against the whole model's output (eval mode) before it is used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as nnf
from torch import nn

from .backbones import Backbone


class NoCut(Exception):
    """This model cannot be cut at this boundary (the message says why)."""


# --- cutting a model at a freeze boundary -----------------------------------------------------


class Rest(nn.Module):
    """The trainable part of a cut model: activations in, logits out; shares its layers with the model.

    train()/eval() switch the whole model, because part of a forward may read the model's own
    flag (timm's head dropout reads `model.training`); the loop's set_train_mode then puts the
    frozen groups back in eval mode every epoch.
    """

    def __init__(self, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        object.__setattr__(self, "_model", model)  # not a submodule: no second copy in state_dict
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def train(self, mode: bool = True) -> "Rest":
        self._model.train(mode)
        return self


@dataclass
class Cut:
    boundary: int  # groups 0..boundary-1 are frozen
    name: str  # "head input", or the first trainable group's name
    frozen: Callable[[torch.Tensor], torch.Tensor]
    rest: Rest
    shape: tuple[int, ...] = ()  # one image's activations


Stages = tuple[list[Callable], Callable]  # one stage per body group, in forward order; then the tail
CHAINS: dict[str, Callable[[nn.Module, Backbone], Stages]] = {}


def chain(family: str):
    """Register a family's stages: running them in order, then the tail, is the model's forward."""

    def deco(fn):
        CHAINS[family] = fn
        return fn

    return deco


def _seq(*parts) -> nn.Sequential:
    return nn.Sequential(*parts)


@chain("resnet")
def _resnet(m, bb):
    stem = _seq(m.conv1, m.bn1, m.relu, m.maxpool)
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4], lambda x: m.fc(torch.flatten(m.avgpool(x), 1))


@chain("efficientnet")
def _efficientnet(m, bb):
    f = m.features
    return [*f[:7], _seq(f[7], f[8])], lambda x: m.classifier(torch.flatten(m.avgpool(x), 1))


@chain("efficientnet_lite")
def _efficientnet_lite(m, bb):
    b = m.blocks
    return [_seq(m.conv_stem, m.bn1), *b[:-1], _seq(b[-1], m.conv_head, m.bn2)], m.forward_head


@chain("mobilenet")
def _mobilenet(m, bb):
    body = [g for g in bb.groups[:-1] if g.name != "fc"]
    stages: list[Callable] = [_seq(*g.parts) for g in body]
    if len(body) < len(bb.groups) - 1:  # MobileNetV3: a pretrained 576->1024 layer before the head
        stages.append(_seq(m.avgpool, nn.Flatten(1), *list(m.classifier)[:-1]))
        return stages, lambda x: m.classifier[-1](x)
    return stages, lambda x: m.classifier(torch.flatten(nnf.adaptive_avg_pool2d(x, (1, 1)), 1))


@chain("regnet")
def _regnet(m, bb):
    t = m.trunk_output
    return [m.stem, t.block1, t.block2, t.block3, t.block4], lambda x: m.fc(torch.flatten(m.avgpool(x), 1))


@chain("convnext")
def _convnext(m, bb):
    f = m.features
    stages = [f[0], f[1], _seq(f[2], f[3]), _seq(f[4], f[5]), _seq(f[6], f[7], m.avgpool, m.classifier[0])]
    return stages, lambda x: m.classifier[2](m.classifier[1](x))


@chain("vgg")
def _vgg(m, bb):
    blocks = [_seq(*g.parts) for g in bb.groups[:5]]
    fc = _seq(m.avgpool, nn.Flatten(1), *list(m.classifier)[:-1])
    return [*blocks, fc], lambda x: m.classifier[-1](x)


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
    p = float(getattr(model, "drop_rate", 0.0) or 0.0) if bb.spec.source == "package" else 0.0  # timm, functional
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
    make = CHAINS.get(bb.spec.family)
    if make is None:
        raise NoCut(f"no stage-by-stage runner for the {bb.spec.family} family; only the head boundary is cached")
    stages, tail = make(bb.model, bb)
    if len(stages) != len(bb.groups) - 1:
        raise NoCut(f"{bb.spec.family}: {len(stages)} stages for {len(bb.groups) - 1} layer groups")
    below, above = stages[:boundary], stages[boundary:]

    def frozen(x):
        for stage in below:
            x = stage(x)
        return x

    def rest(x):
        for stage in above:
            x = stage(x)
        return tail(x)

    return Cut(boundary, f"{bb.groups[boundary].name} input", frozen, Rest(bb.model, rest, [bb.head, *[
        s for s in above if isinstance(s, nn.Module)]]))


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
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    with modes_kept(bb.model), torch.no_grad():
        bb.model.eval()
        want, acts = bb.model(x), cut.frozen(x)
        got = cut.rest(acts)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise NoCut(f"the cut at {cut.name} does not reproduce the model's output")
    cut.shape = tuple(acts.shape[1:])
    return cut
