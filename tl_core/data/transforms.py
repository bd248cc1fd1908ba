"""Transforms and loaders that decode every image every epoch: the path without the decode cache.

The transforms follow the weights' own preprocessing (mean/std, resize interpolation, crop
ratio, weights.py) at the run's image size. Validation always uses the deterministic transform;
augmentation is for training only. decode_cache.py shares `augmentations` for its cached path.
Images of other than 3 channels (--in-channels) come as float tensors from data.load_pixels and
take the same resizes and crops, normalised per channel; their augmentation has no colour jitter.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.transforms import v2 as T

from ..errors import UserError
from ..logs import logger
from ..models.weights import Preprocessing
from . import shared_memory
from .folders import Item
from .images import UnreadableImage, load_image, load_pixels
from .splits import Splits

log = logger(__name__)

AUGMENTATIONS = ("none", "light", "standard")


def build_transforms(
    pre: Preprocessing, image_size: int, augment: str = "none", channels: int = 3
) -> tuple[T.Compose, T.Compose]:
    """(train, val) transforms at `image_size`, normalised with the weights' own mean/std (one per channel)."""
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    interp = T.InterpolationMode(pre.interpolation)
    to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]
    # Resize so that the centre crop keeps the weights' crop ratio (224 of 256 for most).
    resize = math.floor(image_size / pre.crop_pct + 0.5)
    val = T.Compose([T.Resize(resize, interpolation=interp), T.CenterCrop(image_size), *to_tensor])
    if augment == "none":
        return val, val
    return T.Compose([*augmentations(augment, image_size, interp, channels), *to_tensor]), val


def augmentations(augment: str, image_size: int, interp: T.InterpolationMode, channels: int = 3) -> list:
    """The random training transforms of `augment`; they take PIL images and tensors alike.
    Colour jitter is for RGB only: other channel counts get the crops and flips."""
    if augment == "none":
        return []
    if augment == "light":
        return [T.RandomResizedCrop(image_size, scale=(0.6, 1.0), interpolation=interp), T.RandomHorizontalFlip()]
    return [
        T.RandomResizedCrop(image_size, scale=(0.25, 1.0), interpolation=interp),
        T.RandomHorizontalFlip(),
        *([T.ColorJitter(0.3, 0.3, 0.3, 0.05)] if channels == 3 else []),
    ]


def read_tensor(path: str, channels: int) -> torch.Tensor:
    """An image of `channels` other than 3 as a float (channels, H, W) tensor (data.load_pixels)."""
    return torch.from_numpy(load_pixels(path, channels))


class ImageDataset(Dataset):
    def __init__(self, items: list[Item], transform, read=load_image):
        self.items = items
        self.transform = transform
        self.read = read  # path -> an RGB PIL image (load_image), or a tensor of other channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        item = self.items[i]
        try:
            return self.transform(self.read(item.path)), item.label
        except UnreadableImage as e:
            # Skipped and listed (in the run's log); the batch goes on without it.
            log.warning(f"skipped unreadable image {e}")
            return None


def collate_readable(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """default_collate over the images that could be read (an empty batch if none could). In a
    worker, images and labels are in shared memory when this returns (shared_memory.share: default_collate
    puts the images there, the labels are moved here)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    x, y = default_collate(batch)
    shared_memory.share(x, y)
    return x, y


class EpochOrder(Sampler[int]):
    """A shuffled order of n items that depends only on the seed and the epoch (`set_epoch`), as
    DistributedSampler's does: an epoch's order is drawn again exactly when a run resumes in the
    middle of it, whatever the loader's workers and earlier epochs drew (FeatureBatches shuffles
    the same way, so a run sees the same order with and without its feature cache)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class EpochLoader(DataLoader):
    """A training DataLoader whose order is set per epoch (EpochOrder)."""

    def for_epoch(self, epoch: int) -> EpochLoader:
        assert isinstance(self.sampler, EpochOrder)  # make_loaders gives it one
        self.sampler.set_epoch(epoch)
        return self


def make_loaders(
    splits: Splits,
    train_tf,
    val_tf,
    batch_size: int,
    seed: int,
    workers: int,
    pin_memory: bool = False,
    channels: int = 3,
    prefetch_factor: int = shared_memory.PREFETCH,
) -> tuple[EpochLoader, DataLoader]:
    """(train, val) loaders; `workers` and `prefetch_factor` as shared_memory.fit sized them for /dev/shm."""
    g = torch.Generator().manual_seed(seed)
    read = load_image if channels == 3 else partial(read_tensor, channels=channels)
    common: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        collate_fn=collate_readable,
        **({"prefetch_factor": prefetch_factor} if workers else {}),
    )
    # drop_last keeps BatchNorm away from a final batch of one image.
    drop_last = len(splits.train) > batch_size and len(splits.train) % batch_size == 1
    # The generator seeds the workers' random streams; the order is EpochOrder's.
    train = EpochLoader(
        ImageDataset(splits.train, train_tf, read),
        batch_size=batch_size,
        sampler=EpochOrder(len(splits.train), seed),
        generator=g,
        drop_last=drop_last,
        **common,
    )
    val = DataLoader(ImageDataset(splits.val, val_tf, read), batch_size=batch_size, shuffle=False, **common)
    return train, val
