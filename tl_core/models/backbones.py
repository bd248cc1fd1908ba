"""Backbones: a registered architecture, its weights and a new head, split into layer groups.

`create_backbone(name, num_classes, ...)` is the only door (as timm's `create_model`). What a
backbone is comes from its family's adapter (families.py): how to build it, its layer groups
with their names and stages, where its classifier sits. Its weights come from weights.py. The
result holds the model with a new head (Linear, or an MLP) and its ordered layer groups, stem
first and the new head last: every parameter is in exactly one group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from ..errors import UserError
from . import channels
from . import weights as W
from .families import BackboneSpec, Layout, Stage, Timm, get_spec, list_backbones
from .weights import Preprocessing, preprocessing

__all__ = [
    "Backbone",
    "LayerGroup",
    "Preprocessing",
    "create_backbone",
    "describe",
    "get_spec",
    "imagenet_model",
    "list_backbones",
    "make_head",
    "preprocessing",
    "regroup",
    "skeleton",
]

Part = nn.Module | nn.Parameter


@dataclass
class LayerGroup:
    """A named slice of the network that is frozen or trained as one (fastai's layer group)."""

    name: str
    parts: list[Part]
    no_decay: list[nn.Parameter] = field(default_factory=list)  # beside 1-D and bare ones (finetuning.decay_split)

    def parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for p in self.parts:
            params.extend([p] if isinstance(p, nn.Parameter) else p.parameters())
        return params

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Each parameter with its name inside its part ("" for a bare parameter part, ViT's class token)."""
        named: list[tuple[str, nn.Parameter]] = []
        for p in self.parts:
            named.extend([("", p)] if isinstance(p, nn.Parameter) else p.named_parameters())
        return named

    def modules(self) -> list[nn.Module]:
        return [p for p in self.parts if isinstance(p, nn.Module)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class Backbone:
    spec: BackboneSpec
    model: nn.Module
    groups: list[LayerGroup]  # body groups then the head, last
    layout: Layout  # the body's stages in forward order, then the tail (families.py)
    preprocessing: Preprocessing
    weights: str  # what was loaded: "imagenet", a file path, or "none"
    image_size: int | None = None  # the size it was built for (timm's fixed-size models); None: any

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.spec.head_path)


def _load_body(spec: BackboneSpec, model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load every body weight strictly; head weights are optional (the head is replaced)."""
    own = model.state_dict()
    head = spec.head_path + "."
    missing = [k for k in own if k not in state and not k.startswith(head)]
    unexpected = [k for k in state if k not in own and not k.startswith(head)]
    wrong = [k for k in state if k in own and not k.startswith(head) and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"{origin} does not fit {spec.name}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong)} mis-shaped tensors (first: {(missing + unexpected + wrong)[0]}); "
            f"pass weights saved from the same architecture"
        )
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)}, strict=False)


def imagenet_model(name: str, image_size: int | None = None) -> nn.Module:
    """The pretrained network with its own classifier (ImageNet's 1000 classes, or what a timm
    tag was trained on), in eval mode; `image_size`: for timm's fixed-size models."""
    spec = get_spec(name)
    if spec.source == "timm":
        if not spec.imagenet_head:
            raise UserError(f"the pretrained weights of {name} have no classifier of their own")
        state = W.imagenet_state_dict(spec)
        timm = cast(Timm, spec.adapter)
        return timm.build(name, image_size, state, f"the pretrained weights for {name}", True).eval()
    model = spec.adapter.build(name)
    model.load_state_dict(W.imagenet_state_dict(spec, model))
    return model.eval()


def make_head(
    in_features: int, num_classes: int, kind: str = "linear", hidden: int = 512, dropout: float = 0.2
) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
    raise UserError(f"unknown head {kind!r}; choose linear or mlp")


def _groups(stages: list[Stage], head: nn.Module) -> list[LayerGroup]:
    return [LayerGroup(s.name, list(s.parts), list(s.no_decay)) for s in stages] + [LayerGroup("head", [head])]


def regroup(bb: Backbone) -> None:
    """Lay `bb`'s model out again into its groups, after modules inside it were replaced (LoRA's
    adapters wrap layers, adapters.py): a layout holds the modules it was made from."""
    bb.layout = bb.spec.adapter.layout(bb.model)
    bb.groups = _groups(bb.layout.stages, bb.head)


def create_backbone(
    name: str,
    num_classes: int,
    weights: str = "imagenet",
    head: str = "linear",
    hidden: int = 512,
    dropout: float = 0.2,
    device: str | torch.device | None = None,
    in_channels: int = 3,
    image_size: int | None = None,
) -> Backbone:
    """Build `name` with a new `num_classes` head.

    weights: "imagenet" (the pretrained default: offline package, torch cache or download),
    "none" (random init, the scratch baseline) or a path to a state_dict.
    in_channels: the image's channels; other than 3, the first convolution is rebuilt from the
    loaded RGB filters (channels.py).
    image_size: the images' size, for architectures built for one size (timm's ViTs: their position
    embeddings are resampled to it as weights load); None: the weights' native size. Others ignore it.
    """
    spec = get_spec(name)
    placed = torch.device(device) if device is not None else contextlib.nullcontext()
    loaded = "none" if weights == "none" else "imagenet" if weights == "imagenet" else os.path.abspath(weights)
    if spec.source == "timm":
        # timm's own loader fits its checkpoints: position embeddings resampled, a classifier dropped
        state = None
        if weights != "none":
            state = W.imagenet_state_dict(spec) if weights == "imagenet" else W.file_state_dict(weights)
        origin = f"the pretrained weights for {name}" if weights == "imagenet" else f"--weights {weights}"
        with placed:
            model = cast(Timm, spec.adapter).build(name, image_size, state, origin, False)
    else:
        with placed:
            model = spec.adapter.build(name)
        if weights == "imagenet":
            _load_body(spec, model, W.imagenet_state_dict(spec, model), f"ImageNet weights for {name}")
        elif weights != "none":
            _load_body(spec, model, W.file_state_dict(weights), f"--weights {weights}")
    channels.adapt_first_conv(model, spec, in_channels)
    features = spec.adapter.head_features(model, spec)
    new_head = make_head(features, num_classes, head, hidden, dropout).to(next(model.parameters()).device)
    model.set_submodule(spec.head_path, new_head)
    layout = spec.adapter.layout(model)
    built = image_size if spec.source == "timm" else None
    return Backbone(spec, model, _groups(layout.stages, new_head), layout, preprocessing(name), loaded, built)


def skeleton(name: str, num_classes: int = 10, head: str = "linear", hidden: int = 512) -> Backbone:
    """The backbone's structure without weights, built on the meta device where its builder allows."""
    try:
        return create_backbone(name, num_classes, weights="none", head=head, hidden=hidden, device="meta")
    except NotImplementedError:  # a builder that computes with tensors (RegNet) needs real ones
        return create_backbone(name, num_classes, weights="none", head=head, hidden=hidden)


def describe(name: str, num_classes: int = 10) -> dict:
    """Sizes of a backbone without loading weights."""
    bb = skeleton(name, num_classes)
    return {
        "name": name,
        "params": sum(p.numel() for p in bb.model.parameters()),
        "groups": [(g.name, g.num_params()) for g in bb.groups],
        "imagenet_top1": W.imagenet_top1(name),
        "weights": W.availability(name),
    }
