"""LoRA adapters (Hu et al., 2021) beside a backbone's layers, through peft, and merged back.

`add_lora(bb, rank, alpha, image_size, in_channels)` injects them with peft's
`inject_adapter_in_model`: the model is changed in place (no PeftModel around it), so its layer
groups, head path and Grad-CAM layer keep their paths; `backbones.regroup` then lays it out again,
the adapters inside the groups of the layers they adapt. The layers adapted (`lora_targets`):
  - nn.Linear and nn.Conv2d layers outside the new head (which trains in full), matched by their
    full names (a regular expression, which peft matches whole);
  - that the model's forward really calls (hooked on a blank image): torchvision's
    MultiheadAttention and Swin's attention compute with their projections' weights directly, so
    an adapter there would be silently skipped;
  - with the plain forward of their class (a subclass with its own, timm's Conv2dSame and its
    dynamic "same" padding, would not line up with the adapter peft builds beside it); for a
    convolution, ungrouped with zero padding (peft cannot merge a grouped one: depthwise
    convolutions stay frozen);
  - in a transformer (a model with an attention module), its Linear layers only: attention
    qkv/proj and the MLP's fc layers, not the patch embedding; in a CNN, and in a hybrid whose
    attention and MLP are 1x1 convolutions (CoAtNet), convolutions and Linear layers alike.
Each adapter adds B @ A * alpha / r to its layer's output, B starting at zero: training starts
from exactly the pretrained model.

Merged back: `plain_state_dict(model)` is the plain architecture's state_dict with every adapter's
update added to its layer's weight (peft's `get_delta_weight`, what `merge_and_unload` adds).
best.pt holds it, so predict, export (and its parity) and Grad-CAM read the plain architecture,
and a LoRA run's best.pt loads into `create_backbone(..., weights="none")` like any run's.
`load_plain_state_dict` puts such weights back into a model with adapters (zeroed), and
`effective_parameters(group)` gives a group's weights as its forward pass uses them (layer drift).

peft imports transformers (seconds): it is imported inside `add_lora` alone, so only a LoRA run
pays for it. Everything else here reads peft's layers by their documented attributes
(`base_layer`, `lora_A`, `lora_B`, `get_delta_weight`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import UserError
from .backbones import Backbone, LayerGroup, regroup

__all__ = [
    "add_lora",
    "effective_parameters",
    "is_adapter_parameter",
    "load_plain_state_dict",
    "lora_layers",
    "lora_size",
    "lora_targets",
    "plain_state_dict",
]

ADAPTER = "default"  # the adapter's name inside each layer (inject_adapter_in_model's default)
PREFIX = "lora_"  # peft's prefix of every LoRA parameter's module (lora_A, lora_B, ...)


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter's name (dotted, as named_parameters gives it) is a LoRA adapter's."""
    return any(part.startswith(PREFIX) for part in name.split("."))


def _adaptable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return type(m).forward is nn.Linear.forward
    if isinstance(m, nn.Conv2d):
        plain = type(m).forward is nn.Conv2d.forward and type(m)._conv_forward is nn.Conv2d._conv_forward
        return plain and m.groups == 1 and m.padding_mode == "zeros"
    return False


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__


def _called(model: nn.Module, modules: dict[str, nn.Module], example: torch.Tensor) -> set[str]:
    """The names of `modules` that `model`'s forward calls on `example` (in eval mode, no gradient;
    every module's mode restored after)."""
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda *_, name=name: called.add(name)) for name, m in modules.items()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in modes:
            m.training = training
    return called


def lora_targets(model: nn.Module, head_path: str, example: torch.Tensor) -> list[str]:
    """The full names of the layers LoRA adapts (module docstring), in the model's order."""
    candidates = {
        name: m
        for name, m in model.named_modules()
        if name and _adaptable(m) and name != head_path and not name.startswith(head_path + ".")
    }
    called = {n: m for n, m in candidates.items() if n in _called(model, candidates, example)}
    # A transformer's projections are its Linear layers; a hybrid whose attention and MLP are 1x1
    # convolutions (CoAtNet, MaxViT's conv stages) has none, and takes adapters on its convolutions.
    transformer = any(_is_attention(m) for m in model.modules())
    linear_only = transformer and any(isinstance(m, nn.Linear) for m in called.values())
    return [n for n, m in called.items() if isinstance(m, nn.Linear) or not linear_only]


def lora_size(model: nn.Module, head_path: str, example: torch.Tensor, rank: int) -> int:
    """The parameters rank-`rank` adapters would add to `model`, counted without adding them: A (r x
    fan-in: a Linear's inputs, a convolution's input channels x kernel) and B (outputs x r) per layer."""
    total = 0
    for name in lora_targets(model, head_path, example):
        m = model.get_submodule(name)
        if isinstance(m, nn.Linear):
            total += rank * (m.in_features + m.out_features)
        elif isinstance(m, nn.Conv2d):
            total += rank * m.in_channels * math.prod(m.kernel_size) + m.out_channels * rank
    return total


def add_lora(bb: Backbone, rank: int, alpha: float, image_size: int, in_channels: int = 3) -> list[str]:
    """Inject rank-`rank` adapters scaled by alpha / rank into `bb`'s model (in place) and lay it
    out again into its groups; returns the names of the layers adapted."""
    # peft imports transformers (seconds): only a LoRA run pays for it, not every run and standby.
    from peft import LoraConfig, inject_adapter_in_model

    device = next(bb.model.parameters()).device
    example = torch.zeros(1, in_channels, image_size, image_size, device=device)
    targets = lora_targets(bb.model, bb.spec.head_path, example)
    if not targets:
        raise UserError(
            f"--strategy lora: {bb.spec.name} has no Linear or ungrouped Conv2d layer below its head that "
            f"its forward pass calls, so there is nowhere to put an adapter; choose another strategy"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft declares int; alpha / r is all it computes
        lora_dropout=0.0,
        bias="none",
        target_modules="|".join(re.escape(t) for t in targets),  # full names; peft matches the whole name
    )
    inject_adapter_in_model(config, bb.model)
    regroup(bb)
    return targets


def _is_lora(m: nn.Module) -> bool:
    return hasattr(m, "base_layer") and hasattr(m, "lora_A") and hasattr(m, "get_delta_weight")


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{full name: peft's LoRA layer} of every adapted layer of `model` ({} for a plain model)."""
    return {name: m for name, m in model.named_modules() if _is_lora(m)}


def _delta(layer: nn.Module) -> torch.Tensor:
    """The update the layer's adapter adds to its base layer's weight (B @ A * alpha / r)."""
    assert not getattr(layer, "merged", False), "adapters are never merged into the model that trains"
    return layer.get_delta_weight(ADAPTER)  # type: ignore[operator]


@torch.no_grad()
def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of the plain architecture: each adapted layer's weight with its adapter's update
    added, the adapters left out (`model.state_dict()` itself for a model without adapters)."""
    state = model.state_dict()
    layers = lora_layers(model)
    if not layers:
        return state
    out = {}
    for key, value in state.items():
        if is_adapter_parameter(key):
            continue
        path, _, leaf = key.rpartition(".")
        owner = path.removesuffix(".base_layer")
        out[f"{owner}.{leaf}" if owner in layers and path.endswith(".base_layer") else key] = value
    for name, layer in layers.items():
        base = state[f"{name}.base_layer.weight"]
        out[f"{name}.weight"] = base + _delta(layer).to(base.dtype)
    return out


@torch.no_grad()
def load_plain_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a plain architecture's state_dict (`plain_state_dict`'s) into `model`: into its adapted
    layers' base weights, with every adapter zeroed (B = 0), so the model computes exactly `state`'s
    function. A model without adapters simply loads it."""
    layers = lora_layers(model)
    if not layers:
        model.load_state_dict(state)
        return
    mapped = {}
    for key, value in state.items():
        path, _, leaf = key.rpartition(".")
        mapped[f"{path}.base_layer.{leaf}" if path in layers else key] = value
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not is_adapter_parameter(k) for k in missing):
        raise UserError(
            f"weights do not fit the model: {len(missing)} missing, {len(unexpected)} unexpected tensors "
            f"(first: {[*missing, *unexpected][0]})"
        )
    for layer in layers.values():
        for b in layer.lora_B.values():  # type: ignore[operator]
            b.weight.zero_()


def _adapter_parameters(layers: Iterable[nn.Module]) -> set[int]:
    return {id(p) for m in layers for name, p in m.named_parameters() if is_adapter_parameter(name)}


@torch.no_grad()
def effective_parameters(group: LayerGroup) -> list[torch.Tensor]:
    """A group's weights as its forward pass uses them: an adapted layer's weight with its adapter's
    update added, the adapters themselves left out; `group.parameters()` in a group without any."""
    layers = [m for part in group.modules() for m in part.modules() if _is_lora(m)]
    if not layers:
        return list(group.parameters())
    adapters = _adapter_parameters(layers)
    adapted = {id(m.base_layer.weight): m for m in layers}  # type: ignore[union-attr]
    out: list[torch.Tensor] = []
    for p in group.parameters():
        if id(p) in adapters:
            continue
        layer = adapted.get(id(p))
        out.append(p + _delta(layer).to(p.dtype) if layer is not None else p)
    return out
