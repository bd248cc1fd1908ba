"""The reference to beat: transfer learning as the tutorials teach it.

torchvision's ImageFolder with PIL transforms per item, a DataLoader, and every epoch a full
forward pass through the whole model, frozen or not, in fp32 and NCHW, with `model.train()`
for the whole model during the training phase: frozen BatchNorm layers keep updating their
running statistics, as in the tutorials (the bench reports what that costs in accuracy).

Everything else is TransferLab's own, so that the comparison isolates the loop: the same model
and new head (tl_core.models.backbones, same seed), the same train/val split, image size, batch
size, epochs, optimizer (AdamW) and learning-rate schedule (one-cycle, per step).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from tl_core.models import backbones
from tl_core.training.schedules import lr_factor


@dataclass
class ReferenceResult:
    seconds: float  # end to end: datasets, model, every epoch's training and validation
    train_seconds: float  # the training phases only
    train_images: int  # images seen in training, all epochs
    val_acc: list[float] = field(default_factory=list)  # after each epoch

    @property
    def images_per_sec(self) -> float:
        return self.train_images / self.train_seconds

    @property
    def best_val_acc(self) -> float:
        return max(self.val_acc)


def tutorial_transforms(backbone: str, image_size: int, augment: str) -> tuple[T.Compose, T.Compose]:
    """PIL transforms per item, with the weights' own mean/std, resize and crop ratio."""
    pre = backbones.preprocessing(backbone)
    interp = T.InterpolationMode(pre.interpolation)
    norm = [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    val = T.Compose(
        [T.Resize(math.floor(image_size / pre.crop_pct + 0.5), interpolation=interp), T.CenterCrop(image_size), *norm]
    )
    if augment == "none":
        return val, val
    train = T.Compose(
        [T.RandomResizedCrop(image_size, scale=(0.6, 1.0), interpolation=interp), T.RandomHorizontalFlip(), *norm]
    )
    return train, val


def _subset(folder: datasets.ImageFolder, paths: list[str]) -> Subset:
    where = {path: i for i, (path, _) in enumerate(folder.samples)}
    return Subset(folder, [where[p] for p in paths])


def run_reference(
    root: str,
    train_paths: list[str],
    val_paths: list[str],
    *,
    backbone: str = "efficientnet_lite0",
    strategy: str = "feature_extraction",
    image_size: int = 96,
    batch_size: int = 32,
    epochs: int = 10,
    seed: int = 0,
    augment: str = "none",
    workers: int = 2,
    lr: float = 1e-3,
    max_batches: int | None = None,
) -> ReferenceResult:
    """Train as the tutorials do; `max_batches` cuts each training phase short (throughput only)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_tf, val_tf = tutorial_transforms(backbone, image_size, augment)
    train_set = _subset(datasets.ImageFolder(root, train_tf), train_paths)
    val_set = _subset(datasets.ImageFolder(root, val_tf), val_paths)
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers, generator=g)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=workers)

    n_classes = len(datasets.ImageFolder(root).classes)
    bb = backbones.create_backbone(backbone, n_classes)
    model = bb.model
    if strategy == "feature_extraction":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in bb.head.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()

    result = ReferenceResult(0.0, 0.0, 0)
    steps = epochs * (max_batches or len(train_loader))
    step = 0
    for _ in range(epochs):
        model.train()  # the whole model, as the tutorials do: frozen BatchNorm statistics move
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(train_loader):
            if max_batches is not None and i >= max_batches:
                break
            for pg in optimizer.param_groups:
                pg["lr"] = lr * lr_factor("onecycle", step / steps)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            result.train_images += len(y)
        result.train_seconds += time.perf_counter() - t0
        if max_batches is None:
            model.eval()
            correct = seen = 0
            with torch.no_grad():
                for x, y in val_loader:
                    correct += (model(x).argmax(1) == y).sum().item()
                    seen += len(y)
            result.val_acc.append(correct / seen)
    result.seconds = time.perf_counter() - start
    return result
