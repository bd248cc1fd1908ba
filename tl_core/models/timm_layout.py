"""A timm model's layer groups, laid out as its forward pass runs them (timm_models.py builds it).

timm's `group_matcher(coarse=True)` says which parameters form a group (the stem, then stages or
blocks); a trace of `forward_features` says in which order the forward runs them. A module whose
parameters all fall in one group is one unit. The stem stage is everything before the first unit of
the second group (forward_features itself, stopped there); then each group's units in call order,
each fed the previous one's output (the same tensor: the trace checks it) and any keyword arguments
the forward gave it, when they are constants of the built model (EVA's rotary table, a None mask);
`forward_head` is the tail. So chaining the stages is the model's forward, and cuts.py can cut it at
any group. Parameters timm leaves unmatched join the group whose stage runs them; those only the
head runs (a head norm) join the last group. Grad-CAM's layer comes from the same trace: the last
unit with a spatial map (NCHW or NHWC), or a ViT's last block's input norm. A forward that is not
such a chain is refused with the reason (a UserError).

Imports torch and timm: read only for a `timm/` backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models import group_parameters
from torch import nn

from ..errors import UserError

IMAGE_SIZE = "tl_image_size"  # the image size a model was built for, kept on it (the trace runs at it)


@dataclass
class Unit:
    name: str
    module: nn.Module
    group: int | None  # timm's group of its parameters; None: it has none


@dataclass
class Laid:
    """A timm model's layout, plainly (families.Timm makes Stages of it)."""

    stages: list[tuple[str, list, list[Callable]]]  # (name, parts, what runs it), stem first
    no_decay: list[list[nn.Parameter]]  # per stage: parameters timm's no_weight_decay() names
    tail: Callable
    cam_layer: str
    cam_layout: str
    transformer_blocks: bool  # every group past the stem is a transformer block (it has `attn`)
    names: list[str] = field(default_factory=list)


class _Stop(Exception):
    def __init__(self, x: torch.Tensor):
        self.x = x


def _not_constant(kwargs: dict[str, Any]) -> str:
    """What in a block's keyword arguments is not a constant of the built model ("" if nothing is):
    None, numbers, and tensors no trainable parameter computed (a rotary position table)."""
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.requires_grad:
            return f"{key}= computed from trainable parameters in its forward"
        if not (value is None or isinstance(value, (bool, int, float, str, torch.Tensor))):
            return f"{key}= of type {type(value).__name__}"
    return ""


class _Call:
    """A unit called as forward_features calls it: its input, and the keyword arguments the forward
    passed, constants for the size the model was built at (EVA's rotary table, a None mask), each
    tensor moved to the input's device once."""

    def __init__(self, module: nn.Module, kwargs: dict[str, Any]):
        self.module = module
        self.kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        self._placed: dict[torch.device, dict[str, Any]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._placed:
            self._placed[x.device] = {
                k: v.to(x.device) if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()
            }
        return self.module(x, **self._placed[x.device])


def _units(model: nn.Module, head: str, group_of: dict[str, int]) -> tuple[list[Unit], list[tuple[str, nn.Parameter]]]:
    """The modules that own one group's parameters each (largest first), and parameters that sit
    directly on a module spanning groups (a ViT's class token and position embedding)."""
    units: list[Unit] = []
    bare: list[tuple[str, nn.Parameter]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        path = prefix.rstrip(".")
        if path == head:
            return
        names = [prefix + n for n, _ in module.named_parameters() if not (prefix + n).startswith(head + ".")]
        shared = [n for n in names if n not in group_of]  # named_parameters lists a shared one once
        if shared:
            raise _refuse(model, f"{shared[0]} is shared with another block")
        groups = {group_of[n] for n in names}
        children = list(module.named_children())
        holds_head = path != "" and head.startswith(prefix)
        if path and not holds_head and (len(groups) <= 1 or not children):
            units.append(Unit(path, module, groups.pop() if groups else None))
            return
        bare.extend((prefix + n, p) for n, p in module.named_parameters(recurse=False))
        for n, child in children:
            walk(prefix + n + ".", child)

    walk("", model)
    return units, bare


def trace(model: nn.Module, units: list[Unit], size: int) -> tuple[list[tuple[Unit, tuple, dict, Any]], Any]:
    """Each unit's calls during forward_features, in order, with their inputs and output."""
    calls: list[tuple[Unit, tuple, dict, Any]] = []
    hooks = [
        u.module.register_forward_hook(
            lambda _m, args, kwargs, out, u=u: calls.append((u, args, kwargs, out)), with_kwargs=True
        )
        for u in units
    ]
    p = next(model.parameters())
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    conv = model.get_submodule(first) if isinstance(first, str) and first else None
    channels = conv.in_channels if isinstance(conv, nn.Conv2d) else 3  # 3, or what channels.py rebuilt it for
    x = torch.zeros(1, channels, size, size, device=p.device, dtype=p.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():  # so a block's keyword tensors say whether trainable parameters made them
            out = model.forward_features(x)  # type: ignore[operator]
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return calls, out


def _refuse(model: nn.Module, why: str) -> UserError:
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    return UserError(
        f"timm/{name} cannot be split into layer groups: {why}. TransferLab takes timm models whose "
        f"forward runs a stem, then its stages or blocks one after another"
    )


def lay_out(model: nn.Module, head: str) -> Laid:
    """The stages of a built timm model (module docstring)."""
    if not hasattr(model, "group_matcher"):
        raise _refuse(model, "timm gives it no group_matcher to say its layer groups")
    group_of = group_parameters(model, model.group_matcher(coarse=True), reverse=True)  # type: ignore[operator]
    missing = [n for n, _ in model.named_parameters() if n not in group_of]
    if missing:
        raise _refuse(model, f"its group_matcher places no group for {missing[0]}")
    units, bare = _units(model, head, group_of)
    calls, features = trace(model, units, int(getattr(model, IMAGE_SIZE)))
    called = [c[0] for c in calls]
    if len({id(u) for u in called}) != len(called):
        twice = next(u.name for i, u in enumerate(called) if any(v is u for v in called[:i]))
        raise _refuse(model, f"its forward runs {twice} more than once")
    ids = sorted({u.group for u in called if u.group is not None})
    if len(ids) < 2:
        raise _refuse(model, "timm's group_matcher gives it a single group")
    first = next(i for i, u in enumerate(called) if u.group == ids[1])
    # 1. the body: groups in call order, never going back; each unit fed its predecessor's output
    groups: list[list[Unit]] = []
    runs: list[list[Callable]] = []  # each group's units as the forward calls them
    current = -1
    for i in range(first, len(calls)):
        unit, args, kwargs, out = calls[i]
        if len(args) != 1:
            raise _refuse(model, f"{unit.name} takes {len(args)} inputs")
        if i > first and args[0] is not calls[i - 1][3]:
            raise _refuse(model, f"{unit.name} is not fed exactly {calls[i - 1][0].name}'s output")
        if why := _not_constant(kwargs):
            raise _refuse(model, f"{unit.name} is also given {why}")
        if not isinstance(out, torch.Tensor):
            raise _refuse(model, f"{unit.name} returns {type(out).__name__}, not a tensor")
        g = current if unit.group is None else unit.group
        if g < current:
            raise _refuse(model, f"its forward runs {unit.name} (group {g}) after group {current}")
        if g > current or not groups:
            groups.append([])
            runs.append([])
            current = g
        groups[-1].append(unit)
        runs[-1].append(_Call(unit.module, kwargs) if kwargs else unit.module)
    if features is not calls[-1][3]:
        raise _refuse(model, f"forward_features does more after {calls[-1][0].name}")
    stem_units = [u for u in called[:first] if u.group is not None]
    group_ids = [
        next(u.group for u in g if u.group is not None) if any(u.group is not None for u in g) else -1 for g in groups
    ]
    # 2. parts: units by where the forward runs them; bare parameters by timm's group; the rest last
    parts: list[list] = [[u.module for u in stem_units]] + [
        [u.module for u in g if u.group is not None] for g in groups
    ]
    ran = {id(u) for u in called}
    parts[-1].extend(u.module for u in units if id(u) not in ran and u.group is not None)
    for name, p in bare:
        g = group_of[name]
        k = 0 if g == ids[0] else (1 + group_ids.index(g) if g in group_ids else len(parts) - 1)
        parts[k].append(p)
    # 3. the stem runs forward_features until the first body unit's input
    entry = called[first].module

    def stem(x: torch.Tensor) -> torch.Tensor:
        def stop(_m, args):
            raise _Stop(args[0])

        handle = entry.register_forward_pre_hook(stop)
        try:
            model.forward_features(x)  # type: ignore[operator]
        except _Stop as s:
            return s.x
        finally:
            handle.remove()
        raise AssertionError("forward_features never reached its first block")

    names = ["stem"] + [_group_name([u.name for u in g if u.group is not None] or [g[0].name]) for g in groups]
    no_decay_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()  # type: ignore[operator]
    owner = {id(p): n for n, p in model.named_parameters()}
    no_decay = [[p for p in _params(ps) if owner.get(id(p)) in no_decay_names] for ps in parts]
    cam_layer, cam_layout = _cam(model, calls)
    return Laid(
        stages=[(names[0], parts[0], [stem])] + [(n, ps, run) for n, ps, run in zip(names[1:], parts[1:], runs)],
        no_decay=no_decay,
        tail=model.forward_head,  # type: ignore[arg-type]
        cam_layer=cam_layer,
        cam_layout=cam_layout,
        transformer_blocks=all(hasattr(g[0].module, "attn") for g in groups),
        names=names,
    )


def _params(parts: list) -> list[nn.Parameter]:
    out: list[nn.Parameter] = []
    for p in parts:
        out.extend([p] if isinstance(p, nn.Parameter) else p.parameters())
    return out


def _group_name(units: list[str]) -> str:
    return "+".join(units) if len(units) <= 2 else f"{units[0]}..{units[-1]}"


def _cam(model: nn.Module, calls: list[tuple[Unit, tuple, dict, Any]]) -> tuple[str, str]:
    """Grad-CAM's layer and its output's layout; ("", reason) where there is none."""
    width = getattr(model, "num_features", None)
    for unit, _, _, out in reversed(calls):
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            if out.shape[1] == width:
                return unit.name, "nchw"
            if out.shape[-1] == width:
                return unit.name, "nhwc"
    blocks = getattr(model, "blocks", None)
    if blocks is not None and len(blocks) and hasattr(blocks[-1], "norm1"):
        prefix = int(getattr(model, "num_prefix_tokens", 0))  # class and register tokens before the patches
        return "blocks.-1.norm1", "tokens" if prefix == 1 else f"tokens:{prefix}"
    return "", "its features are neither a spatial map nor a transformer's tokens"
