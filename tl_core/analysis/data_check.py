"""Check the data before training: likely label errors, duplicates and leaks across splits, class
imbalance, unreadable files, outliers.

`check_data(cfg)` reads every image of the folder `cfg.data` names, in the splits a run of `cfg`
would use (its split seed, val and test fractions: train, val AND test), and reports:
  - label_issues: likely label errors, most likely first (label_issues.py: k-fold out-of-sample
    probabilities of a linear model on the frozen features, ranked by cleanlab); each with its
    `path`, `split`, `label` (its folder's class), `suggested` (the likeliest other class) and
    `score` (the out-of-sample probability of its label: lower, likelier an error);
  - duplicates: groups of exact copies (the same bytes) and near copies (cosine similarity of the
    L2-normalised embeddings at or above duplicates.NEAR_AT, calibrated there), each
    {"kind": "exact"|"near", "cross_split", "similarity", "images": [{"path", "split", "label"}]};
    groups spanning splits first (a leak: the same picture trained on and scored on);
  - class counts per split and the imbalance (largest class over smallest, the whole folder);
  - the files the scan skipped and why (folders.py, as `dataset` reports them) and the images that
    could not be decoded (`unreadable`);
  - outliers: images far from every class, farthest first: `score` is 1 - the highest cosine
    similarity of the image's embedding to a class centroid (the normalised mean of that class's
    train and val embeddings), flagged when its robust z-score (median and MAD of all scores) is
    above OUTLIER_Z (Iglewicz and Hoaglin's 3.5).
The features are the probe's (data_probe.frozen_activations: the body's output at the head input,
at the weights' native size unless `image_size` says otherwise, through the feature cache: a
probe, a ranking or a feature_extraction run at that size shares them). Nothing here learns from
or chooses with the test split: the linear model and the centroids are fit on train and val, and
the test images are only scored (and their copies in train or val reported).

`check_features` is the check itself on features already computed (what bench/check_data.py times).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..config import RunConfig, make_config
from ..data import decode_cache, folders, scan_cache
from ..data.splits import Splits, split_dataset
from ..errors import UserError
from ..models import weights
from ..training.loop import seed_everything
from ..training.startup import pick_device
from . import duplicates
from .data_probe import frozen_activations
from .label_issues import label_issues

SPLITS = ("train", "val", "test")
OUTLIER_Z = 3.5  # a robust z-score (0.6745 (x - median) / MAD) above this is an outlier (Iglewicz & Hoaglin 1993)
LIMIT = 1000  # entries kept per finding (the `found` counts say how many there were)


@dataclass(frozen=True)
class Image:
    """One image of the folder, as the check names it: its path, split and class index."""

    path: str
    split: str  # "train" | "val" | "test"
    label: int


@dataclass
class Findings:
    """What the check found on the features: plain dicts, as the JSON carries them."""

    label_issues: list[dict]
    duplicates: list[dict]
    outliers: list[dict]
    found: dict[str, int]  # how many of each, before LIMIT
    seconds: dict[str, float]  # each finding's time: {"label_issues", "duplicates", "outliers"}


@dataclass
class DataCheck:
    """The whole report of `check_data`."""

    data: str
    backbone: str
    image_size: int
    classes: list[str]
    images: int  # every image of the folder, all splits
    counts: dict[str, dict[str, int]]  # split -> class -> images
    imbalance: dict  # {"ratio": largest / smallest class, "largest": class, "smallest": class}
    label_issues: list[dict]
    duplicates: list[dict]
    outliers: list[dict]
    found: dict[str, int]
    skipped: dict  # folders.skipped_summary: {"count", "files": [{"path", "reason"}]}
    unreadable: list[dict]  # scanned, but could not be decoded: {"path", "split", "label"}
    folds: int
    near_threshold: float
    seconds: dict = field(
        default_factory=dict
    )  # {"features", "label_issues", "duplicates", "outliers", "check", "total"}
    feature_cache: str = "computed"  # "hit" | "computed"

    def to_dict(self) -> dict:
        return asdict(self)


# --- the check on features --------------------------------------------------------------------


def check_folds(labels: np.ndarray, learn: np.ndarray, classes: Sequence[str], folds: int) -> None:
    """Refuse a check whose k-fold model cannot see every class in every fold."""
    if folds < 2:
        raise UserError(f"--folds {folds}: the out-of-sample probabilities need at least 2 folds; pass --folds 5")
    counts = np.bincount(labels[learn], minlength=len(classes))
    short = [f"{classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < folds).tolist()]
    if short:
        raise UserError(
            f"too few images for {folds}-fold label checking: class {', '.join(short[:5])} "
            f"{'has' if len(short) == 1 else 'have'} fewer than {folds} readable train and val images; "
            f"pass a smaller --folds (at least 2) or add images to {'that class' if len(short) == 1 else 'those classes'}"
        )


def _named(img: Image, classes: Sequence[str]) -> dict:
    return {"path": img.path, "split": img.split, "label": classes[img.label]}


def _duplicate_groups(
    images: Sequence[Image], digests: Sequence[str], unit: np.ndarray, featured: np.ndarray, threshold: float
) -> list[tuple[str, duplicates.Group]]:
    """("exact" | "near", group of image indices): exact copies over every image; near copies over
    the featured ones, from pairs that are not exact copies (those are the exact groups)."""
    left, right = duplicates.exact_pairs(digests)
    found = [("exact", g) for g in duplicates.groups(len(images), left, right, np.ones(len(left), np.float32))]
    i, j, sims = duplicates.near_pairs(unit, threshold)
    i, j = featured[i], featured[j]  # rows of the features -> images
    differ = np.asarray([digests[a] != digests[b] for a, b in zip(i.tolist(), j.tolist(), strict=True)], dtype=bool)
    if len(i):
        found += [("near", g) for g in duplicates.groups(len(images), i[differ], j[differ], sims[differ])]
    return found


def _outliers(
    unit: np.ndarray, labels: np.ndarray, learn: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows flagged, farthest first; every row's score): 1 - the highest cosine to a class centroid
    (of the train and val rows), flagged above OUTLIER_Z robust z-scores."""
    centroids = np.zeros((num_classes, unit.shape[1]), np.float32)
    np.add.at(centroids, labels[learn], unit[learn])
    scores = 1.0 - (unit @ duplicates.unit_rows(centroids).T).max(axis=1)
    median = np.median(scores)
    mad = np.median(np.abs(scores - median))
    if mad <= 0:
        return np.zeros(0, np.int64), scores
    z = 0.6745 * (scores - median) / mad
    flagged = np.flatnonzero(z > OUTLIER_Z)
    return flagged[np.argsort(-scores[flagged], kind="stable")], scores


def check_features(
    images: Sequence[Image],
    digests: Sequence[str],
    features: np.ndarray,
    featured: np.ndarray,
    classes: Sequence[str],
    *,
    folds: int = 5,
    near_threshold: float = duplicates.NEAR_AT,
    seed: int = 0,
    limit: int = LIMIT,
) -> Findings:
    """The check on computed features: `images` (every image of the folder), their file `digests`,
    and `features` for the images `featured` names (row k is images[featured[k]]; images that could
    not be decoded have none)."""
    featured = np.asarray(featured, dtype=np.int64)
    labels = np.asarray([images[i].label for i in featured], dtype=np.int64)
    learn = np.asarray([images[i].split != "test" for i in featured], dtype=bool)
    check_folds(labels, learn, classes, folds)
    x = np.asarray(features, dtype=np.float32).reshape(len(featured), -1)
    clock = [time.perf_counter()]
    # 1. Likely label errors: a k-fold linear model on train and val; test only scored.
    issues = [
        {**_named(images[featured[e.index]], classes), "suggested": classes[e.suggested], "score": e.score}
        for e in label_issues(x, labels, learn, len(classes), folds, seed)
    ]
    clock.append(time.perf_counter())
    # 2. Duplicates: exact by content, near by cosine; groups across splits first.
    unit = duplicates.unit_rows(x)
    groups: list[dict[str, Any]] = []
    for kind, g in _duplicate_groups(images, digests, unit, featured, near_threshold):
        named = [_named(images[i], classes) for i in g.members]
        cross = len({images[i].split for i in g.members}) > 1
        similarity = 1.0 if kind == "exact" else round(g.similarity, 4)
        groups.append({"kind": kind, "cross_split": cross, "similarity": similarity, "images": named})
    groups.sort(key=lambda d: (not d["cross_split"], d["kind"] != "exact", -d["similarity"], d["images"][0]["path"]))
    clock.append(time.perf_counter())
    # 3. Outliers: far from every class's centroid.
    flagged, scores = _outliers(unit, labels, learn, len(classes))
    outliers = [{**_named(images[featured[r]], classes), "score": float(scores[r])} for r in flagged]
    clock.append(time.perf_counter())
    return Findings(
        issues[:limit],
        groups[:limit],
        outliers[:limit],
        {"label_issues": len(issues), "duplicates": len(groups), "outliers": len(outliers)},
        {k: round(b - a, 3) for k, a, b in zip(("label_issues", "duplicates", "outliers"), clock, clock[1:])},
    )


# --- the check on a folder ---------------------------------------------------------------------


def class_counts(images: Sequence[Image], classes: Sequence[str]) -> tuple[dict[str, dict[str, int]], dict]:
    """Images per class in each split (a split the folder has none of is left out), and the
    imbalance over the whole folder: the largest class's images over the smallest's."""
    per = Counter((img.split, img.label) for img in images)
    counts = {
        s: {name: per[s, c] for c, name in enumerate(classes)}
        for s in SPLITS
        if any(per[s, c] for c in range(len(classes)))
    }
    total = [sum(per[s, c] for s in SPLITS) for c in range(len(classes))]
    largest, smallest = int(np.argmax(total)), int(np.argmin(total))
    ratio = total[largest] / total[smallest] if total[smallest] else float("inf")
    return counts, {"ratio": round(ratio, 3), "largest": classes[largest], "smallest": classes[smallest]}


def folder_images(splits: Splits) -> list[Image]:
    """Every image of the split folder, train then val then test."""
    return [Image(it.path, s, it.label) for s in SPLITS for it in getattr(splits, s)]


def image_features(
    cfg: RunConfig, images: Sequence[Image], index: folders.DatasetIndex, size: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(features, the images they belong to, "hit" | "computed"): each image's frozen features at
    the head input (cfg's backbone and weights, at `size` px), through the probe's cache; images
    that could not be decoded have none."""
    rows = decode_cache.DatasetRows.of(index)
    items = [folders.Item(img.path, img.label) for img in images]
    # Every image as a validation image (no augmentation): features computed, nothing learns here.
    every = Splits(index.classes, [], items, index)
    run, cache_state, _ = frozen_activations(cfg, every, rows, pick_device(cfg.device), size)
    readable = run.val.rows  # the cache rows of the images that decoded, in `items` order
    x = np.asarray(run.val.entry.data()[readable], dtype=np.float32).reshape(len(readable), -1)
    position = {r: k for k, r in enumerate(rows.rows(items).tolist())}
    return x, np.asarray([position[r] for r in readable.tolist()], dtype=np.int64), cache_state


def check_data(
    cfg: RunConfig,
    *,
    image_size: int | None = None,
    folds: int = 5,
    near_threshold: float = duplicates.NEAR_AT,
    limit: int = LIMIT,
) -> DataCheck:
    """Check every image of `cfg.data` (the module docstring says what, and how); the features
    of cfg's backbone and weights at `image_size` (default: the weights' native size)."""
    if cfg.in_channels != 3 or cfg.weights == "none":
        raise UserError(
            "check-data reads pretrained RGB features (ImageNet weights, or a state_dict file) of "
            f"{cfg.backbone}; --in-channels {cfg.in_channels} --weights {cfg.weights} has none: "
            "check with --in-channels 3 and --weights imagenet"
        )
    if not 0 < near_threshold <= 1:
        raise UserError(f"--near-threshold {near_threshold:g}: give a cosine similarity above 0, up to 1")
    # The size the images are seen at, checked as a run's --image-size is (what the backbone takes).
    size = image_size or weights.native_size(cfg.backbone)
    cfg = make_config(**{**cfg.model_dump(), "image_size": size})
    started = time.perf_counter()
    seed_everything(cfg.seed)
    # 1. The splits a run of cfg would use: train, val and test, all of them read.
    index = scan_cache.scan_dataset(cfg.data)
    splits = split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction)
    images = folder_images(splits)
    labels = np.asarray([img.label for img in images], dtype=np.int64)
    check_folds(labels, np.asarray([img.split != "test" for img in images]), splits.classes, folds)  # before any work
    # 2. Every image's content digest, and its frozen features (the probe's cache).
    digests = [duplicates.file_digest(img.path) for img in images]
    x, featured, cache_state = image_features(cfg, images, index, size)
    computed = time.perf_counter()
    # 3. The check on them.
    found = check_features(
        images,
        digests,
        x,
        featured,
        splits.classes,
        folds=folds,
        near_threshold=near_threshold,
        seed=cfg.seed,
        limit=limit,
    )
    decoded = set(featured.tolist())
    counts, imbalance = class_counts(images, splits.classes)
    done = time.perf_counter()
    return DataCheck(
        data=str(cfg.data),
        backbone=cfg.backbone,
        image_size=size,
        classes=list(splits.classes),
        images=len(images),
        counts=counts,
        imbalance=imbalance,
        label_issues=found.label_issues,
        duplicates=found.duplicates,
        outliers=found.outliers,
        found=found.found,
        skipped=folders.skipped_summary(index),
        unreadable=[_named(img, splits.classes) for i, img in enumerate(images) if i not in decoded],
        folds=folds,
        near_threshold=near_threshold,
        seconds={
            "features": round(computed - started, 3),
            **found.seconds,
            "check": round(done - computed, 3),
            "total": round(done - started, 3),
        },
        feature_cache=cache_state,
    )
