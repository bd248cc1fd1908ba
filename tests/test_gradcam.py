"""Grad-CAM: a map for every backbone family, equal to Grad-CAM written out by hand, leaving the
model as it was; the overlay colours where the map is high."""

from __future__ import annotations

import dataclasses
import io
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tl_core.analysis.gradcam import cam_module, grad_cam, model_view, overlay, png
from tl_core.models import backbones, families

CLASSES = [0, 1, 2]


def _one_per_adapter() -> list[str]:
    # Each adapter declares (or inherits) its cam layer; its first model stands for the rest.
    first: dict[type, str] = {}
    for name in families.list_backbones():
        first.setdefault(type(families.get_spec(name).adapter), name)
    return list(first.values())


def _input(spec: families.BackboneSpec, seed: int = 0) -> torch.Tensor:
    size = spec.fixed_image_size or 64
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hooks(model: nn.Module) -> list[int]:
    return [
        len(d)
        for m in model.modules()
        for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
    ]


@pytest.fixture(scope="module", params=_one_per_adapter())
def backbone(request) -> backbones.Backbone:
    torch.manual_seed(0)
    return backbones.create_backbone(request.param, num_classes=3, weights="none")


def test_every_family_gets_one_normalised_map_per_class(backbone):
    model, spec = backbone.model, backbone.spec
    x = _input(spec)
    for p in model.parameters():  # feature extraction: the body frozen, the head trained
        p.requires_grad_(False)
    for p in backbone.head.parameters():
        p.requires_grad_(True)
    flags = [p.requires_grad for p in model.parameters()]
    model.train()

    maps = grad_cam(model, spec, x, CLASSES)

    assert maps.shape == (len(CLASSES), *x.shape[2:]) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0
    peaks = maps.reshape(len(CLASSES), -1).max(axis=1)
    assert (np.isclose(peaks, 1) | (peaks == 0)).all(), f"each map is scaled by its own max: {peaks}"
    assert peaks.max() == pytest.approx(1), "every class map is zero"
    assert any(not np.allclose(maps[i], maps[j]) for i, j in combinations(range(len(CLASSES)), 2)), (
        "the class does not change the map"
    )
    assert [p.requires_grad for p in model.parameters()] == flags and model.training
    assert not any(_hooks(model)), "grad_cam left a hook on the model"


def test_a_fully_frozen_model_gives_the_same_maps(backbone):
    # Grad-CAM needs gradients of the activations, not of the parameters.
    model, spec = backbone.model, backbone.spec
    x = _input(spec, seed=1)
    for p in model.parameters():
        p.requires_grad_(True)
    trainable = grad_cam(model, spec, x, CLASSES)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = grad_cam(model, spec, x, CLASSES)
    assert not any(p.requires_grad for p in model.parameters())
    assert frozen.max() == pytest.approx(1)
    np.testing.assert_allclose(frozen, trainable, atol=1e-5)


def _by_hand(model: nn.Module, layer: nn.Module, to_nchw, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Grad-CAM as the paper writes it: channel weights = the class score's gradient averaged
    over the map, ReLU of the weighted sum of channels, bilinear to the input, over its max."""
    kept = {}
    hook = layer.register_forward_hook(lambda _m, _i, out: kept.setdefault("act", out))
    try:
        logit = model.eval()(x)[0, cls]
    finally:
        hook.remove()
    (grad,) = torch.autograd.grad(logit, kept["act"])
    act, grad = to_nchw(kept["act"].detach()), to_nchw(grad)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    return cam / cam.max()


def _tokens_to_nchw(t: torch.Tensor) -> torch.Tensor:
    n, hw, c = t[:, 1:].shape
    side = int(hw**0.5)
    return t[:, 1:].transpose(1, 2).reshape(n, c, side, side)


@pytest.mark.parametrize(
    "name, size, to_nchw",
    [
        ("resnet18", 128, lambda t: t),  # "nchw"
        ("swin_t", 128, lambda t: t.permute(0, 3, 1, 2)),  # "nhwc"
        ("vit_b_16", 224, _tokens_to_nchw),  # "tokens"
    ],
)
def test_it_is_grad_cam(name, size, to_nchw):
    torch.manual_seed(0)
    bb = backbones.create_backbone(name, num_classes=3, weights="none")
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    for cls in CLASSES:
        expected = _by_hand(bb.model, cam_module(bb.model, bb.spec.cam_layer), to_nchw, x, cls)
        if torch.isfinite(expected).all():  # a class whose map is all zero has nothing to compare
            break
    else:
        pytest.fail(f"every class map of {name} is zero with this seed; pick another")
    got = torch.from_numpy(grad_cam(bb.model, bb.spec, x, [cls])[0])
    assert torch.allclose(got, expected, atol=1e-5), f"max difference {(got - expected).abs().max():.2e}"


def test_swin_channels_last_map_equals_the_map_after_its_permute():
    torch.manual_seed(0)
    bb = backbones.create_backbone("swin_t", num_classes=3, weights="none")
    assert bb.spec.cam_layout == "nhwc"
    nchw = dataclasses.replace(bb.spec, cam_layer="permute", cam_layout="nchw")
    x = _input(bb.spec)
    np.testing.assert_allclose(grad_cam(bb.model, bb.spec, x, CLASSES), grad_cam(bb.model, nchw, x, CLASSES), atol=1e-5)


def test_channels_last_input_and_model_give_the_same_maps():
    torch.manual_seed(0)
    bb = backbones.create_backbone("resnet18", num_classes=3, weights="none")
    x = _input(bb.spec)
    plain = grad_cam(bb.model, bb.spec, x, CLASSES)
    bb.model.to(memory_format=torch.channels_last)
    np.testing.assert_allclose(
        grad_cam(bb.model, bb.spec, x.to(memory_format=torch.channels_last), CLASSES), plain, atol=1e-5
    )


def test_the_map_points_where_the_evidence_is():
    # Channel 0 copies the image's mean, channel 1 its negative; class 0 reads channel 0 only, so
    # its map is the bright right half of the image and class 1 (channel 1) sees nothing there.
    features = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        features.weight.copy_(torch.tensor([[1.0, 1, 1], [-1, -1, -1]]).view(2, 3, 1, 1) / 3)
        head = nn.Linear(2, 2, bias=False)
        head.weight.copy_(torch.tensor([[1.0, 0], [0, 1]]))
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("head", head)
    spec = dataclasses.replace(families.get_spec("resnet18"), cam_layer="features", cam_layout="nchw")
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:] = 1.0
    maps = grad_cam(model, spec, x, [0, 1])
    assert (maps[0][:, 8:] == 1).all() and (maps[0][:, :8] == 0).all()
    assert (maps[1] == 0).all()


def test_overlay_colours_where_the_map_is_high():
    rgb = np.full((8, 10, 3), 128, np.uint8)
    cam = np.zeros((8, 10), np.float32)
    cam[:, 5:] = 1.0
    out = overlay(rgb, cam)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert (out[:, :5] == rgb[:, :5]).all(), "where the map is zero the image shows as is"
    right = out[:, 5:].astype(int)
    assert (right != 128).any(axis=2).all()
    assert (right[..., 0] > right[..., 2]).all(), "a high map is red in jet"


def test_model_view_and_png():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 6, 5), dtype=np.uint8)
    view = model_view(rgb)
    assert view.shape == (6, 5, 3) and (view == rgb.transpose(1, 2, 0)).all()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png(view)))), view)

    multi = np.zeros((5, 6, 5), np.float16)
    multi[:, :, 3:] = 2.0  # right columns bright in every channel
    grey = model_view(multi)
    assert grey.shape == (6, 5, 3) and grey.dtype == np.uint8
    assert (grey[:, 3:] == 255).all() and (grey[:, :3] == 0).all()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png(grey[..., 0])))), grey[..., 0])
