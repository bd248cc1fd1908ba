"""Datasets: find the images in a folder, split them, read them (no torch: transforms.py).

These layouts are accepted:
  root/train/<class>/*  +  root/val/<class>/*     (split by the user)
  root/train/<class>/*  +  root/val/<class>/*  +  root/test/<class>/*   (the same, with a test split)
  root/train/<class>/*  +  root/test/<class>/*    (val carved from train here, as below)
  root/<class>/*                                  (split here: per class, seeded, stratified)
The test split is held out: a run chooses its epoch on val and reports on test once (train.py).
Where the folder has no test/, `--test-fraction F` carves one: F of every class's images (of
train/ where the user split train and val), by the split seed, before anything else is split,
so the val and train fractions come from the rest. F = 0 (the default) splits as before.
Anything else in the folder (stray files, unreadable or oversized images, symlinks leading out
of it) is skipped and listed with why; a folder that cannot train is refused with what to do.

Images are RGB (`load_image`) unless a run asks for `--in-channels N` other than 3; then
`load_pixels` reads (N, H, W) float32 (the "Other channel counts" section says how), files with
another number of channels are skipped with why, and a class with none of N is refused.
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

from .. import settings
from ..config import DEFAULT_BATCH_SIZE
from ..errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ARRAY_EXTENSIONS = {".npy"}  # read only with --in-channels other than 3


def image_extensions(channels: int = 3) -> set[str]:
    """The file types a scan reads for images of `channels` channels."""
    return IMAGE_EXTENSIONS if channels == 3 else IMAGE_EXTENSIONS | ARRAY_EXTENSIONS


@dataclass
class Item:
    path: str
    label: int


@dataclass
class DatasetIndex:
    """Every usable image under a dataset root, and what was skipped."""

    root: str
    layout: str  # "split" (train/ + val/, maybe test/), "train_test" (train/ + test/) or "folders" (one per class)
    classes: list[str]
    items: dict[str, list[Item]]  # "all" for the folders layout, else "train" and "val" and/or "test"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each image


@dataclass
class Splits:
    classes: list[str]
    train: list[Item]
    val: list[Item]
    index: DatasetIndex
    test: list[Item] = field(default_factory=list)  # held out: read once, after training; empty if none


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


def check_header(path: Path, channels: int = 3) -> tuple[int, int]:
    """(width, height) of one image from its header, as a scan reads it: raises for a file that is
    not an image, one of another channel count, or one over MAX_IMAGE_PIXELS (undecoded)."""
    return _open_header(path) if channels == 3 else _probe(path, channels)


def check_image(path: str | Path, channels: int = 3, decode: bool = False) -> str | None:
    """Why `path` cannot be used as an image (its type, its header, its size; with `decode`, its
    pixels too), or None: what a scan checks, worded for a file someone handed over (an upload, a
    path to predict on)."""
    p = Path(path)
    if p.suffix.lower() not in image_extensions(channels):
        return (f"{p.name}: not an image file type TransferLab reads ({p.suffix or 'no extension'}); "
                f"use one of {', '.join(sorted(image_extensions(channels)))}")
    try:
        check_header(p, channels)
        if decode:
            load_image(str(p)) if channels == 3 else load_pixels(str(p), channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"{p.name}: refused, larger than {MAX_IMAGE_PIXELS:,} pixels ({e}); resize it first"
    except Exception as e:  # not an image after all, truncated, empty file
        return f"{p.name}: not a readable image ({type(e).__name__}: {e}); check the file is not corrupt"
    return None


def _scan_class(folder: Path, label: int, index: DatasetIndex, channels: int = 3,
                mismatched: Counter | None = None) -> list[Item]:
    """The usable images in one class folder; files of another channel count are counted in `mismatched`."""
    items = []
    root = Path(index.root)
    # rglob does not descend into symlinked folders, so a symlink loop cannot trap the scan.
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() not in image_extensions(channels):
            index.skipped.append((str(path), "not an image file"))
            continue
        if not _inside(path, root):
            index.skipped.append((str(path), "a symlink to a file outside the dataset"))
            continue
        try:
            index.sizes.append(_open_header(path) if channels == 3 else _probe(path, channels))
        except ChannelMismatch as e:
            index.skipped.append((str(path), str(e)))
            if mismatched is not None:
                mismatched[e.found] += 1
            continue
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            index.skipped.append((str(path), f"refused: larger than {MAX_IMAGE_PIXELS:,} pixels ({e})"))
            continue
        except Exception as e:  # zero-byte, not an image after all, no permission
            index.skipped.append((str(path), f"unreadable: {e.__class__.__name__}: {e}"))
            continue
        items.append(Item(str(path), label))
    return items


def _scan_classes(folder: Path, classes: list[str], index: DatasetIndex, channels: int = 3) -> list[Item]:
    for loose in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        index.skipped.append((str(loose), "not in a class folder; move it into the folder of its class"))
    items: list[Item] = []
    for label, name in enumerate(classes):
        mismatched: Counter = Counter()
        found = _scan_class(folder / name, label, index, channels, mismatched)
        if not found and mismatched:
            have = " or ".join(str(c) for c, _ in mismatched.most_common())
            raise UserError(f"--in-channels {channels} but the images in {folder / name} have {have} channels; "
                            f"pass --in-channels {mismatched.most_common(1)[0][0]}, or save them as {channels}-channel "
                            f".npy arrays (H x W x {channels}) or TIFFs")
        if not found:
            raise UserError(f"class {name!r} in {folder / name} has no readable images; "
                            f"add images or remove the folder")
        items.extend(found)
    return items


def scan_dataset(root: str | os.PathLike, in_channels: int = 3) -> DatasetIndex:
    """Find classes and images under `root` (of `in_channels` channels); raise UserError for a
    folder that cannot train."""
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"dataset folder {path} does not exist; pass a folder with one sub-folder "
                        f"of images per class (or train/ and val/ folders holding those)")
    if not path.is_dir():
        raise UserError(f"dataset path {path} is a file, not a folder; pass the folder that holds "
                        f"one sub-folder of images per class")
    path = path.resolve()
    train, val, test = path / "train", path / "val", path / "test"
    if train.is_dir() and (val.is_dir() or test.is_dir()):
        classes = [d.name for d in _class_dirs(train)]
        held = [f for f in (val, test) if f.is_dir()]
        for folder in held:
            _same_classes(classes, folder, path)
        _check_classes(classes, path)
        index = DatasetIndex(str(path), "split" if val.is_dir() else "train_test", classes, {})
        for folder in (train, *held):
            index.items[folder.name] = _scan_classes(folder, classes, index, in_channels)
    else:
        classes = [d.name for d in _class_dirs(path)]
        _check_classes(classes, path)
        index = DatasetIndex(str(path), "folders", classes, {})
        index.items["all"] = _scan_classes(path, classes, index, in_channels)
    return index


def _same_classes(classes: list[str], folder: Path, path: Path) -> None:
    """Refuse a val/ or test/ folder whose class folders are not train/'s."""
    found = [d.name for d in _class_dirs(folder)]
    if found != classes:
        only_train = sorted(set(classes) - set(found))
        only_here = sorted(set(found) - set(classes))
        raise UserError(f"train/ and {folder.name}/ in {path} have different classes (only in train: "
                        f"{only_train or 'none'}; only in {folder.name}: {only_here or 'none'}); "
                        f"give both the same class folders")


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
                  seed: int = 0, test_fraction: float = 0.0) -> Splits:
    """Train/val (and test) items: the user's split, or a stratified seeded split per class.

    The test split is the folder's test/, or, with `test_fraction` > 0, carved first (stratified,
    by its own stream of `seed`) from the images the rest is split from; with 0 every other
    draw is exactly as before test splits existed.
    """
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction {test_fraction:g}: give a share of every class's images from 0 (no test "
                        f"split) up to, not including, 1")
    rng = random.Random(seed)
    test = list(index.items.get("test", []))
    if test_fraction and test:
        raise UserError(f"--test-fraction {test_fraction:g}: {index.root} has its own test/ folder, which is the "
                        f"test split; leave --test-fraction at 0, or remove the test/ folder to carve one")
    if index.layout == "split":  # the user's train and val
        train, val = list(index.items["train"]), list(index.items["val"])
        if test_fraction:
            test, train = _carve_test(train, test_fraction, seed, index, keep=1)
    else:  # val carved from one folder per class (or from train/, beside the user's test/)
        pool = index.items["all"] if index.layout == "folders" else index.items["train"]
        if test_fraction:
            test, pool = _carve_test(pool, test_fraction, seed, index, keep=2)
        train, val = _carve_val(pool, val_fraction, rng, index)
    train = _keep_fraction(train, train_fraction, rng)
    return Splits(index.classes, train, val, index, sorted(test, key=lambda it: (it.label, it.path)))


def _carve_val(items: list[Item], val_fraction: float, rng: random.Random,
               index: DatasetIndex) -> tuple[list[Item], list[Item]]:
    """(train, val): `val_fraction` of every class (at least one, never all) to val, drawn by `rng`."""
    train, val = [], []
    for label, group in sorted(_by_class(items).items()):
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
    return train, val


def _carve_test(items: list[Item], fraction: float, seed: int, index: DatasetIndex,
                keep: int) -> tuple[list[Item], list[Item]]:
    """(test, rest): `fraction` of every class (at least one) held out, leaving each class at
    least `keep` images (2 where val is carved from the rest, 1 beside the user's val/).

    Drawn from a stream of its own ("test/<seed>"), so the draws that split the rest are those
    a split without a test split makes: the same seed gives the same test split whatever the
    val and train fractions.
    """
    rng = random.Random(f"test/{seed}")
    test, rest = [], []
    for label, group in sorted(_by_class(items).items()):
        group = sorted(group, key=lambda it: it.path)
        rng.shuffle(group)
        n_test = max(1, round(len(group) * fraction))
        if len(group) - n_test < keep:
            needs = "training and validation" if keep > 1 else "training"
            raise UserError(f"--test-fraction {fraction:g}: class {index.classes[label]!r} has {len(group)} images, "
                            f"and holding {n_test} out for test leaves {len(group) - n_test} for {needs} "
                            f"(at least {keep} needed); lower --test-fraction or add images to that class")
        test.extend(group[:n_test])
        rest.extend(group[n_test:])
    return test, sorted(rest, key=lambda it: (it.label, it.path))


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


def class_weights(items: list[Item], classes: list[str]) -> list[float]:
    """--class-weights auto: each class's weight in the cross-entropy, inverse to its count in
    `items` (the training split), normalised to mean 1 (a balanced split weighs every class 1).

    Proportional to scikit-learn's "balanced" weights, n / (k * n_c). PyTorch's weighted mean
    divides by the batch's summed weights, so the scale changes no gradient; mean 1 keeps the
    numbers readable.
    """
    counts = Counter(it.label for it in items)
    if missing := [name for i, name in enumerate(classes) if not counts[i]]:
        raise UserError(f"--class-weights auto: classes {missing[:5]} have no training images to weigh by; "
                        f"add images to them or use --class-weights none")
    inverse = [1.0 / counts[i] for i in range(len(classes))]
    mean = sum(inverse) / len(inverse)
    return [w / mean for w in inverse]


def split_fingerprint(splits: Splits) -> str:
    """A digest of which images are in the validation set (and the test set, where there is one):
    equal for runs that share their split. Without a test split it is the digest of val alone,
    as it was before test splits existed."""
    paths = sorted(os.path.relpath(it.path, splits.index.root) for it in splits.val)
    if splits.test:
        paths += ["--test--", *sorted(os.path.relpath(it.path, splits.index.root) for it in splits.test)]
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


# --- other channel counts: --in-channels N, N != 3 ------------------------------------------------
#
# Every file becomes (N, H, W) float32, its values scaled by its type: uint8 / 255, uint16 / 65535,
# bool as 0 / 1, float as it is (not-a-number and infinities read as 0); other types are skipped.
#   .npy         H x W x N, channels last, as images are (a 2-D array is one channel). Never
#                guessed: a channels-first array is skipped, with the np.moveaxis that fixes it.
#   .tif .tiff   read with tifffile (multi-band, any bit depth). Its own axes metadata says
#                where the bands are: samples last (contiguous, "YXS") or bands first (planar
#                "SYX", or one band per page).
#   other        through PIL. N = 1: converted to one gray channel (colour to L, 16-bit kept
#                16-bit). Other N: the image's own bands (L 1, LA 2, RGB 3, RGBA 4).


class ChannelMismatch(ValueError):
    """A file with another number of channels than the run's --in-channels."""

    def __init__(self, found: int, channels: int, hint: str = ""):
        super().__init__(f"{found} channels, not the {channels} of --in-channels {channels}{hint}")
        self.found = found


_SCALES = {np.uint8: 255.0, np.uint16: 65535.0, np.bool_: 1.0}
_ONE_BAND = ("I;16", "I;16B", "I;16L", "I", "F", "1")  # PIL modes read as they are: one band, any depth


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "npy" if suffix == ".npy" else "tiff" if suffix in (".tif", ".tiff") else "pil"


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind != "f" and dtype.type not in _SCALES:
        raise ValueError(f"pixels of type {dtype}; save uint8, uint16 or float arrays")


def _hwc(shape: tuple[int, ...], channels: int, where: str) -> tuple[int, int, int]:
    """(height, width, channels) of an H x W (x C) array; a channels-first one is refused."""
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) != 3:
        raise ValueError(f"{where} of shape {shape}; expected H x W x channels")
    h, w, c = shape
    if c != channels and shape[0] == channels:
        raise ChannelMismatch(c, channels, f" (shape {shape} looks channels-first: save it as H x W x C, "
                                           f"np.moveaxis(a, 0, -1))")
    return h, w, c


def _tiff_axes(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], bool]:
    """(shape as H x W x C, whether the bands come first) from tifffile's series axes."""
    if len(shape) == 3 and not axes.endswith("S") and axes.endswith("YX"):
        return (shape[1], shape[2], shape[0]), True  # planar bands, or one band per page
    return tuple(shape), False


def _pil_mode(img: Image.Image, channels: int) -> Image.Image:
    """The image in the mode whose bands are read: one gray band for N = 1; else its own bands."""
    if img.mode in _ONE_BAND:
        return img
    if channels == 1:
        return to_rgb(img).convert("L")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img


def _probe(path: Path, channels: int) -> tuple[int, int]:
    """(width, height) from the header only, checking channels and type; ChannelMismatch if it has other channels."""
    kind = _kind(path)
    if kind == "pil":
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                found = 1 if channels == 1 else Image.getmodebands(_pil_mode_name(img))
                (w, h), dtype = img.size, None
    elif kind == "npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # the header, not the data
        (h, w, found), dtype = _hwc(arr.shape, channels, "an array"), arr.dtype
    else:
        import tifffile  # multi-band TIFF: PIL reads only 1, 3 or 4 8-bit bands

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, _ = _tiff_axes(series.shape, series.axes)
            (h, w, found), dtype = _hwc(shape, channels, f"a TIFF ({series.axes})"), series.dtype
    if dtype is not None:
        _check_dtype(np.dtype(dtype))
    if w * h > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{w}x{h} pixels")
    if found != channels:
        raise ChannelMismatch(found, channels)
    return w, h


def _pil_mode_name(img: Image.Image) -> str:
    """The mode _pil_mode converts `img` to, from its header (N != 1)."""
    if img.mode == "P":
        return "RGBA" if "transparency" in img.info else "RGB"
    return "L" if img.mode in _ONE_BAND else img.mode


def _read_hwc(path: Path, channels: int) -> np.ndarray:
    kind = _kind(path)
    if kind == "npy":
        arr = np.load(path, allow_pickle=False)
        _hwc(arr.shape, channels, "an array")
    elif kind == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr = series.asarray()
            if _tiff_axes(series.shape, series.axes)[1]:
                arr = np.moveaxis(arr, 0, -1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                arr = np.asarray(_pil_mode(img, channels))
        if arr.dtype == np.int32:  # PIL's mode I: 16-bit images read as 32-bit integers
            arr = arr.clip(0, 65535).astype(np.uint16)
    return arr[..., None] if arr.ndim == 2 else arr


def load_pixels(path: str, channels: int) -> np.ndarray:
    """An image as --in-channels `channels` reads it: (channels, H, W) float32, scaled by its type.

    UnreadableImage if it cannot be read, or no longer has `channels` channels. (Three channels
    are read by load_image, as RGB.)
    """
    try:
        arr = _read_hwc(Path(path), channels)
        if arr.shape[2] != channels:
            raise ChannelMismatch(arr.shape[2], channels)
        _check_dtype(arr.dtype)
        if arr.dtype.kind == "f":
            out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        else:
            out = arr.astype(np.float32) / _SCALES[arr.dtype.type]
        return np.ascontiguousarray(out.transpose(2, 0, 1))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"{path}: {e.__class__.__name__}: {e}") from None


# --- the report ---------------------------------------------------------------------------


def dataset_report(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0,
                   test_fraction: float = 0.0) -> dict:
    """Classes, images per class per split (train, val, test), image sizes, skipped files: for the CLI and UI."""
    index = scan_dataset(root)
    splits = split_dataset(index, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction)
    counts = {name: Counter(it.label for it in items)
              for name, items in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    widths = [w for w, _ in index.sizes] or [0]
    heights = [h for _, h in index.sizes] or [0]
    per_class = {name: {split: counts[split][i] for split in counts} for i, name in enumerate(index.classes)}
    totals = [sum(c.values()) for c in per_class.values()]
    warnings = []
    if max(totals) >= 3 * max(1, min(totals)):
        warnings.append(f"imbalanced classes: {min(totals)} to {max(totals)} images per class")
    few = [n for n, c in per_class.items() if sum(c.values()) < 10]
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
        "test_images": len(splits.test),
        "test_split": ("test/ folder" if "test" in index.items else
                       f"--test-fraction {test_fraction:g} of every class" if splits.test else "none"),
        "image_size": {"min": [min(widths), min(heights)], "max": [max(widths), max(heights)],
                       "median": [int(np.median(widths)), int(np.median(heights))]},
        "skipped": [{"path": p, "reason": r} for p, r in index.skipped],
        "warnings": warnings,
    }


def scan_target(root: str | os.PathLike, classes: list[str], in_channels: int = 3) -> tuple[DatasetIndex, bool]:
    """A target-domain folder (--target-data) and whether its evaluation images have labels.

    The layouts --data accepts, each folder with or without labels:
      root/<class>/*  or  root/* (no labels)       one set: adapted on and, labelled, evaluated on
                                                   (the transductive protocol of domain adaptation);
      root/train/...  +  root/val/...              train/ adapted on, val/ evaluated on: labelled
                                                   when val/ holds class folders.
    Class folders named as the source's classes (all or some of them) give labels, used for
    evaluation only; images with no class folders are the unlabelled target that domain
    adaptation needs. The images are in `items["train"]` and `items["val"]` (the same list for a
    single folder, also as `items["all"]`), labelled by the source's class indices.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"--target-data {path}: no such folder; pass a folder of target-domain images, in class "
                        f"folders named as the source's (for target accuracy) or without labels")
    path = path.resolve()
    train, val = path / "train", path / "val"
    if train.is_dir() and val.is_dir() and not {"train", "val"} & set(classes):
        index = DatasetIndex(str(path), "split", list(classes), {})
        index.items["train"], _ = _scan_target_folder(train, classes, index, in_channels, adapted=True)
        index.items["val"], labelled = _scan_target_folder(val, classes, index, in_channels, adapted=False)
        return index, labelled
    index = DatasetIndex(str(path), "folders", list(classes), {})
    items, labelled = _scan_target_folder(path, classes, index, in_channels, adapted=True)
    index.items.update(all=items, train=items, val=items)
    return index, labelled


def _scan_target_folder(path: Path, classes: list[str], index: DatasetIndex, in_channels: int,
                        adapted: bool) -> tuple[list[Item], bool]:
    """The images of one target folder (class folders named as the source's, or none) and whether
    they have labels; `adapted`: trained on, so at least 2 images (a batch of each domain)."""
    folders = _class_dirs(path)
    if folders:
        unknown = [f.name for f in folders if f.name not in classes]
        if unknown:
            raise UserError(f"--target-data {path}: its folders {unknown[:5]} are not classes of the source "
                            f"({', '.join(classes[:10])}); name its class folders as the source's, put the images "
                            f"directly in {path} to adapt without labels, or split it into train/ and val/")
        items = [it for f in folders for it in _scan_class(f, classes.index(f.name), index, in_channels)]
    else:
        items = _scan_class(path, 0, index, in_channels)
    if len(items) < (2 if adapted else 1):
        raise UserError(f"--target-data {path}: {len(items)} readable images; domain adaptation needs at least "
                        f"{2 if adapted else 1} there (see the skipped files in the run's log)")
    return items, bool(folders)
