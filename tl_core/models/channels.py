"""Inputs that are not RGB (`--in-channels N`): the first convolution rebuilt for N channels,
and how the N channels are normalised.

The first convolution. A backbone's pretrained first convolution (its family's `first_conv`,
families.py) reads three channels with filters W_R, W_G, W_B. For N channels its weight
(out, 3, kh, kw) becomes (out, N, kh, kw), built from them so that what was learnt still applies:
  N = 1   W_R + W_G + W_B. A gray image g gives exactly the RGB model's activation for the
          image (g, g, g) (what timm's `adapt_input_conv` does).
  N = 2   (W_R + W_G + W_B) / 2 on each channel: an image with the same values on both channels
          gives exactly the RGB model's activation for that gray image, as N = 1 does.
  N > 3   channels 0-2 keep W_R, W_G, W_B untouched: the RGB channels with zeros on the others
          give exactly the RGB model's logits. Each extra channel gets the mean RGB filter
          (W_R + W_G + W_B) / 3, rescaled by 1 / (N - 3): together the extra channels weigh as one
          more RGB channel, whatever N is. So an image with one value on every channel gives
          4/3 of the RGB model's first activation for any N, where unscaled means would give
          N/3 of it (21x for 64 bands) and blow up the activations of every layer above.
The bias, stride, padding and the convolution's class (timm's Conv2dSame) are kept: the weight
and `in_channels` change in place, so layer groups still hold the same module. Random weights
(`--weights none`) are adapted the same way. Weights from a file must be RGB (3-channel).

Normalisation. The channels the weights were trained on (0-2, when N > 3 and there are
weights) keep the weights' RGB mean and std. Every other channel (all of them when N is 1 or 2,
or with `--weights none`) is normalised by its own mean and std, measured on the training
images (never the validation ones), in the [0, 1] scale images.load_pixels reads. With N = 3
nothing here applies: the weights' own preprocessing, as ever.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import cast

import numpy as np
import torch
from torch import nn

from ..data import images
from ..errors import UserError
from .families import BackboneSpec
from .weights import Preprocessing

STATS_IMAGES = 256  # training images the per-channel statistics are measured on (evenly spaced)


# --- the first convolution -------------------------------------------------------------------


def adapt_conv_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB convolution's weight (out, 3, kh, kw) for `channels` input channels (module docstring)."""
    if weight.shape[1] != 3:
        raise ValueError(f"expected an RGB convolution (3 input channels), got {weight.shape[1]}")
    if channels == 3:
        return weight
    total = weight.sum(1, keepdim=True)
    if channels == 1:
        return total
    if channels == 2:
        return (total / 2).repeat(1, 2, 1, 1)
    extra = (total / 3 / (channels - 3)).repeat(1, channels - 3, 1, 1)
    return torch.cat([weight, extra], dim=1)


def adapt_first_conv(model: nn.Module, spec: BackboneSpec, channels: int) -> None:
    """Rebuild `model`'s first convolution for `channels` input channels, in place (3: unchanged)."""
    if channels == 3:
        return
    conv = model.get_submodule(spec.first_conv) if spec.first_conv else None
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != 3 or conv.groups != 1:
        raise UserError(
            f"--in-channels {channels}: {spec.name} does not read the image with one RGB convolution that "
            f"can be rebuilt for {channels} channels ({spec.first_conv or 'its pretrained config names none'}); "
            f"use --in-channels 3, or another backbone"
        )
    with torch.no_grad():
        weight = adapt_conv_weight(conv.weight.detach(), channels).contiguous()
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.in_channels = channels


def input_channels(model: nn.Module, spec: BackboneSpec) -> int:
    """How many channels `model` reads."""
    return cast(nn.Conv2d, model.get_submodule(spec.first_conv)).in_channels  # every family's first_conv is one


# --- normalisation -----------------------------------------------------------------------------


def training_stats(paths: list[str], channels: int) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """(mean, std, images read) per channel over up to STATS_IMAGES of `paths`; a constant
    channel gets std 1 (it carries nothing to scale)."""
    step = max(1, math.ceil(len(paths) / STATS_IMAGES))
    total, squares, pixels, read = np.zeros(channels), np.zeros(channels), 0, 0
    for path in paths[::step]:
        try:
            x = images.load_pixels(path, channels).reshape(channels, -1).astype(np.float64)
        except images.UnreadableImage:
            continue  # listed when the loader meets it
        total += x.sum(1)
        squares += (x * x).sum(1)
        pixels, read = pixels + x.shape[1], read + 1
    if not read:
        raise UserError(
            f"none of the {len(paths)} training images could be read to measure the "
            f"{channels} channels' mean and std; check the files the run lists as skipped"
        )
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
    std[std < 1e-6] = 1.0
    return tuple(mean.round(6).tolist()), tuple(std.round(6).tolist()), read


def normalisation(
    pre: Preprocessing, channels: int, weights: str, train_paths: list[str]
) -> tuple[Preprocessing, str | None]:
    """The weights' preprocessing with a mean and std for each of `channels`, and where they came
    from (None for 3 channels: the weights' own, unchanged)."""
    if channels == 3:
        return pre, None
    kept = 3 if channels > 3 and weights != "none" else 0
    mean, std, read = training_stats(train_paths, channels)
    measured = f"measured on {read} training images"
    how = (
        f"channels 0-2: the weights' RGB mean/std; channels 3-{channels - 1}: {measured}"
        if kept
        else f"all {channels} channels: {measured}"
    )
    return replace(pre, mean=(*pre.mean[:kept], *mean[kept:]), std=(*pre.std[:kept], *std[kept:])), how
