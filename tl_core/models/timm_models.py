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
     as the forward pass runs them, with Grad-CAM's layer (timm_layout.py);
  4. the spec families.py files for it (`describe`), image sizes it cannot run (`check_image_size`),
     its pretrained weights in the Hugging Face cache, and the zoo searched by name (`zoo`).
An architecture that cannot be laid out (a block fed anything but its predecessor's output, as
ConViT's class token inserted midway) or that has two classifiers (LeViT's distilled pair) is
refused with the reason, as soon as its spec is asked for (a UserError).

Imports torch and timm: families.py reads it only for a `timm/` backbone.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any

import timm
import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from timm.models import get_pretrained_cfg, load_state_dict
from torch import nn

from ..errors import UserError
from .timm_layout import IMAGE_SIZE, lay_out, trace

PREFIX = "timm/"


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
    setattr(model, IMAGE_SIZE, size)
    return model


def head_path(name: str) -> str:
    """Where the classifier sits (the pretrained config's `classifier`): the new head goes there."""
    where = pretrained_cfg(name).get("classifier") or "head"
    if not isinstance(where, str):
        raise UserError(
            f"{PREFIX}{name} has {len(where)} classifiers ({', '.join(where)}): TransferLab puts one new head "
            f"on a backbone; choose an architecture with one classifier (a distilled model has two)"
        )
    return where


def head_features(model: nn.Module) -> int:
    """How many features the head reads (after timm's own pooling and pre-logits)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)  # type: ignore[arg-type]


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
    try:
        model = skeleton(name)
        laid = lay_out(model, head)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError, AssertionError) as e:
        # an architecture whose structure the layout does not expect: refused, with what went wrong
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"{PREFIX}{name} cannot be split into layer groups ({type(e).__name__}: {reason}); choose another model"
        ) from None
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    first_conv = cfg.get("first_conv") or ""
    module = type(model).__module__.rpartition(".")[2]
    return Described(
        groups=tuple(laid.names),
        head_path=head,
        first_conv=first_conv if isinstance(first_conv, str) else "",
        cam_layer=laid.cam_layer,
        cam_layout=laid.cam_layout,
        min_image_size=int(patch[0]) if patch else 32,  # one patch; a convolutional net's stride of 32
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
        trace(model, [], size)
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
