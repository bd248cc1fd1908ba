"""Splitting a dataset: train, val and the held-out test split; what a split decides for a run.

`split_dataset` keeps the user's train/ and val/ (and test/), or splits one folder per class
itself: per class, seeded, stratified. The test split is held out: a run chooses its epoch on
val and reports on test once (training/run.py). Where the folder has no test/,
`--test-fraction F` carves one: F of every class's images (of train/ where the user split train
and val), by the split seed, before anything else is split, so the val and train fractions come
from the rest. F = 0 (the default) splits as before.
Also from a split: the batch size a run trains with (`batch_size_for`, DEFAULT_BATCH_SIZE, which
config.py reads from here), --class-weights auto (`class_weights`), the fingerprint that says two
runs share their split (`split_fingerprint`), and a dataset's report for the CLI and the UI
(`dataset_report`).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .exclusions import Applied, Exclusion, apply
from .folders import DatasetIndex, Item, scan_dataset

DEFAULT_BATCH_SIZE = 32  # images per batch where a run does not say (batch_size_for)


@dataclass
class Splits:
    classes: list[str]
    train: list[Item]
    val: list[Item]
    index: DatasetIndex
    test: list[Item] = field(default_factory=list)  # held out: read once, after training; empty if none
    applied: Applied = field(default_factory=Applied)  # the run's exclusions, as they were applied


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
        kept.extend(group[: max(1, round(len(group) * fraction))])
    return sorted(kept, key=lambda it: (it.label, it.path))


def split_dataset(
    index: DatasetIndex,
    val_fraction: float = 0.2,
    train_fraction: float = 1.0,
    seed: int = 0,
    test_fraction: float = 0.0,
    exclude: Sequence[Exclusion] = (),
) -> Splits:
    """Train/val (and test) items: the user's split, or a stratified seeded split per class.

    `exclude` is applied before anything is split (exclusions.py): excluded images are in no
    split, relabelled ones are drawn with their new class. The test split is the folder's test/,
    or, with `test_fraction` > 0, carved first (stratified, by its own stream of `seed`) from the
    images the rest is split from; with 0 every other draw is exactly as before test splits existed.
    Splits.index stays the folder as scanned (every image has its row in the caches).
    """
    scanned = index
    index, applied = apply(index, exclude)
    if not 0 <= test_fraction < 1:
        raise UserError(
            f"--test-fraction {test_fraction:g}: give a share of every class's images from 0 (no test "
            f"split) up to, not including, 1"
        )
    rng = random.Random(seed)
    test = list(index.items.get("test", []))
    if test_fraction and test:
        raise UserError(
            f"--test-fraction {test_fraction:g}: {index.root} has its own test/ folder, which is the "
            f"test split; leave --test-fraction at 0, or remove the test/ folder to carve one"
        )
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
    return Splits(index.classes, train, val, scanned, sorted(test, key=lambda it: (it.label, it.path)), applied)


def _carve_val(
    items: list[Item], val_fraction: float, rng: random.Random, index: DatasetIndex
) -> tuple[list[Item], list[Item]]:
    """(train, val): `val_fraction` of every class (at least one, never all) to val, drawn by `rng`."""
    train, val = [], []
    for label, group in sorted(_by_class(items).items()):
        if len(group) < 2:
            raise UserError(
                f"class {index.classes[label]!r} has {len(group)} image; each class "
                f"needs at least 2 to be split into train and val"
            )
        group = list(group)
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * val_fraction)))
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    train.sort(key=lambda it: (it.label, it.path))
    val.sort(key=lambda it: (it.label, it.path))
    return train, val


def _carve_test(
    items: list[Item], fraction: float, seed: int, index: DatasetIndex, keep: int
) -> tuple[list[Item], list[Item]]:
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
            raise UserError(
                f"--test-fraction {fraction:g}: class {index.classes[label]!r} has {len(group)} images, "
                f"and holding {n_test} out for test leaves {len(group) - n_test} for {needs} "
                f"(at least {keep} needed); lower --test-fraction or add images to that class"
            )
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
            raise UserError(
                f"--batch-size {requested} is larger than the {n_train} training images; "
                f"use at most {n_train}, or leave it out to let the run choose"
            )
        return requested, None
    size = min(DEFAULT_BATCH_SIZE, n_train)
    while size > 2 and n_train % size == 1:
        size -= 1
    if size == DEFAULT_BATCH_SIZE:
        return size, None
    if size == n_train:
        return size, (
            f"batch size {size}: the default {DEFAULT_BATCH_SIZE} is more than the {n_train} "
            f"training images, so each epoch is one batch of all of them"
        )
    return size, (
        f"batch size {size}, not {min(DEFAULT_BATCH_SIZE, n_train)}: {n_train} training images would "
        f"leave a last batch of one image, which BatchNorm cannot train on"
    )


def class_weights(items: list[Item], classes: list[str]) -> list[float]:
    """--class-weights auto: each class's weight in the cross-entropy, inverse to its count in
    `items` (the training split), normalised to mean 1 (a balanced split weighs every class 1).

    Proportional to scikit-learn's "balanced" weights, n / (k * n_c). PyTorch's weighted mean
    divides by the batch's summed weights, so the scale changes no gradient; mean 1 keeps the
    numbers readable.
    """
    counts = Counter(it.label for it in items)
    if missing := [name for i, name in enumerate(classes) if not counts[i]]:
        raise UserError(
            f"--class-weights auto: classes {missing[:5]} have no training images to weigh by; "
            f"add images to them or use --class-weights none"
        )
    inverse = [1.0 / counts[i] for i in range(len(classes))]
    mean = sum(inverse) / len(inverse)
    return [w / mean for w in inverse]


def split_fingerprint(splits: Splits) -> str:
    """A digest of which images are in the validation set (and the test set, where there is one),
    and which images the run's exclusions relabelled: equal for runs that share their split.
    Without a test split or exclusions it is the digest of val alone, as it was before either existed."""
    paths = sorted(os.path.relpath(it.path, splits.index.root) for it in splits.val)
    if splits.test:
        paths += ["--test--", *sorted(os.path.relpath(it.path, splits.index.root) for it in splits.test)]
    if splits.applied.relabelled:  # the same images, some under another class: not the same split
        paths += ["--relabelled--", *(f"{p}\t{to}" for p, to in sorted(splits.applied.moved_to.items()))]
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


def dataset_report(
    root: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    test_fraction: float = 0.0,
    exclude: Sequence[Exclusion] = (),
) -> dict:
    """Classes, images per class per split (train, val, test), image sizes, skipped files: for the CLI and UI.
    With `exclude`, the counts are those a run with these exclusions splits (what was applied: `applied`)."""
    index = scan_dataset(root)
    splits = split_dataset(index, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction, exclude=exclude)
    counts = {
        name: Counter(it.label for it in items)
        for name, items in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
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
        "test_split": (
            "test/ folder"
            if "test" in index.items
            else f"--test-fraction {test_fraction:g} of every class"
            if splits.test
            else "none"
        ),
        "image_size": {
            "min": [min(widths), min(heights)],
            "max": [max(widths), max(heights)],
            "median": [int(np.median(widths)), int(np.median(heights))],
        },
        "skipped": [{"path": p, "reason": r} for p, r in index.skipped],
        "warnings": warnings,
        "applied": splits.applied.to_dict(),
    }
