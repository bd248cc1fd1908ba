"""Grad-CAM heat maps: where in the image a backbone looked when it scored a class.

Grad-CAM (Selvaraju et al. 2017) weighs the channels of the last spatial feature map by the mean
gradient of the class score over that map, sums them and keeps the positive part. The layer is
the family's `cam_layer` (families.py), so every registered backbone gets maps with no code here.
The attribution itself is captum's `LayerGradCam`: the PyTorch team's attribution library, which
works on any `nn.Module` layer; pytorch-grad-cam would bring opencv with it.

captum expects an NCHW activation. For channels-last ("nhwc") and ViT token ("tokens") outputs a
forward hook routes the map through an identity module in NCHW form, which captum targets, and
hands the model its output back in the original layout.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from matplotlib import colormaps
from PIL import Image
from torch import nn

from ..errors import UserError
from ..models.families import BackboneSpec

__all__ = ["cam_module", "grad_cam", "model_view", "overlay", "png"]


def cam_module(model: nn.Module, path: str) -> nn.Module:
    """The module at a dotted `path`; a part "-1" is the last child (the last block of any depth)."""
    m = model
    for part in path.split("."):
        m = list(m.children())[-1] if part == "-1" else getattr(m, part)
    return m


def _as_nchw(out: torch.Tensor, layout: str, view: nn.Module) -> torch.Tensor:
    """`out` with its spatial map passed through `view` as NCHW, in `out`'s own layout."""
    if layout == "nhwc":
        return view(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    # "tokens": the class token, then a square grid of patches; "tokens:N": N prefix tokens (class,
    # registers; 0 for a model without) before the grid
    prefix = int(layout.partition(":")[2] or 1)
    cls, patches = out[:, :prefix], out[:, prefix:]
    n, hw, c = patches.shape
    side = math.isqrt(hw)
    if side * side != hw:
        raise ValueError(f"{hw} patch tokens do not form a square grid; Grad-CAM needs a square input")
    grid = view(patches.transpose(1, 2).reshape(n, c, side, side))
    return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


def grad_cam(model: nn.Module, spec: BackboneSpec, x: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM of one input `x` (1, C, H, W) for each of `classes`: float32 (len(classes), H, W),
    each map upsampled to H x W and scaled to [0, 1] by its own maximum (all-zero stays zero).

    Needs no parameter gradients, so it works on a fully frozen model; the model's train/eval mode
    and its parameters' requires_grad are as before afterwards, and no hook is left on it."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"grad_cam takes one image shaped (1, C, H, W), got {tuple(x.shape)}")
    if not classes:
        return np.zeros((0, *x.shape[2:]), np.float32)
    if not spec.cam_layer:
        raise UserError(f"no Grad-CAM for {spec.name}: {spec.cam_layout}")
    layer = cam_module(model, spec.cam_layer)
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    hook = None
    try:
        model.eval()
        if spec.cam_layout != "nchw":  # "nhwc", "tokens" or "tokens:N"
            view = nn.Identity()
            hook = layer.register_forward_hook(lambda _m, _i, out: _as_nchw(out, spec.cam_layout, view))
            layer = view
        batch = torch.cat([x] * len(classes))  # one forward and backward pass for every class
        with torch.enable_grad():
            cams = LayerGradCam(model, layer).attribute(batch, target=list(classes), relu_attributions=True)
        cams = F.interpolate(cams.detach().float(), size=x.shape[2:], mode="bilinear")[:, 0]
        peak = cams.amax(dim=(1, 2), keepdim=True)
        return (cams / torch.where(peak > 0, peak, 1.0)).cpu().numpy()
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """`rgb` (H, W, 3, or H, W grey) with `cam` (H, W, in [0, 1]) in the jet colormap over it, uint8.

    The colour's weight grows with the map, so where the model did not look the image shows as is."""
    base = np.asarray(rgb, np.float32)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    cam = np.clip(np.asarray(cam, np.float32), 0.0, 1.0)
    colour = colormaps["jet"](cam)[..., :3].astype(np.float32) * 255.0
    weight = alpha * cam[..., None]
    return np.clip((1.0 - weight) * base + weight * colour + 0.5, 0, 255).astype(np.uint8)


def model_view(x_uint8: np.ndarray) -> np.ndarray:
    """A decoded image (C, H, W), as DecodeStage stores it, as H x W x 3 uint8 to show: RGB as is,
    other channel counts as a grey image of the channel mean stretched to 0-255."""
    x = np.asarray(x_uint8)
    if x.shape[0] == 3 and x.dtype == np.uint8:
        return np.ascontiguousarray(x.transpose(1, 2, 0))
    mean = x.astype(np.float32).mean(axis=0)
    lo, hi = float(mean.min()), float(mean.max())
    grey = (mean - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(mean)
    return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=2)


def png(rgb_or_gray: np.ndarray) -> bytes:
    """PNG bytes of an H x W x 3 or H x W uint8 image (how results store images in JSON)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb_or_gray, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
