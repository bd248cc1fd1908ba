"""Check the data before training: likely label errors, duplicates and leaks across splits, class
imbalance, unreadable files, outliers.

`check_data(cfg)` reads every image of the folder `cfg.data` names, in the splits a run of `cfg`
would use (its split seed, val and test fractions: train, val AND test), and reports:
  - label_issues: likely label errors, most likely first (label_issues.py: k-fold out-of-sample
    probabilities of a linear model on the frozen features, ranked by cleanlab); each with its
    `path`, `split`, `label` (its folder's class), `suggested` (the likeliest other class) and
    `score` (the out-of-sample probability of its label: lower, likelier an error);
    Classes with fewer train and val images than folds are left out of this model (too few to
    learn them out of sample): `label_classes_left_out` names them, the rest of the check runs;
  - duplicates: groups of exact copies (the same bytes) and near copies (the cosine similarity of
    the images' pixel descriptors at or above duplicates.PIXEL_AT, pixel_hash.py; or of their
    L2-normalised embeddings at or above duplicates.NEAR_AT; both calibrated in duplicates.py),
    each {"kind": "exact"|"near", "by", "cross_split", "similarity" (embeddings), "pixel_similarity",
    "images": [{"path", "split", "label"}]}, the similarities the group's weakest links, `by` what
    found it ("bytes"; "pixels" and/or "embeddings"); groups spanning splits first (a leak: the same
    picture trained on and scored on). A group `by` ["embeddings"] alone is a look-alike (found
    counts them, `look_alikes`): a copy edited past its pixels (a crop, a flip), or two pictures of
    one scene, or, on small simple images, distinct images of a class (duplicates.py);
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
from . import duplicates, pixel_hash
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
    left_out: list[dict]  # classes too small for the label model: {"class", "images"}
    look_alike_share: float = 0.0  # of the images, those with a look-alike by embeddings alone
    look_alikes_shown: bool = True  # False: left out, over duplicates.LOOK_ALIKE_SHARE


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
    label_classes_left_out: list[dict]  # {"class", "images"}: fewer train and val images than folds
    near_threshold: float
    pixel_threshold: float
    look_alike_share: float  # the images with a look-alike by embeddings alone (duplicates.find)
    look_alikes_shown: bool  # False: more than duplicates.LOOK_ALIKE_SHARE had one; left out
    seconds: dict = field(
        default_factory=dict
    )  # {"features", "label_issues", "duplicates", "outliers", "check", "total"}
    feature_cache: str = "computed"  # "hit" | "computed"

    def to_dict(self) -> dict:
        return asdict(self)


# --- the check on features --------------------------------------------------------------------


def check_folds(folds: int) -> None:
    """Refuse a k-fold model of fewer than 2 folds."""
    if folds < 2:
        raise UserError(f"--folds {folds}: the out-of-sample probabilities need at least 2 folds; pass --folds 5")


def label_classes(labels: np.ndarray, learn: np.ndarray, classes: Sequence[str], folds: int) -> np.ndarray:
    """The classes the k-fold model can learn: those with at least `folds` rows to learn from (each fold
    then holds one of them, as StratifiedKFold needs)."""
    counts = np.bincount(labels[learn], minlength=len(classes))
    return np.flatnonzero(counts >= folds)


def _label_issues(
    x: np.ndarray, labels: np.ndarray, learn: np.ndarray, classes: Sequence[str], folds: int, seed: int
) -> tuple[list[tuple[int, int, float]], list[dict]]:
    """((row, suggested class, score) most likely first; the classes left out): the label model on
    the rows of the classes it can learn (label_classes), none when fewer than two are left."""
    kept = label_classes(labels, learn, classes, folds)
    counts = np.bincount(labels[learn], minlength=len(classes))
    left_out = [{"class": classes[c], "images": int(counts[c])} for c in range(len(classes)) if c not in set(kept)]
    if len(kept) < 2:
        return [], left_out
    rows = np.flatnonzero(np.isin(labels, kept))
    index = np.full(len(classes), -1)
    index[kept] = np.arange(len(kept))
    found = label_issues(x[rows], index[labels[rows]], learn[rows], len(kept), folds, seed)
    return [(int(rows[e.index]), int(kept[e.suggested]), e.score) for e in found], left_out


def _named(img: Image, classes: Sequence[str]) -> dict:
    return {"path": img.path, "split": img.split, "label": classes[img.label]}


def _duplicates(
    images: Sequence[Image], classes: Sequence[str], groups: list[duplicates.Found]
) -> list[dict[str, Any]]:
    """The groups as the JSON has them: leaks across splits first, then exact copies, then copies by
    their pixels, then look-alikes by their embeddings alone, the closest first."""
    out: list[dict[str, Any]] = []
    for f in groups:
        kind, g, by = f.kind, f.group, f.by
        similarity, pixel_similarity = (1.0, 1.0) if kind == "exact" else (round(v, 4) for v in g.weakest)
        out.append(
            {
                "kind": kind,
                "by": by,
                "cross_split": len({images[i].split for i in g.members}) > 1,
                "similarity": similarity,
                "pixel_similarity": pixel_similarity,
                "images": [_named(images[i], classes) for i in g.members],
            }
        )
    out.sort(
        key=lambda d: (
            not d["cross_split"],
            d["kind"] != "exact",
            d["by"] == ["embeddings"],
            -max(d["similarity"], d["pixel_similarity"]),
            d["images"][0]["path"],
        )
    )
    return out


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
    pixels: np.ndarray | None = None,
    folds: int = 5,
    near_threshold: float = duplicates.NEAR_AT,
    pixel_threshold: float = duplicates.PIXEL_AT,
    seed: int = 0,
    limit: int = LIMIT,
) -> Findings:
    """The check on computed features: `images` (every image of the folder), their file `digests`,
    `features` for the images `featured` names (row k is images[featured[k]]; images that could
    not be decoded have none) and their `pixels` descriptors (pixel_hash.py: a row per image, zeros
    for an unreadable one; None: near copies by embeddings only)."""
    check_folds(folds)
    featured = np.asarray(featured, dtype=np.int64)
    labels = np.asarray([images[i].label for i in featured], dtype=np.int64)
    learn = np.asarray([images[i].split != "test" for i in featured], dtype=bool)
    x = np.asarray(features, dtype=np.float32).reshape(len(featured), -1)
    if pixels is None:
        pixels = np.zeros((len(images), 1), np.float32)
    clock = [time.perf_counter()]
    # 1. Likely label errors: a k-fold linear model on train and val; test only scored.
    found_issues, left_out = _label_issues(x, labels, learn, classes, folds, seed)
    issues = [
        {**_named(images[featured[r]], classes), "suggested": classes[suggested], "score": score}
        for r, suggested, score in found_issues
    ]
    clock.append(time.perf_counter())
    # 2. Duplicates: exact by content, near by pixels or embeddings; groups across splits first.
    unit = duplicates.unit_rows(x)
    pixels = np.asarray(pixels, np.float32)
    copies = duplicates.find(digests, unit, featured, pixels, near_threshold, pixel_threshold)
    groups = _duplicates(images, classes, copies.groups)
    clock.append(time.perf_counter())
    # 3. Outliers: far from every class's centroid.
    flagged, scores = _outliers(unit, labels, learn, len(classes))
    outliers = [{**_named(images[featured[r]], classes), "score": float(scores[r])} for r in flagged]
    clock.append(time.perf_counter())
    return Findings(
        issues[:limit],
        groups[:limit],
        outliers[:limit],
        {
            "label_issues": len(issues),
            "duplicates": len(groups),
            "look_alikes": sum(g["by"] == ["embeddings"] for g in groups),
            "outliers": len(outliers),
        },
        {k: round(b - a, 3) for k, a, b in zip(("label_issues", "duplicates", "outliers"), clock, clock[1:])},
        left_out,
        copies.look_alike_share,
        copies.look_alikes_shown,
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
    pixel_threshold: float = duplicates.PIXEL_AT,
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
    for flag, value in (("--near-threshold", near_threshold), ("--pixel-threshold", pixel_threshold)):
        if not 0 < value <= 1:
            raise UserError(f"{flag} {value:g}: give a cosine similarity above 0, up to 1")
    check_folds(folds)
    # The size the images are seen at, checked as a run's --image-size is (what the backbone takes).
    size = image_size or weights.native_size(cfg.backbone)
    cfg = make_config(**{**cfg.model_dump(), "image_size": size})
    started = time.perf_counter()
    seed_everything(cfg.seed)
    # 1. The splits a run of cfg would use: train, val and test, all of them read.
    index = scan_cache.scan_dataset(cfg.data)
    splits = split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction)
    images = folder_images(splits)
    # 2. Every image's content digest and pixel descriptor, and its frozen features (the probe's cache).
    digests = [duplicates.file_digest(img.path) for img in images]
    pixels = pixel_hash.descriptors(decode_cache.DatasetRows.of(index), [img.path for img in images])
    x, featured, cache_state = image_features(cfg, images, index, size)
    computed = time.perf_counter()
    # 3. The check on them.
    found = check_features(
        images,
        digests,
        x,
        featured,
        splits.classes,
        pixels=pixels,
        folds=folds,
        near_threshold=near_threshold,
        pixel_threshold=pixel_threshold,
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
        label_classes_left_out=found.left_out,
        near_threshold=near_threshold,
        pixel_threshold=pixel_threshold,
        look_alike_share=found.look_alike_share,
        look_alikes_shown=found.look_alikes_shown,
        seconds={
            "features": round(computed - started, 3),
            **found.seconds,
            "check": round(done - computed, 3),
            "total": round(done - started, 3),
        },
        feature_cache=cache_state,
    )
