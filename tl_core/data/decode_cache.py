"""Decode once: every image of a dataset decoded, resized and cropped one time, kept as uint8.

Preprocessing is split in two stages:
  decode (PIL, deterministic): open, convert to RGB, resize the shorter side, crop the centre
      square. Done once per dataset and image size and stored as uint8 (3, S, S) rows of a
      memory-mapped array (cache.py): JPEG/PNG decoding is paid once, not once per epoch;
  tensor (every epoch): the random augmentation on the uint8 tensor, then, on the device and
      on whole batches, scaling to [0, 1] and the weights' mean/std.
Without augmentation the stored crop is exactly the validation transform's, so the model sees
bitwise the same input as when decoding every time. With augmentation the stored square is the
resized image's centre (image_size / crop_pct on a side) and the random crop is taken from it:
the corners of a non-square image are not reachable by the crop.
Images of other than 3 channels (--in-channels, images.load_pixels) are stored as float16 rows
(channels, S, S) of their [0, 1]-scaled values (16-bit and float bands keep their precision
better than uint8 would; float values beyond float16's +-65504 are clipped), resized as tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from ..logs import logger
from ..models.weights import Preprocessing
from . import folders, images, shared_memory, transforms
from .scan_cache import ArrayCache, CacheTooLarge, files_fingerprint
from .splits import Splits

log = logger(__name__)

DECODE_VERSION = 1
Check = Callable[[], None]  # called between batches; raises to stop (a cancelled run)
# (images, labels, rows decoded by this read, rows found unreadable): a PixelDataset batch
Batch = tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]


# --- the dataset's rows ------------------------------------------------------------------


@dataclass
class DatasetRows:
    """Every image of a dataset, one row each (sorted by path), and a fingerprint of their content."""

    root: str
    paths: list[str]
    fingerprint: str
    row: dict[str, int]

    @classmethod
    def of(cls, index: folders.DatasetIndex) -> DatasetRows:
        paths = sorted({it.path for items in index.items.values() for it in items})
        fingerprint = files_fingerprint(paths, index.root, extra={"classes": index.classes})
        return cls(index.root, paths, fingerprint, {p: i for i, p in enumerate(paths)})

    def rows(self, items: Sequence[folders.Item]) -> np.ndarray:
        return np.array([self.row[it.path] for it in items], dtype=np.int64)


# --- the two stages ----------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeStage:
    """Open, RGB, resize the shorter side to `resize`, crop the centre `crop` square: uint8 CHW.
    Other channel counts: images.load_pixels, then the same on the tensor, stored as float16."""

    resize: int
    crop: int
    interpolation: str
    channels: int = 3

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.channels == 3 else np.float16)

    def key(self) -> dict:
        """What names its cache entry (RGB entries as before channels were a setting)."""
        key = asdict(self)
        return key if self.channels != 3 else {k: v for k, v in key.items() if k != "channels"}

    def __call__(self, path: str) -> np.ndarray:
        interp = T.InterpolationMode(self.interpolation)
        if self.channels != 3:
            x = F.resize(
                torch.from_numpy(images.load_pixels(path, self.channels)),
                [self.resize],
                interpolation=interp,
                antialias=True,
            )
            x = F.center_crop(x, [self.crop]).clamp(-F16_MAX, F16_MAX)
            return np.ascontiguousarray(x.numpy().astype(np.float16))
        img = T.CenterCrop(self.crop)(T.Resize(self.resize, interpolation=interp)(images.load_image(path)))
        return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))


F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Pipeline:
    """How an image file becomes a model input, at one image size, for one set of weights."""

    pre: Preprocessing  # the weights' own: mean/std (one per channel), interpolation, crop ratio
    image_size: int
    augment: str = "none"
    in_channels: int = 3
    stats: str | None = None  # where mean/std of channels the weights have none for came from (channels.py)

    @property
    def resize(self) -> int:
        """Shorter side before the centre crop (as transforms.build_transforms)."""
        return math.floor(self.image_size / self.pre.crop_pct + 0.5)

    @property
    def interpolation(self) -> str:
        return self.pre.interpolation

    def stage(self, train: bool) -> DecodeStage:
        """Validation (and unaugmented training) stores the final crop; augmentation a bigger square."""
        crop = self.resize if train and self.augment != "none" else self.image_size
        return DecodeStage(self.resize, crop, self.interpolation, self.in_channels)

    def train_transform(self) -> T.Compose | None:
        """The random part, on uint8 tensors; None without augmentation."""
        aug = transforms.augmentations(
            self.augment, self.image_size, T.InterpolationMode(self.interpolation), self.in_channels
        )
        return T.Compose(aug) if aug else None

    def to_model(self, x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
        """A uint8 batch to the normalised float batch the model takes, on `device`."""
        x = F.normalize(
            F.to_dtype(x.to(device, non_blocking=True), torch.float32, scale=True),
            list(self.pre.mean),
            list(self.pre.std),
        )
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def describe(self) -> dict:
        """The run's summary["preprocessing"] and part of the feature cache's key (RGB: as before
        channels were a setting)."""
        out = {**asdict(self), "resize": self.resize}
        return out if self.in_channels != 3 else {k: v for k, v in out.items() if k not in ("in_channels", "stats")}


# --- the cache of decoded images ------------------------------------------------------------


class DecodedImages:
    """Every image of a dataset through one DecodeStage, as uint8 rows of a memory-mapped array.

    Rows are filled as they are first read (PixelDataset decodes a missing row and writes it),
    so the first epoch decodes as it goes and later epochs, and later runs, only read.
    """

    def __init__(self, rows: DatasetRows, stage: DecodeStage, root=None):
        self.dataset, self.stage = rows, stage
        key = {"dataset": rows.fingerprint, "stage": stage.key(), "version": DECODE_VERSION}
        self.cache = ArrayCache(
            "decoded", key, len(rows.paths), (stage.channels, stage.crop, stage.crop), stage.dtype, root
        )

    def state(self) -> tuple[np.ndarray, set[int]]:
        """(filled mask, unreadable rows) as of now."""
        return self.cache.filled(), set(self.cache.failed().tolist())

    def record(self, decoded: np.ndarray, unreadable: np.ndarray) -> None:
        """Mark rows written by readers (any process) as filled, and the unreadable ones as failed."""
        if len(decoded) or len(unreadable):
            with self.cache.locked():
                self.cache.commit(decoded, unreadable)


class PixelDataset(Dataset):
    """Rows of DecodedImages as uint8 tensors (decoded and stored on first read), through an
    optional random transform.

    An item is (image, label, row, fresh): fresh is 1 when this read decoded the row; an
    unreadable image is (None, label, row, -1) and is listed in the log. With `seeds`, item i is
    transformed under its own seed (the same view every time: the K views of the feature
    cache); without, under the loader's random stream.
    """

    def __init__(
        self,
        images: DecodedImages,
        rows: np.ndarray,
        labels: Sequence[int],
        transform: Callable | None = None,
        seeds: np.ndarray | None = None,
    ):
        self.images, self.rows, self.labels = images, np.asarray(rows), list(labels)
        self.transform, self.seeds = transform, seeds
        self.filled: np.ndarray | None = None  # set by the loader before each pass (and its workers' fork)
        self.unreadable: set[int] = set()
        self._data: np.memmap | None = None  # opened on first read, in whichever process reads (_array)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row, label = int(self.rows[i]), self.labels[i]
        if row in self.unreadable:
            return None, label, row, -1
        fresh = 0
        if self.filled is None or not self.filled[row]:
            try:
                self._array()[row] = self.images.stage(self.images.dataset.paths[row])
            except images.UnreadableImage as e:
                log.warning(f"skipped unreadable image {e}")
                self.unreadable.add(row)
                return None, label, row, -1
            fresh = 1
            if self.filled is not None:  # a row read again in this pass (K views of an image) is decoded once
                self.filled[row] = True
        x = torch.from_numpy(np.array(self._array()[row]))
        if x.dtype == torch.float16:  # stored small; resized (augmented) and normalised in float32
            x = x.float()
        return self._augment(i, x), label, row, fresh

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """A whole batch, collated (the DataLoader calls this rather than __getitem__ per index).

        Once its rows are all decoded (the steady state) they are read in one go (one fancy-indexed
        read of the memory map), not copied and stacked one by one. A batch with a row to decode or
        an unreadable one goes item by item, which keeps that bookkeeping (fresh, bad, filled).
        """
        batch = self._batch(indices)
        shared_memory.share(
            batch[0], batch[1]
        )  # in a worker: into shared memory here, where a failure is the batch's error
        return batch

    def _batch(self, indices: Sequence[int]) -> Batch:
        rows = self.rows[indices]
        if self.filled is None or not self.filled[rows].all() or not self.unreadable.isdisjoint(rows.tolist()):
            return collate([self[i] for i in indices])
        # Not sorted into file order first: the cache is normally in the page cache, where sorting
        # and putting back cost a second copy (3x the read's time at 224 px) and save nothing.
        x = torch.from_numpy(self._array()[rows])
        if x.dtype == torch.float16:
            x = x.float()
        if self.transform is not None:  # per image, in the batch's order: the random draws of the item path
            x = torch.stack([self._augment(i, img) for i, img in zip(indices, x)])
        y = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        none = np.zeros(0, dtype=np.int64)
        return x, y, none, none

    def _array(self) -> np.memmap:
        """The memory-mapped rows (each DataLoader worker maps its own)."""
        if self._data is None:
            self._data = self.images.cache.writable()
        return self._data

    def _augment(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Item i through the random transform: under the loader's random stream, or its own seed."""
        if self.transform is None:
            return x
        if self.seeds is None:
            return self.transform(x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seeds[i]))
            return self.transform(x)


def collate(items: list) -> Batch:
    """(images, labels) of the readable items, and the rows this batch decoded and found unreadable."""
    good = [b for b in items if b[0] is not None]
    x = torch.stack([b[0] for b in good]) if good else torch.empty(0, dtype=torch.uint8)
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    fresh = np.array([b[2] for b in items if b[3] == 1], dtype=np.int64)
    bad = np.array([b[2] for b in items if b[3] == -1], dtype=np.int64)
    return x, y, fresh, bad


def collated(batch: Batch) -> Batch:
    """The DataLoader's collate_fn: PixelDataset.__getitems__ returns its batches collated."""
    return batch


def read_through(dataset: PixelDataset, **loader_args) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate a DataLoader over `dataset`, recording the rows it decoded (even when stopped)."""
    dataset.filled, dataset.unreadable = dataset.images.state()  # before the workers fork
    dataset.images.cache.create()
    fresh, bad = [], []
    try:
        # torch types collate_fn as taking a list of items; with __getitems__ it takes what that returns.
        for x, y, f, b in DataLoader(dataset, collate_fn=collated, **loader_args):  # type: ignore[arg-type]
            fresh.append(f)
            bad.append(b)
            yield x, y
    finally:
        if fresh:
            dataset.images.record(np.concatenate(fresh), np.concatenate(bad))


def unreadable_paths(rows: DatasetRows, pipeline: Pipeline, splits: Splits) -> list[str]:
    """Images of this split that could not be decoded (truncated, corrupt): found as they were read."""
    wanted = set(rows.rows(splits.train).tolist()) | set(rows.rows(splits.val).tolist())
    failed: set[int] = set()
    for stage in {pipeline.stage(True), pipeline.stage(False)}:
        failed |= set(DecodedImages(rows, stage).cache.failed().tolist())
    return [rows.paths[r] for r in sorted(failed & wanted)]


# --- loaders ------------------------------------------------------------------------------


class PixelLoader:
    """Batches from the decode cache, normalised on the device; decodes what is missing as it goes.
    `workers` and `prefetch_factor` as shared_memory.fit sized them for /dev/shm."""

    def __init__(
        self,
        dataset: PixelDataset,
        pipeline: Pipeline,
        device: torch.device,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
        prefetch_factor: int = shared_memory.PREFETCH,
    ):
        self.dataset, self.pipeline, self.device, self.channels_last = dataset, pipeline, device, channels_last
        # The order is EpochOrder's (a resume mid-epoch draws it again); the generator seeds the
        # workers' random streams (a checkpoint saves it, a resume restores it).
        self.order = transforms.EpochOrder(len(dataset), seed) if shuffle else None
        self.generator = torch.Generator().manual_seed(seed)
        self.args: dict[str, Any] = dict(
            batch_size=batch_size,
            sampler=self.order,
            drop_last=drop_last,
            generator=self.generator,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            **({"prefetch_factor": prefetch_factor} if workers else {}),
        )
        self._steady: DataLoader | None = None  # once every row is decoded: workers kept across epochs
        self._listed = False

    def for_epoch(self, epoch: int) -> PixelLoader:
        """This loader, drawing epoch `epoch`'s order (a loader without shuffling has one order)."""
        if self.order is not None:
            self.order.set_epoch(epoch)
        return self

    def __len__(self) -> int:
        n, b = len(self.dataset), self.args["batch_size"]
        return n // b if self.args["drop_last"] else -(-n // b)

    def __iter__(self):
        ds = self.dataset
        ds.filled, ds.unreadable = ds.images.state()  # before any worker forks
        if len(ds.rows) and ds.filled[ds.rows].all():
            if self._steady is None:
                self._steady = DataLoader(
                    ds, collate_fn=collated, persistent_workers=self.args["num_workers"] > 0, **self.args
                )
            batches = ((x, y) for x, y, _, _ in self._steady)
        else:
            batches = read_through(ds, **self.args)
        for x, y in batches:
            if not self._listed:
                self._list_unreadable()
            if len(y):
                x = self.pipeline.to_model(x, self.device, self.channels_last)
            yield x, y.to(self.device, non_blocking=True)

    def _list_unreadable(self) -> None:
        """Once per run: images found unreadable by an earlier pass (this pass lists its own)."""
        paths = self.dataset.images.dataset.paths
        for row in sorted(self.dataset.unreadable & set(self.dataset.rows.tolist())):
            log.warning(f"skipped unreadable image {paths[row]}")
        self._listed = True


def cache_refusal(rows: DatasetRows, pipeline: Pipeline, enabled: bool = True) -> str | None:
    """Why the decode cache cannot serve this dataset at this pipeline (off, or too large); None if it can."""
    if not enabled:
        return "off (--decode-cache off)"
    try:
        for s in {pipeline.stage(True), pipeline.stage(False)}:
            DecodedImages(rows, s).cache.check_fits()
    except CacheTooLarge as e:
        return str(e)
    return None


def item_bytes(pipeline: Pipeline, cached: bool) -> int:
    """Bytes of one image of a batch as the loader's workers hand it over: uint8 from the decode
    cache (RGB), float32 otherwise (other channel counts, and the transforms of the uncached path)."""
    return pipeline.in_channels * pipeline.image_size**2 * (1 if cached and pipeline.in_channels == 3 else 4)


def make_loaders(
    splits: Splits,
    rows: DatasetRows,
    pipeline: Pipeline,
    batch_size: int,
    seed: int,
    workers: int,
    device: torch.device,
    channels_last: bool = False,
    enabled: bool = True,
    prefetch_factor: int = shared_memory.PREFETCH,
):
    """(train, val, note): loaders over the decode cache, or, where it is off or cannot hold the
    dataset, transforms.make_loaders decoding every image every epoch; the note says which and why.
    `workers` and `prefetch_factor` as given (train.load_data fits them to /dev/shm first: shared_memory.fit)."""
    stages = {pipeline.stage(True), pipeline.stage(False)}
    images = {s: DecodedImages(rows, s) for s in stages}
    refused = cache_refusal(rows, pipeline, enabled)
    train: transforms.EpochLoader | PixelLoader  # transforms' loaders, or the decode cache's
    val: DataLoader | PixelLoader
    if refused is not None:
        train_tf, val_tf = transforms.build_transforms(
            pipeline.pre, pipeline.image_size, pipeline.augment, pipeline.in_channels
        )
        train, val = transforms.make_loaders(
            splits,
            train_tf,
            val_tf,
            batch_size,
            seed,
            workers,
            pin_memory=device.type == "cuda",
            channels=pipeline.in_channels,
            prefetch_factor=prefetch_factor,
        )
        return train, val, {"used": False, "why": refused}
    # drop_last keeps BatchNorm away from a final batch of one image (as transforms.make_loaders).
    drop_last = len(splits.train) > batch_size and len(splits.train) % batch_size == 1
    common: dict[str, Any] = dict(
        pipeline=pipeline,
        device=device,
        batch_size=batch_size,
        workers=workers,
        channels_last=channels_last,
        prefetch_factor=prefetch_factor,
    )
    train = PixelLoader(
        PixelDataset(
            images[pipeline.stage(True)],
            rows.rows(splits.train),
            [it.label for it in splits.train],
            pipeline.train_transform(),
        ),
        shuffle=True,
        seed=seed,
        drop_last=drop_last,
        **common,
    )
    val = PixelLoader(
        PixelDataset(images[pipeline.stage(False)], rows.rows(splits.val), [it.label for it in splits.val]), **common
    )
    return train, val, {"used": True}
