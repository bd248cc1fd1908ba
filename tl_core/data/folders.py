"""Finding a dataset's images: the folder layouts accepted, what is skipped and why.

These layouts are accepted:
  root/train/<class>/*  +  root/val/<class>/*     (split by the user)
  root/train/<class>/*  +  root/val/<class>/*  +  root/test/<class>/*   (the same, with a test split)
  root/train/<class>/*  +  root/test/<class>/*    (val carved from train, splits.py)
  root/<class>/*                                  (split by splits.py: per class, seeded, stratified)
`scan_dataset` lists every usable image as a DatasetIndex; `scan_target` does the same for a
target-domain folder (--target-data), with or without labels. Anything else in the folder (stray
files, unreadable or oversized images, symlinks leading out of it) is skipped and listed with
why; a folder that cannot train is refused with what to do. Each image is checked from its
header only (images.check_header): with `--in-channels N` other than 3, files with another
number of channels are skipped with why, and a class with none of N is refused.
How the images are split is splits.py's; how one is read, images.py's.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import UserError
from . import images


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


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _class_dirs(folder: Path) -> list[Path]:
    # A class folder that is a symlink out of the dataset is not part of it.
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and _inside(d, folder.resolve())),
        key=lambda d: d.name,
    )


def _scan_class(
    folder: Path, label: int, index: DatasetIndex, channels: int = 3, mismatched: Counter | None = None
) -> list[Item]:
    """The usable images in one class folder; files of another channel count are counted in `mismatched`."""
    items = []
    root = Path(index.root)
    # rglob does not descend into symlinked folders, so a symlink loop cannot trap the scan.
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() not in images.image_extensions(channels):
            index.skipped.append((str(path), "not an image file"))
            continue
        if not _inside(path, root):
            index.skipped.append((str(path), "a symlink to a file outside the dataset"))
            continue
        try:
            index.sizes.append(images.check_header(path, channels))
        except images.ChannelMismatch as e:
            index.skipped.append((str(path), str(e)))
            if mismatched is not None:
                mismatched[e.found] += 1
            continue
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            index.skipped.append((str(path), f"refused: larger than {images.MAX_IMAGE_PIXELS:,} pixels ({e})"))
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
            raise UserError(
                f"--in-channels {channels} but the images in {folder / name} have {have} channels; "
                f"pass --in-channels {mismatched.most_common(1)[0][0]}, or save them as {channels}-channel "
                f".npy arrays (H x W x {channels}) or TIFFs"
            )
        if not found:
            raise UserError(
                f"class {name!r} in {folder / name} has no readable images; add images or remove the folder"
            )
        items.extend(found)
    return items


def scan_dataset(root: str | os.PathLike, in_channels: int = 3) -> DatasetIndex:
    """Find classes and images under `root` (of `in_channels` channels); raise UserError for a
    folder that cannot train."""
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(
            f"dataset folder {path} does not exist; pass a folder with one sub-folder "
            f"of images per class (or train/ and val/ folders holding those)"
        )
    if not path.is_dir():
        raise UserError(
            f"dataset path {path} is a file, not a folder; pass the folder that holds "
            f"one sub-folder of images per class"
        )
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
        raise UserError(
            f"train/ and {folder.name}/ in {path} have different classes (only in train: "
            f"{only_train or 'none'}; only in {folder.name}: {only_here or 'none'}); "
            f"give both the same class folders"
        )


def _check_classes(classes: list[str], path: Path) -> None:
    if not classes:
        raise UserError(
            f"dataset folder {path} has no class folders; put each class's images in a sub-folder named after the class"
        )
    if len(classes) < 2:
        raise UserError(
            f"dataset folder {path} has only one class ({classes[0]!r}); a classifier needs at least two class folders"
        )


def skipped_summary(index: DatasetIndex, limit: int = 100) -> dict:
    """The files a scan left out, for a run's summary: how many, and the first `limit` with why."""
    return {"count": len(index.skipped), "files": [{"path": p, "reason": r} for p, r in index.skipped[:limit]]}


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
        raise UserError(
            f"--target-data {path}: no such folder; pass a folder of target-domain images, in class "
            f"folders named as the source's (for target accuracy) or without labels"
        )
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


def _scan_target_folder(
    path: Path, classes: list[str], index: DatasetIndex, in_channels: int, adapted: bool
) -> tuple[list[Item], bool]:
    """The images of one target folder (class folders named as the source's, or none) and whether
    they have labels; `adapted`: trained on, so at least 2 images (a batch of each domain)."""
    folders = _class_dirs(path)
    if folders:
        unknown = [f.name for f in folders if f.name not in classes]
        if unknown:
            raise UserError(
                f"--target-data {path}: its folders {unknown[:5]} are not classes of the source "
                f"({', '.join(classes[:10])}); name its class folders as the source's, put the images "
                f"directly in {path} to adapt without labels, or split it into train/ and val/"
            )
        items = [it for f in folders for it in _scan_class(f, classes.index(f.name), index, in_channels)]
    else:
        items = _scan_class(path, 0, index, in_channels)
    if len(items) < (2 if adapted else 1):
        raise UserError(
            f"--target-data {path}: {len(items)} readable images; domain adaptation needs at least "
            f"{2 if adapted else 1} there (see the skipped files in the run's log)"
        )
    return items, bool(folders)
