"""Forgetting, measured: how much of its ImageNet knowledge a fine-tuned body kept.

After training, the original 1000-class ImageNet head is put back on the fine-tuned body and the
pair classifies the validation images; `knowledge_kept` reports how often its top-1 agrees with
the untouched pretrained model's top-1 (the reference). An untouched body agrees on every image;
a body that forgot its features agrees on few. No ImageNet labels are needed: the reference is
the pretrained model's own prediction, so the number reads "knowledge kept", not ImageNet accuracy.

It applies only where the body started from ImageNet's weights and sees RGB images
(`why_not_measured` says why not otherwise). The model is left as it was found: its new head back
in place and every module's train/eval flag restored, even when a forward pass fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..errors import UserError
from ..models.backbones import Backbone, imagenet_model
from ..models.families import get_spec

__all__ = ["imagenet_head", "knowledge_kept", "why_not_measured"]

REFERENCE = "the pretrained model's own ImageNet top-1"


def imagenet_head(name: str) -> nn.Module:
    """The pretrained model's own classifier (the module at spec.head_path of imagenet_model(name)), in eval mode."""
    return imagenet_model(name).get_submodule(get_spec(name).head_path).eval()


def why_not_measured(bb: Backbone, in_channels: int = 3) -> str | None:
    """None when forgetting can be measured; else the reason in words."""
    if bb.weights == "none":
        return "the body started from random weights (weights none): it had no ImageNet knowledge to forget"
    if bb.weights != "imagenet":
        return f"the body started from {bb.weights}, not ImageNet's weights: the ImageNet head does not belong to it"
    if not bb.spec.imagenet_head:
        return f"the pretrained weights of {bb.spec.name} have no classifier of their own to compare with"
    if in_channels != 3:
        return (
            f"the images have {in_channels} channel{'s' if in_channels != 1 else ''}, not RGB: the "
            f"pretrained model cannot classify them as ImageNet images"
        )
    return None


@contextlib.contextmanager
def _head_swapped(model: nn.Module, head_path: str, head: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode with `head` at head_path; its own head and every module's mode restored after.

    Modes are restored module by module, not with one model.train(): fine-tuning keeps frozen
    groups in eval mode (BatchNorm running stats stay put) inside a model in train mode.
    """
    own_head = model.get_submodule(head_path)
    modes = [(m, m.training) for m in model.modules()]
    model.set_submodule(head_path, head)
    try:
        yield model.eval()
    finally:
        model.set_submodule(head_path, own_head)
        for m, training in modes:
            m.training = training


@torch.inference_mode()
def knowledge_kept(
    bb: Backbone,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device,
    amp: torch.dtype | None = None,
    reference: nn.Module | None = None,
) -> dict:
    """Top-1 agreement between (the fine-tuned body + the original ImageNet head) and the untouched
    pretrained model over the batches' images (labels unused; empty batches skipped).

    reference: the pretrained model with its ImageNet head (default: imagenet_model(bb.spec.name)
    on `device`); its head is the one put on the body. amp: the autocast dtype, as train.evaluate.
    Returns agreement (fraction in [0, 1]), top5 (fraction of images whose reference top-1 is among
    the body's five best), images, agreed, and what the reference is.
    """
    if (reason := why_not_measured(bb)) is not None:
        raise UserError(f"cannot measure forgetting for {bb.spec.name}: {reason}")
    device = torch.device(device)
    if reference is None:
        # Module.to takes memory_format beside a device; torch's stubs have no such overload.
        reference = imagenet_model(bb.spec.name, bb.image_size).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    reference.eval()
    head = reference.get_submodule(bb.spec.head_path)
    agreed, in_top5, seen = (torch.zeros((), dtype=torch.long, device=device) for _ in range(3))
    with _head_swapped(bb.model, bb.spec.head_path, head) as model:
        for x, y in batches:
            if len(y) == 0:
                continue
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                ours, theirs = model(x).float(), reference(x).float()
            target = theirs.argmax(1)
            agreed += (ours.argmax(1) == target).sum()
            in_top5 += (ours.topk(min(5, ours.shape[1]), 1).indices == target[:, None]).any(1).sum()
            seen += len(target)
    n = int(seen.item())  # read back once, not per batch
    if n == 0:
        raise UserError(
            f"cannot measure forgetting for {bb.spec.name}: no images were given; pass the validation batches"
        )
    return {
        "agreement": agreed.item() / n,
        "top5": in_top5.item() / n,
        "images": n,
        "agreed": int(agreed.item()),
        "reference": REFERENCE,
    }
