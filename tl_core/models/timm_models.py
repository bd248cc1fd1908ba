"""timm's models as backbones: `timm/<name>` (a pretrained tag allowed: `timm/convnext_tiny.fb_in22k`).

One generic adapter (families.Timm) answers for every architecture timm builds, from timm's own
metadata; no model is listed by hand:
  1. built by `timm.create_model(name, num_classes=0)`: no classifier; TransferLab's new head goes
     where the pretrained config's `classifier` says, reading `head_hidden_size` features.
     Architectures built for one input size (`fixed_input_size`: ViTs, MaxViT...) are built at the
     run's image size (`img_size`);
  2. weights through timm's own loader (`pretrained_cfg_overlay={"state_dict": ...}`): the
     architecture's checkpoint filter resamples position embeddings to the built size, and a
     classifier the file holds is dropped; everything else must fit, strictly;
  3. layer groups from timm's `group_matcher(coarse=True)` (stem, then stages or blocks), laid out
     as the forward pass runs them. A trace of `forward_features` records the modules it calls
     (a module whose parameters all fall in one group is one unit). The stem stage is everything
     before the first unit of the second group (forward_features itself, stopped there); then each
     group's units in call order; `forward_head` is the tail. The trace checks that each unit is
     fed exactly its predecessor's output (the same tensor), so chaining the stages is the forward.
     Parameters timm leaves unmatched join the group whose stage runs them; those only the head
     runs (a head norm) join the last group;
  4. Grad-CAM's layer: the last unit of forward_features with a spatial map (NCHW or NHWC), or for
     a ViT with one class token the last block's input norm (as the torchvision ViT's).
An architecture whose forward cannot be laid out so (a block fed anything but its predecessor's
output, as ConViT's class token inserted midway; a pair of classifiers, as LeViT's distilled
head) is refused with the reason, as soon as its spec is asked for (a UserError).

Imports torch and timm: families.py reads it only for a `timm/` backbone.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from timm.models import get_pretrained_cfg, group_parameters, load_state_dict
from torch import nn

from ..errors import UserError

PREFIX = "timm/"
_ATTR = "tl_image_size"  # the image size a model was built for, kept on it (the trace runs at it)


def timm_name(backbone: str) -> str:
    """`timm/convnext_tiny.fb_in22k` -> `convnext_tiny.fb_in22k`."""
    return backbone.removeprefix(PREFIX)


def check_name(name: str) -> None:
    """A UserError for a name timm does not build, or a pretrained tag it does not have."""
    if not timm.is_model(name):
        near = difflib.get_close_matches(name.partition(".")[0], timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(PREFIX + n for n in near)}? " if near else ""
        raise UserError(
            f"unknown timm model {name!r} (--backbone {PREFIX}{name}); {hint}list timm's pretrained "
            f"models with `python -m tl_core backbones --search TEXT`"
        )
    try:
        get_pretrained_cfg(name)
    except RuntimeError:
        arch, _, tag = name.partition(".")
        tags = [n.partition(".")[2] for n in timm.list_pretrained(arch + ".*")]
        raise UserError(
            f"timm has no pretrained tag {tag!r} for {arch} (--backbone {PREFIX}{name}); its tags: "
            f"{', '.join(tags) or 'none'}"
        ) from None


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of `name` (its default tag's when no tag is given)."""
    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def native_size(cfg: dict[str, Any]) -> int:
    return int((cfg.get("input_size") or (3, 224, 224))[-1])


def build(
    name: str,
    image_size: int | None = None,
    state: dict[str, torch.Tensor] | None = None,
    origin: str = "",
    classifier: bool = False,
) -> nn.Module:
    """`name` built by timm without a classifier (`classifier`: with the weights' own), at
    `image_size` where the architecture is built for one size, with `state` loaded by timm's loader."""
    check_name(name)
    cfg = pretrained_cfg(name)
    size = image_size or native_size(cfg)
    kwargs: dict[str, Any] = {"img_size": size} if cfg.get("fixed_input_size") and size != native_size(cfg) else {}
    try:
        model = timm.create_model(
            name,
            pretrained=state is not None,
            num_classes=int(cfg.get("num_classes") or 0) if classifier else 0,
            pretrained_cfg_overlay={"state_dict": state} if state is not None else None,
            **kwargs,
        )
    except TypeError as e:  # an architecture that takes no img_size
        raise UserError(
            f"{PREFIX}{name} cannot be built for {size} px images ({e}); use --image-size {native_size(cfg)}"
        ) from None
    except (RuntimeError, KeyError, ValueError, AssertionError) as e:
        if state is None:
            raise UserError(f"{PREFIX}{name} cannot be built at {size} px: {e}") from None
        first = str(e).strip().splitlines()[0][:300]
        raise UserError(
            f"{origin} does not fit {PREFIX}{name} ({first}); pass weights saved from the same architecture"
        ) from None
    setattr(model, _ATTR, size)
    return model


def head_path(name: str) -> str:
    """Where the classifier sits (the pretrained config's `classifier`): the new head goes there."""
    where = pretrained_cfg(name).get("classifier") or "head"
    if not isinstance(where, str):
        raise UserError(
            f"{PREFIX}{name} has {len(where)} classifiers ({', '.join(where)}), as a distilled model does; "
            f"TransferLab puts one new head on a backbone: choose an architecture with one classifier"
        )
    return where


def head_features(model: nn.Module) -> int:
    """How many features the head reads (after timm's own pooling and pre-logits)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)  # type: ignore[arg-type]


# --- the layout: stages from timm's group_matcher and a trace of forward_features -----------------


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


def _trace(model: nn.Module, units: list[Unit], size: int) -> tuple[list[tuple[Unit, tuple, dict, Any]], Any]:
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
        with torch.no_grad():
            out = model.forward_features(x)  # type: ignore[operator]
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return calls, out


def _refuse(model: nn.Module, why: str) -> UserError:
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    return UserError(
        f"{PREFIX}{name} cannot be split into layer groups: {why}. TransferLab takes timm models whose "
        f"forward runs a stem, then its stages or blocks one after another"
    )


def lay_out(model: nn.Module, head: str) -> Laid:
    """The stages of a built timm model (module docstring, 3 and 4)."""
    group_of = group_parameters(model, model.group_matcher(coarse=True), reverse=True)  # type: ignore[operator]
    units, bare = _units(model, head, group_of)
    calls, features = _trace(model, units, int(getattr(model, _ATTR)))
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
    current = -1
    for i in range(first, len(calls)):
        unit, args, kwargs, out = calls[i]
        if i > first and (len(args) != 1 or kwargs or args[0] is not calls[i - 1][3]):
            raise _refuse(model, f"{unit.name} is not fed exactly {calls[i - 1][0].name}'s output")
        if not isinstance(out, torch.Tensor):
            raise _refuse(model, f"{unit.name} returns {type(out).__name__}, not a tensor")
        g = current if unit.group is None else unit.group
        if g < current:
            raise _refuse(model, f"its forward runs {unit.name} (group {g}) after group {current}")
        if g > current or not groups:
            groups.append([])
            current = g
        groups[-1].append(unit)
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
        stages=[(names[0], parts[0], [stem])]
        + [(n, ps, [u.module for u in g]) for n, ps, g in zip(names[1:], parts[1:], groups)],
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
    if getattr(model, "num_prefix_tokens", 0) == 1 and blocks is not None and hasattr(blocks[-1], "norm1"):
        return "blocks.-1.norm1", "tokens"
    return "", "its features are not a spatial map with one class token before the patches"


# --- what the torch-free spec needs ---------------------------------------------------------------


@dataclass(frozen=True)
class Described:
    """What families.py files as a `timm/` backbone's spec."""

    groups: tuple[str, ...]
    head_path: str
    first_conv: str
    cam_layer: str
    cam_layout: str  # or, with no cam_layer, why there is none
    min_image_size: int
    native_size: int
    family: str  # timm's module of the architecture, e.g. "convnext"
    classifier_classes: int  # the pretrained weights' classes (0: the weights have no classifier)
    transformer_blocks: bool
    params: int


def skeleton(name: str, image_size: int | None = None) -> nn.Module:
    """The architecture without weights, on the meta device where it builds there."""
    try:
        with torch.device("meta"):
            return build(name, image_size)
    except (NotImplementedError, UserError):  # an architecture that computes with real tensors as it builds
        return build(name, image_size)


@functools.lru_cache(maxsize=256)
def describe(name: str) -> Described:
    """Everything the spec needs, from timm's config and a skeleton's layout (UserError if refused)."""
    check_name(name)
    cfg = pretrained_cfg(name)
    head = head_path(name)
    model = skeleton(name)
    laid = lay_out(model, head)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    first_conv = cfg.get("first_conv") or ""
    module = type(model).__module__.rpartition(".")[2]
    return Described(
        groups=tuple(laid.names),
        head_path=head,
        first_conv=first_conv if isinstance(first_conv, str) else "",
        cam_layer=laid.cam_layer,
        cam_layout=laid.cam_layout,
        min_image_size=max(32, int(patch[0]) if patch else 0),
        native_size=native_size(cfg),
        family=module,
        classifier_classes=int(cfg.get("num_classes") or 0),
        transformer_blocks=laid.transformer_blocks,
        params=sum(p.numel() for p in model.parameters()),
    )


@functools.lru_cache(maxsize=256)
def check_image_size(name: str, size: int) -> str | None:
    """Why `name` cannot run on `size` px images, or None: built for that size on the meta device
    and its forward traced (a window or patch grid that does not divide it fails here)."""
    if size == describe(name).native_size:
        return None
    try:
        model = skeleton(name, size)
        _trace(model, [], size)
    except (UserError, RuntimeError, AssertionError, ValueError) as e:
        return str(e).strip().splitlines()[0][:200] or type(e).__name__
    return None


def pretrained_models() -> list[str]:
    """Every model timm has pretrained weights for, with its tag."""
    return timm.list_models(pretrained=True)


# --- pretrained weights: the Hugging Face cache ---------------------------------------------------

_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader looks for, in its order


def _hub(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(Hugging Face repository, file names) of `name`'s pretrained weights, None without any."""
    cfg = pretrained_cfg(name)
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    return repo, ((cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _FILES)


def cached_file(name: str) -> str | None:
    """The file of `name`'s pretrained weights in the Hugging Face cache, None when not there."""
    hub = _hub(name)
    if hub is None:
        return None
    repo, files = hub
    for filename in files:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def availability(name: str) -> str:
    """'cached', 'needs download', or 'no weights' (no pretrained tag); downloads nothing."""
    check_name(name)
    if _hub(name) is None:
        return "no weights"
    return "cached" if cached_file(name) else "needs download"


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """`name`'s pretrained weights from the Hugging Face cache, downloaded first when not there
    (weights.check_obtainable refused, before the run was queued, what cannot be)."""
    path = cached_file(name)
    if path is None:
        hub = _hub(name)
        if hub is None:
            raise UserError(f"timm has no pretrained weights for {PREFIX}{name}; pass --weights PATH or none")
        repo, files = hub
        try:
            path = hf_hub_download(repo, files[0])
        except Exception as e:  # no network, a repository gone: the hub raises many kinds
            raise UserError(
                f"the pretrained weights for {PREFIX}{name} are not in the Hugging Face cache and could not be "
                f"downloaded ({type(e).__name__}); connect once, or pass --weights PATH to a local state_dict"
            ) from None
    return load_state_dict(path)


def data_config(name: str) -> dict[str, Any]:
    """The preprocessing `name`'s pretrained weights expect (timm.data.resolve_data_config)."""
    return timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg(name))


def weights_identity(name: str) -> dict[str, str]:
    """What the pretrained weights are: the tag and where they come from (a key of the feature cache)."""
    cfg = pretrained_cfg(name)
    return {"timm": f"{cfg.get('architecture')}.{cfg.get('tag')}", "hf_hub_id": str(cfg.get("hf_hub_id") or "")}


# --- the zoo: what there is to choose from ------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _families() -> dict[str, str]:
    """Each architecture's timm module (its family: convnext, vision_transformer...)."""
    return {arch: module for module in timm.list_modules() for arch in timm.list_models(module=module)}


def zoo(search: str = "", params: bool = False) -> list[dict[str, Any]]:
    """timm's pretrained models whose name holds every word of `search`: backbone, family, native
    size, weights here or not; with `params`, the parameter count (each built on the meta device)."""
    words = search.lower().split()
    families = _families()
    rows = []
    for name in timm.list_models(pretrained=True):
        if not all(w in name for w in words):
            continue
        arch = name.partition(".")[0]
        row: dict[str, Any] = {
            "backbone": PREFIX + name,
            "family": families.get(arch, ""),
            "native_size": native_size(pretrained_cfg(name)),
            "weights": "cached" if cached_file(name) else "needs download",
        }
        if params:
            row["params"] = sum(p.numel() for p in skeleton(name).parameters())
        rows.append(row)
    return rows
