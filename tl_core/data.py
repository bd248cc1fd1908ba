"""Datasets: find the images in a folder, split them, read them (no torch: transforms.py).

Two layouts are accepted:
  root/train/<class>/*  +  root/val/<class>/*     (split by the user)
  root/<class>/*                                  (split here: per class, seeded, stratified)
Anything else in the folder (stray files, unreadable or oversized images, symlinks leading out
of it) is skipped and listed with why; a folder that cannot train is refused with what to do.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import settings
from .config import DEFAULT_BATCH_SIZE
from .errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Item:
    path: str
    label: int


@dataclass
class DatasetIndex:
    """Every usable image under a dataset root, and what was skipped."""

    root: str
    layout: str  # "split" (train/ + val/) or "folders" (one folder per class)
    classes: list[str]
    items: dict[str, list[Item]]  # "all" for the folders layout, else "train" and "val"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each image


@dataclass
class Splits:
    classes: list[str]
    train: list[Item]
    val: list[Item]
    index: DatasetIndex


# --- finding images -----------------------------------------------------------------------


# Decompression bombs are refused from the header, before any pixel is decoded.
MAX_IMAGE_PIXELS = settings.current().max_image_pixels
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class UnreadableImage(Exception):
    """An image file that cannot be decoded (truncated, corrupt, too large)."""


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _class_dirs(folder: Path) -> list[Path]:
    # A class folder that is a symlink out of the dataset is not part of it.
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and _inside(d, folder.resolve())), key=lambda d: d.name)


def _open_header(path: Path) -> tuple[int, int]:
    """(width, height) from the header only; refuses images over MAX_IMAGE_PIXELS undecoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
            return img.size


def _scan_class(folder: Path, label: int, index: DatasetIndex) -> list[Item]:
    items = []
    root = Path(index.root)
    # rglob does not descend into symlinked folders, so a symlink loop cannot trap the scan.
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            index.skipped.append((str(path), "not an image file"))
            continue
        if not _inside(path, root):
            index.skipped.append((str(path), "a symlink to a file outside the dataset"))
            continue
        try:
            index.sizes.append(_open_header(path))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            index.skipped.append((str(path), f"refused: larger than {MAX_IMAGE_PIXELS:,} pixels ({e})"))
            continue
        except Exception as e:  # zero-byte, not an image after all, no permission
            index.skipped.append((str(path), f"unreadable: {e.__class__.__name__}: {e}"))
            continue
        items.append(Item(str(path), label))
    return items


def _scan_classes(folder: Path, classes: list[str], index: DatasetIndex) -> list[Item]:
    for loose in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        index.skipped.append((str(loose), "not in a class folder; move it into the folder of its class"))
    items: list[Item] = []
    for label, name in enumerate(classes):
        found = _scan_class(folder / name, label, index)
        if not found:
            raise UserError(f"class {name!r} in {folder / name} has no readable images; "
                            f"add images or remove the folder")
        items.extend(found)
    return items


def scan_dataset(root: str | os.PathLike) -> DatasetIndex:
    """Find classes and images under `root`; raise UserError for a folder that cannot train."""
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"dataset folder {path} does not exist; pass a folder with one sub-folder "
                        f"of images per class (or train/ and val/ folders holding those)")
    if not path.is_dir():
        raise UserError(f"dataset path {path} is a file, not a folder; pass the folder that holds "
                        f"one sub-folder of images per class")
    path = path.resolve()
    train, val = path / "train", path / "val"
    if train.is_dir() and val.is_dir():
        classes = [d.name for d in _class_dirs(train)]
        val_classes = [d.name for d in _class_dirs(val)]
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise UserError(f"train/ and val/ in {path} have different classes (only in train: "
                            f"{only_train or 'none'}; only in val: {only_val or 'none'}); "
                            f"give both the same class folders")
        _check_classes(classes, path)
        index = DatasetIndex(str(path), "split", classes, {})
        index.items["train"] = _scan_classes(train, classes, index)
        index.items["val"] = _scan_classes(val, classes, index)
    else:
        classes = [d.name for d in _class_dirs(path)]
        _check_classes(classes, path)
        index = DatasetIndex(str(path), "folders", classes, {})
        index.items["all"] = _scan_classes(path, classes, index)
    return index


def _check_classes(classes: list[str], path: Path) -> None:
    if not classes:
        raise UserError(f"dataset folder {path} has no class folders; put each class's images in "
                        f"a sub-folder named after the class")
    if len(classes) < 2:
        raise UserError(f"dataset folder {path} has only one class ({classes[0]!r}); a classifier "
                        f"needs at least two class folders")


# --- splitting ------------------------------------------------------------------------------


def _by_class(items: list[Item]) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = {}
    for it in items:
        groups.setdefault(it.label, []).append(it)
    return groups


def _keep_fraction(items: list[Item], fraction: float, rng: random.Random) -> list[Item]:
    """Keep `fraction` of every class (at least one image each), chosen by `rng`."""
    if fraction >= 1.0:
        return items
    kept: list[Item] = []
    for _, group in sorted(_by_class(items).items()):
        group = list(group)
        rng.shuffle(group)
        kept.extend(group[:max(1, round(len(group) * fraction))])
    return sorted(kept, key=lambda it: (it.label, it.path))


def split_dataset(index: DatasetIndex, val_fraction: float = 0.2, train_fraction: float = 1.0,
                  seed: int = 0) -> Splits:
    """Train/val items: the user's split, or a stratified seeded split per class."""
    rng = random.Random(seed)
    if index.layout == "split":
        train, val = list(index.items["train"]), list(index.items["val"])
    else:
        train, val = [], []
        for label, group in sorted(_by_class(index.items["all"]).items()):
            if len(group) < 2:
                raise UserError(f"class {index.classes[label]!r} has {len(group)} image; each class "
                                f"needs at least 2 to be split into train and val")
            group = list(group)
            rng.shuffle(group)
            n_val = min(len(group) - 1, max(1, round(len(group) * val_fraction)))
            val.extend(group[:n_val])
            train.extend(group[n_val:])
        train.sort(key=lambda it: (it.label, it.path))
        val.sort(key=lambda it: (it.label, it.path))
    train = _keep_fraction(train, train_fraction, rng)
    return Splits(index.classes, train, val, index)


def batch_size_for(requested: int | None, n_train: int) -> tuple[int, str | None]:
    """The batch size a run trains with, and a note when it is not the one asked for.

    An explicit size larger than the training set is refused. Without one, the default, or all
    the training images when there are fewer; smaller still where the default would leave a last
    batch of one image (BatchNorm cannot train on a batch of one).
    """
    if requested is not None:
        if requested > n_train:
            raise UserError(f"--batch-size {requested} is larger than the {n_train} training images; "
                            f"use at most {n_train}, or leave it out to let the run choose")
        return requested, None
    size = min(DEFAULT_BATCH_SIZE, n_train)
    while size > 2 and n_train % size == 1:
        size -= 1
    if size == DEFAULT_BATCH_SIZE:
        return size, None
    if size == n_train:
        return size, (f"batch size {size}: the default {DEFAULT_BATCH_SIZE} is more than the {n_train} "
                      f"training images, so each epoch is one batch of all of them")
    return size, (f"batch size {size}, not {min(DEFAULT_BATCH_SIZE, n_train)}: {n_train} training images would "
                  f"leave a last batch of one image, which BatchNorm cannot train on")


def split_fingerprint(splits: Splits) -> str:
    """A digest of which images are in the validation set: equal for runs that share their split."""
    paths = sorted(os.path.relpath(it.path, splits.index.root) for it in splits.val)
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


def skipped_summary(index: DatasetIndex, limit: int = 100) -> dict:
    """The files a scan left out, for a run's summary: how many, and the first `limit` with why."""
    return {"count": len(index.skipped),
            "files": [{"path": p, "reason": r} for p, r in index.skipped[:limit]]}


# --- images and transforms -----------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit and float scaled, alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        arr = arr / hi * 255 if hi > 255 else arr
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str) -> Image.Image:
    """Decode to RGB; UnreadableImage if the file is truncated, corrupt or a decompression bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"{path}: {e.__class__.__name__}: {e}") from None


# --- the report ---------------------------------------------------------------------------


def dataset_report(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Classes, images per class per split, image sizes, skipped files: for the CLI and UI."""
    index = scan_dataset(root)
    splits = split_dataset(index, val_fraction=val_fraction, seed=seed)
    train_counts = Counter(it.label for it in splits.train)
    val_counts = Counter(it.label for it in splits.val)
    widths = [w for w, _ in index.sizes] or [0]
    heights = [h for _, h in index.sizes] or [0]
    per_class = {name: {"train": train_counts[i], "val": val_counts[i]} for i, name in enumerate(index.classes)}
    totals = [c["train"] + c["val"] for c in per_class.values()]
    warnings = []
    if max(totals) >= 3 * max(1, min(totals)):
        warnings.append(f"imbalanced classes: {min(totals)} to {max(totals)} images per class")
    few = [n for n, c in per_class.items() if c["train"] + c["val"] < 10]
    if few:
        warnings.append(f"classes with fewer than 10 images: {', '.join(few)}")
    if index.skipped:
        warnings.append(f"{len(index.skipped)} files skipped (not images or unreadable)")
    return {
        "root": index.root,
        "layout": index.layout,
        "classes": index.classes,
        "num_classes": len(index.classes),
        "per_class": per_class,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "image_size": {"min": [min(widths), min(heights)], "max": [max(widths), max(heights)],
                       "median": [int(np.median(widths)), int(np.median(heights))]},
        "skipped": [{"path": p, "reason": r} for p, r in index.skipped],
        "warnings": warnings,
    }
