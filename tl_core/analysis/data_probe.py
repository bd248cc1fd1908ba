"""Which strategy for my data? A probe in seconds, before any training, and the table it reads.

`probe(cfg)` measures two things about the data `cfg` names, on the split a run of `cfg` would use
(its `split_seed`, `val_fraction`, `train_fraction`):
  1. data size: the median number of training images per class (the whole train split);
  2. similarity to ImageNet: how well the frozen pretrained body's output at the head input
     already separates the classes, on a seeded subsample of at most `max_per_class` images per
     class of train and of val: a linear probe (logistic regression on standardized features,
     trained on the train subsample, scored on the val subsample) and a k-NN (cosine). The
     linear probe's accuracy, normalised against chance, is the `separability` (0: chance,
     1: perfect): the domain gap, measured.
The images are seen at the weights' NATIVE size (224 px for most ImageNet weights), not at the
config's --image-size: the "close to ImageNet" threshold (CLOSE_AT) comes from results at full
resolution, and the same weights read at another size separate the classes differently (on the
demo data, 30 images a class: animals 0.70 at 96 px and 0.89 at 224; digits 0.87 and 0.74), so
only a probe at the native size is compared like with like. The activations come from
feature_cache.FrozenFeatures at the head boundary, without augmentation, so they land in the same cache
entry a later feature_extraction run of the same backbone, weights, precision and native image
size (augment none) reads; a second probe is a cache hit.

`recommend(images_per_class, separability)` is the seeds' table (CS231n's "Transfer Learning"
notes, "When and how to fine-tune?": data size x similarity to ImageNet) as a pure function:
registered strategies to try first and one sentence saying why. `judge(recommended, results)` says, after a comparison,
whether the recommendation was right.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..config import RunConfig
from ..data import decode_cache, folders, scan_cache
from ..data.splits import Splits, split_dataset
from ..errors import UserError
from ..models import backbones, weights
from ..training import feature_cache
from ..training.loop import seed_everything
from ..training.run_data import CHANNELS_LAST
from ..training.startup import amp_for, pick_device

# Below this many training images per class the data is "small". At ~100 images a class a new
# linear head (one weight per feature and class) is well determined, while fine-tuning the
# millions of weights below it overfits more often than not; it is also the line
# service.catalog.recommend_strategy draws, so the two never disagree about the size.
SMALL_BELOW = 100

# At or above this separability the data is "close" to ImageNet. Separability is the linear
# probe's accuracy from chance (0) to perfect (1). In Kornblith et al. 2019 ("Do Better ImageNet
# Models Transfer Better?"), logistic regression on frozen ImageNet features comes within a few
# points of fine-tuning on natural-image sets (pets, flowers, CIFAR: separability ~0.85 and up),
# but stops near half way on sets unlike ImageNet (cars, aircraft: ~0.5-0.6) where fine-tuning
# gains tens of points. 0.6 sits between the two; a probe on at most 50 images a class reads
# somewhat lower than those full-data numbers, so a borderline set leans "far". Those results are
# at the weights' native resolution (224 px), which is why the probe measures there (`probe`).
CLOSE_AT = 0.6

# Within this many accuracy points of the best, a recommendation counts as right: about the
# spread between seeds of one strategy on a small validation set.
RIGHT_WITHIN_POINTS = 1.0


# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    strategies: list[str]  # registered strategy names, the first the one to try first
    why: str  # one sentence naming both measurements
    size: str  # "small" | "large"
    similarity: str  # "close" | "far"

    def to_dict(self) -> dict:
        return {"strategies": list(self.strategies), "why": self.why}


def size_of(images_per_class: float) -> str:
    return "small" if images_per_class < SMALL_BELOW else "large"


def similarity_of(separability: float) -> str:
    return "close" if separability >= CLOSE_AT else "far"


def _separation_words(separability: float, probe_acc: float | None, chance: float | None) -> str:
    how = (
        "already separate the classes well"
        if separability >= CLOSE_AT
        else "separate the classes only partly"
        if separability >= CLOSE_AT / 2
        else "barely separate the classes"
    )
    if probe_acc is not None and chance is not None:
        return f"frozen features {how} (linear probe {probe_acc:.0%} vs {chance:.0%} chance)"
    return f"frozen features {how} (separability {separability:.2f}: 0 is chance, 1 perfect)"


# The four quadrants: what to try first, and what the table says about it (CS231n's cases 1-4).
# Small data far from ImageNet (case 3): "it is likely best to only train a linear classifier",
# from "activations somewhere earlier in the network" than the top, whose features are the most
# ImageNet-specific. TransferLab's heads read the body's last features only, so the table's
# advice here is feature_extraction, with that caveat said; partial comes second as the run that
# checks it (the top groups adapted at a low LR), which the table does not advise.
_TABLE: dict[tuple[str, str], tuple[list[str], str]] = {
    ("small", "close"): (
        ["feature_extraction", "partial"],
        "a new head on the frozen backbone (feature_extraction) should do; partial if it underfits",
    ),
    ("small", "far"): (
        ["feature_extraction", "partial"],
        "train only a linear classifier on the frozen backbone (feature_extraction), as fine-tuning "
        "on this little data would overfit; the table would take it from earlier layers than the "
        "last, whose features are the most ImageNet-specific, which TransferLab does not offer, so "
        "expect it to fall short: partial (the top groups adapted at a low LR) is the run to check "
        "it against",
    ),
    ("large", "close"): (
        ["two_phase", "discriminative"],
        "fine-tune with care: the head first, then every layer at a lower LR (two_phase), or LRs "
        "falling towards the stem (discriminative)",
    ),
    ("large", "far"): (
        ["full", "scratch"],
        "there is data enough to move every layer far from ImageNet (full); scratch is the control "
        "that shows what pretraining still adds",
    ),
}


def recommend(
    images_per_class: float, separability: float, *, probe_acc: float | None = None, chance: float | None = None
) -> Recommendation:
    """The seeds' table: data size x similarity to ImageNet -> strategies to try first, and why.

    `probe_acc` and `chance` (fractions), when given, are quoted in the sentence instead of the
    bare separability.
    """
    size, similarity = size_of(images_per_class), similarity_of(separability)
    strategies, advice = _TABLE[size, similarity]
    why = (
        f"about {round(images_per_class)} training images per class ({size}) and "
        f"{_separation_words(separability, probe_acc, chance)}: {advice}"
    )
    return Recommendation(list(strategies), why, size, similarity)


def judge(recommended: Sequence[str], results: Mapping[str, float]) -> str:
    """Whether the recommendation was right, in one sentence, from a comparison's results
    (strategy -> best val accuracy as a fraction, e.g. the mean over seeds)."""
    if not recommended:
        return "nothing was recommended, so there is nothing to judge"
    first = recommended[0]
    if first not in results:
        compared = ", ".join(sorted(results)) or "none"
        return (
            f"cannot judge: {first}, the strategy recommended first, was not in the comparison (compared: {compared})"
        )
    best = max(results, key=lambda s: (results[s], s == first))  # a tie goes to the recommendation
    gap = 100 * (results[best] - results[first])
    if best == first:
        others = sorted((s for s in results if s != first), key=lambda s: -results[s])
        runner_up = f"; next {others[0]} at {results[others[0]]:.1%}" if others else ""
        return f"right: {first}, recommended first, was the best ({results[first]:.1%} val accuracy{runner_up})"
    if gap <= RIGHT_WITHIN_POINTS:
        return (
            f"right: {first}, recommended first, was within {RIGHT_WITHIN_POINTS:g} point of the best, "
            f"{best} ({results[first]:.1%} vs {results[best]:.1%})"
        )
    also = " (also recommended)" if best in recommended else ""
    return (
        f"wrong: {best}{also} beat {first}, the strategy recommended first, by {gap:.1f} points "
        f"({results[best]:.1%} vs {results[first]:.1%})"
    )


# --- the probe ------------------------------------------------------------------------------


@dataclass
class Probe:
    """What the probe measured, and what it recommends."""

    images_per_class: float  # median training images per class, over the whole train split
    classes: list[str]
    probed_images: dict[str, int]  # {"train": ..., "val": ...}: the subsample the probes saw
    linear_probe_acc: float
    knn_acc: float
    chance: float  # always guessing the most common class of the probed val images
    separability: float  # (linear_probe_acc - chance) / (1 - chance); below 0: worse than chance
    similarity: str  # "close" | "far"
    size: str  # "small" | "large"
    recommendation: Recommendation
    seconds: float
    feature_cache: str  # "hit" | "computed"
    backbone: str
    image_size: int  # the size the images were seen at: the weights' native size, whatever --image-size

    def to_dict(self) -> dict:
        out = asdict(self)
        out["recommendation"] = self.recommendation.to_dict()
        return out


def subsample(items: Sequence[folders.Item], per_class: int, seed: int) -> list[folders.Item]:
    """At most `per_class` items of each class, chosen by `seed`, in (label, path) order."""
    rng = random.Random(seed)
    by_class: dict[int, list[folders.Item]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    kept: list[folders.Item] = []
    for _, group in sorted(by_class.items()):
        group = sorted(group, key=lambda it: it.path)
        rng.shuffle(group)
        kept.extend(group[:per_class])
    return sorted(kept, key=lambda it: (it.label, it.path))


def median_per_class(items: Sequence[folders.Item], num_classes: int) -> float:
    counts = np.bincount([it.label for it in items], minlength=num_classes)
    return float(statistics.median(counts.tolist()))


def stacked(batches: feature_cache.FeatureBatches) -> tuple[np.ndarray, np.ndarray]:
    """Every (activations, labels) batch as one (images, features) matrix and one label vector."""
    xs, ys = [], []
    for x, y in batches:
        xs.append(x.reshape(len(x), -1).float().numpy())
        ys.append(y.numpy())
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def linear_probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> float:
    """Logistic regression on standardized features: the classic linear probe."""
    from sklearn.linear_model import LogisticRegression  # scikit-learn: imported only when a probe runs
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardizing puts every feature on one scale, so the default L2 strength (C=1) means the
    # same for any backbone; lbfgs converges on a few hundred images well inside 1000 steps.
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(x_train, y_train)
    return float((clf.predict(x_val) == y_val).mean())


def knn_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, k: int) -> float:
    """k nearest training images by cosine similarity, majority vote (ties: the nearest's class)."""

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    k = min(k, len(x_train))
    sims = unit(x_val) @ unit(x_train).T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = y_train[nearest]  # (val, k), nearest first
    pred = []
    for row in votes:
        counts = np.bincount(row)
        tied = np.flatnonzero(counts == counts.max())
        pred.append(next(c for c in row if c in tied))  # among tied classes, the one nearest
    return float((np.asarray(pred) == y_val).mean())


class Activations(NamedTuple):
    """What `frozen_activations` computed: the cached activations, whether the cache had them, the backbone."""

    run: feature_cache.FeatureRun
    cache: str  # "hit" | "computed"
    backbone: backbones.Backbone  # with its new head: what the activations came out of


def frozen_activations(
    cfg: RunConfig,
    splits: Splits,
    rows: decode_cache.DatasetRows,
    device: torch.device,
    image_size: int | None = None,
) -> Activations:
    """The body's output at the head input (cfg's backbone and weights, random ones for weights
    none: seeded by cfg.seed) for `splits`' images at `image_size` (default: the weights' native
    size), through the feature cache."""
    weights.check_obtainable(cfg.backbone, cfg.weights)
    seed_everything(cfg.seed)  # a random init is the same for a seed, as its cache key says
    bb = backbones.create_backbone(cfg.backbone, len(splits.classes), weights=cfg.weights)
    layout = torch.channels_last if CHANNELS_LAST else torch.preserve_format
    # Module.to takes memory_format beside a device; torch's stubs have no such overload.
    bb.model = bb.model.to(device, memory_format=layout)  # type: ignore[call-overload]
    # Without augmentation: the probe wants each image as validation sees it, and it is the cache
    # entry a feature_extraction run without augmentation reads (feature_cache.py keys it so).
    size = image_size or weights.native_size(cfg.backbone)
    pipeline = decode_cache.Pipeline(backbones.preprocessing(cfg.backbone), size, "none")
    precision = feature_cache.extraction_dtype(cfg.feature_precision, device, amp_for(device)[0])
    # One batch per split: the probes need every activation at once, and a batch at least as big
    # as the split never drops a last lone image (FeatureBatches does, for BatchNorm's sake).
    frozen = feature_cache.FrozenFeatures(
        bb,
        splits,
        rows,
        pipeline,
        views=1,
        batch_size=max(len(splits.train), 1),
        seed=cfg.seed,
        device=device,
        precision=precision,
        channels_last=CHANNELS_LAST,
        workers=cfg.workers or 0,
    )  # a few hundred images decode fastest in-process
    # A 1-epoch phase: filling the cache then costs no more frozen forward passes than one
    # ordinary epoch over these images, so FrozenFeatures always caches them (feature_cache.py).
    run = frozen.at(len(bb.groups) - 1, 0, 1)
    record = frozen.records[-1]
    if run is None:
        raise UserError(
            f"cannot measure {cfg.data}: the frozen features of {cfg.backbone} could not be cached "
            f"({record.get('why', 'no reason given')}); if the cache is too large, free disk space "
            f"or raise TL_CACHE_MAX_GB, else measure with another backbone"
        )
    return Activations(run, "hit" if record.get("hit") else "computed", bb)


def probe(cfg: RunConfig, *, max_per_class: int = 50, k: int = 5) -> Probe:
    """Measure `cfg.data` (images per class; how well frozen `cfg.backbone` features separate its
    classes) and recommend strategies from the table. Seconds on a CPU.

    Reads the data, split, backbone, weights (pretrained even for a scratch config), precision,
    device and seeds from `cfg`; not its image size: the images are seen at the weights' native
    size, where CLOSE_AT was measured. The features are cached whatever its feature_cache says (a
    few hundred rows, and a feature_extraction run at the native size reuses them).
    """
    if max_per_class < 1 or k < 1:
        raise UserError(
            f"probe: max_per_class {max_per_class} and k {k} must be at least 1; "
            f"probe at least one image per class with at least one neighbour"
        )
    if cfg.in_channels != 3:
        raise UserError(
            f"probe: --in-channels {cfg.in_channels}: the probe measures how ImageNet's RGB features "
            f"separate the classes, and these images are not RGB; compare strategies with runs instead "
            f"(a feature_extraction run is the linear probe on the rebuilt first layer)"
        )
    if cfg.weights == "none":
        raise UserError(
            f"--weights none: probing {cfg.data} measures how well pretrained features separate its "
            f"classes, and random weights have none; probe with --weights imagenet or a state_dict file"
        )
    started = time.perf_counter()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    # 1. The split a run of cfg would train on, and a seeded subsample of it (the split's seed:
    #    every run of an experiment, whatever its --seed, is probed on the same images).
    index = scan_cache.scan_dataset(cfg.data)
    splits = split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction, cfg.exclude)
    probed = Splits(
        splits.classes,
        subsample(splits.train, max_per_class, cfg.split_seed),
        subsample(splits.val, max_per_class, cfg.split_seed),
        index,
    )
    # 2. Frozen activations at the head input, computed once and cached.
    run, cache_state, _ = frozen_activations(cfg, probed, decode_cache.DatasetRows.of(index), device)
    x_train, y_train = stacked(run.train.for_epoch(0))
    x_val, y_val = stacked(run.val)
    if len(np.unique(y_train)) < 2 or not len(y_val):
        raise UserError(
            f"cannot probe {cfg.data}: too few readable images (train {len(y_train)}, val {len(y_val)}) "
            f"to tell two classes apart; check the skipped files with `python -m tl_core dataset`"
        )
    # 3. The probes, and the linear probe's accuracy from chance (0) to perfect (1).
    linear = linear_probe_accuracy(x_train, y_train, x_val, y_val)
    knn = knn_accuracy(x_train, y_train, x_val, y_val, k)
    chance = float(np.bincount(y_val).max() / len(y_val))
    separability = (linear - chance) / (1 - chance) if chance < 1 else 0.0
    # 4. The table.
    per_class = median_per_class(splits.train, len(splits.classes))
    rec = recommend(per_class, separability, probe_acc=linear, chance=chance)
    return Probe(
        images_per_class=per_class,
        classes=list(splits.classes),
        probed_images={"train": int(len(y_train)), "val": int(len(y_val))},
        linear_probe_acc=linear,
        knn_acc=knn,
        chance=chance,
        separability=float(separability),
        similarity=rec.similarity,
        size=rec.size,
        recommendation=rec,
        seconds=round(time.perf_counter() - started, 3),
        feature_cache=cache_state,
        backbone=cfg.backbone,
        image_size=weights.native_size(cfg.backbone),
    )
