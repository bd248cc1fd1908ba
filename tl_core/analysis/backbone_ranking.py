"""Which backbone for my data? Candidate backbones ranked from their frozen features, before training.

`rank(cfg, candidates)` scores each candidate on the same images: a seeded subsample of at most
`max_per_class` images per class of the TRAIN split a run of `cfg` would use (its split seed, val,
test and train fractions; the test split is never read), seen as the data probe sees them
(data_probe.frozen_activations: the body's output at the head input, at the weights' native size
unless `image_size` says otherwise, without augmentation, through the feature cache, so a second
ranking, the probe, or a feature_extraction run at that size reuses them). Each candidate gets:
  - LogME (transferability.logme), the maximum evidence of a linear model from its features to
    the labels: every candidate has it, and it orders the ranking;
  - LEEP (transferability.leep), where the weights have an ImageNet head to read (ImageNet weights
    on RGB images, as the forgetting measure asks: forgetting.why_not_measured): that head's
    softmax on the same cached features (they are its input) gives P(ImageNet class | image);
  - the seconds it took: building the model, the features (none on a cache hit), each score.

A candidate is a registered backbone, with the weights of `cfg` (`--weights`), or its own after an
@: `efficientnet_lite0@none` is that architecture at random init (seeded by cfg.seed), and
`resnet18@/path/state_dict.pt` a local file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..config import RunConfig, make_config
from ..data import decode_cache, scan_cache
from ..data.splits import Splits, split_dataset
from ..errors import UserError
from ..models import weights
from ..models.families import get_spec
from ..training.startup import pick_device
from . import forgetting, transferability
from .data_probe import frozen_activations, median_per_class, stacked, subsample

__all__ = ["Candidate", "Ranking", "Scored", "parse_candidates", "rank"]

SCORES = {
    "logme": "LogME: the maximum log evidence per image of a linear model from the frozen features to the labels",
    "leep": "LEEP: the mean log-likelihood of the labels predicted through the ImageNet head's classes (at most 0)",
}  # what each score is, in the words a table's reader needs; the higher the better, both


@dataclass(frozen=True)
class Candidate:
    """A backbone with the weights it is scored with."""

    backbone: str
    weights: str  # "imagenet", "none" (random init) or a state_dict path

    @property
    def label(self) -> str:
        return self.backbone if self.weights == "imagenet" else f"{self.backbone}@{self.weights}"


def parse_candidates(names: Sequence[str], weights: str = "imagenet") -> list[Candidate]:
    """`name` or `name@weights` each, `weights` where none is given; every name a registered backbone
    (else the registry's UserError, which lists them), none twice, at least one."""
    found: list[Candidate] = []
    for text in names:
        name, at, own = text.strip().partition("@")
        if not name or (at and not own):
            raise UserError(
                f"--backbones: {text!r} is not a backbone; give registered names separated by commas, each "
                f"optionally with its weights after an @ (efficientnet_lite0,efficientnet_lite0@none)"
            )
        try:
            get_spec(name)  # the registry's door: whatever it accepts is a candidate
        except UserError as e:
            raise UserError(f"--backbones: {e} (`python -m tl_core backbones` says whose weights are here)") from None
        found.append(Candidate(name, own or weights))
    if not found:
        raise UserError("--backbones: give at least one registered backbone (see `python -m tl_core backbones`)")
    twice = sorted({c.label for c in found if found.count(c) > 1})
    if twice:
        raise UserError(f"--backbones: {', '.join(twice)} listed twice; list each candidate once")
    return found


@dataclass
class Scored:
    """One candidate's scores and what they cost."""

    candidate: str  # its label: the backbone, with @weights unless ImageNet's
    backbone: str
    weights: str
    image_size: int
    features: int  # dimensions of the frozen features scored
    logme: float
    leep: float | None
    leep_skipped: str | None  # why there is no LEEP
    feature_cache: str  # "hit" | "computed"
    seconds: float  # in all: the model, its features, its scores
    seconds_features: float  # building the model and computing (or reading) its features
    seconds_logme: float
    seconds_leep: float | None
    rank: int = 0  # 1 = the best LogME
    leep_rank: int | None = None  # among the candidates with a LEEP


@dataclass
class Ranking:
    """The candidates, best LogME first, and the images they were scored on."""

    ranked: list[Scored]
    classes: list[str]
    images: int  # training images scored (the same for every candidate)
    images_per_class: float  # median training images per class, over the whole train split
    max_per_class: int
    seconds: float
    split: str = "train"
    ranked_by: str = "logme"
    scores: dict[str, str] = field(default_factory=lambda: dict(SCORES))

    def to_dict(self) -> dict:
        return asdict(self)


def _candidate_config(cfg: RunConfig, c: Candidate, image_size: int | None) -> RunConfig:
    """cfg for this candidate: its backbone and weights, at the size it is seen (checked against the backbone)."""
    size = image_size or weights.native_size(c.backbone)
    return make_config(**{**cfg.model_dump(), "backbone": c.backbone, "weights": c.weights, "image_size": size})


def _no_leep(c: Candidate, reason: str | None) -> str | None:
    """Why a candidate has no LEEP (the forgetting measure's answer: no ImageNet head of its own), or None."""
    if reason is None:
        return None
    if c.weights == "none":
        return "random init (weights none): no ImageNet head"
    if c.weights != "imagenet":
        return f"weights from {c.weights}: the ImageNet head does not belong to them"
    return reason


def _leep(c: Candidate, reason: str | None, x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """LEEP through the pretrained ImageNet head on the features (its input), and its seconds; None without one."""
    if reason is not None:
        return None, None
    started = time.perf_counter()
    head = forgetting.imagenet_head(c.backbone)
    with torch.inference_mode():
        logits = head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double().numpy()
    return transferability.leep(transferability.softmax(logits), y), round(time.perf_counter() - started, 3)


def _score(
    cfg: RunConfig, c: Candidate, splits: Splits, rows: decode_cache.DatasetRows, device, image_size: int | None
) -> Scored:
    started = time.perf_counter()
    one = _candidate_config(cfg, c, image_size)
    activations = frozen_activations(one, splits, rows, device, one.image_size)
    x, y = stacked(activations.run.train.for_epoch(0))
    featured = time.perf_counter()
    if len(np.unique(y)) < 2:
        raise UserError(
            f"cannot rank backbones on {cfg.data}: too few readable training images ({len(y)}) to tell two "
            f"classes apart; check the skipped files with `python -m tl_core dataset`"
        )
    score = transferability.logme(x, y)
    scored = time.perf_counter()
    reason = _no_leep(c, forgetting.why_not_measured(activations.backbone, cfg.in_channels))
    leep, leep_seconds = _leep(c, reason, x, y)
    return Scored(
        candidate=c.label,
        backbone=c.backbone,
        weights=c.weights,
        image_size=one.image_size,
        features=int(x.shape[1]),
        logme=score,
        leep=leep,
        leep_skipped=reason,
        feature_cache=activations.cache,
        seconds=round(time.perf_counter() - started, 3),
        seconds_features=round(featured - started, 3),
        seconds_logme=round(scored - featured, 3),
        seconds_leep=leep_seconds,
    )


def rank(
    cfg: RunConfig, candidates: Sequence[Candidate], *, image_size: int | None = None, max_per_class: int = 50
) -> Ranking:
    """Score every candidate on cfg's training images (the module's docstring says how) and rank
    them by LogME, best first; `leep_rank` orders those with a LEEP by it."""
    if max_per_class < 1:
        raise UserError(f"--max-per-class {max_per_class}: score at least one image per class")
    if cfg.in_channels != 3:
        raise UserError(
            f"--in-channels {cfg.in_channels}: ranking reads the pretrained RGB features of each backbone, and "
            f"these images are not RGB; compare backbones with runs instead (experiment --backbones)"
        )
    if not candidates:
        raise UserError("--backbones: give at least one registered backbone (see `python -m tl_core backbones`)")
    started = time.perf_counter()
    device = pick_device(cfg.device)
    # 1. The train split a run of cfg would use, subsampled by its split seed; val and test unread.
    index = scan_cache.scan_dataset(cfg.data)
    splits = split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction, cfg.exclude)
    train = Splits(splits.classes, subsample(splits.train, max_per_class, cfg.split_seed), [], index)
    if len({it.label for it in train.train}) < 2:
        raise UserError(
            f"cannot rank backbones on {cfg.data}: its train split has images of {len(train.classes)} class(es); "
            f"scoring needs at least two classes with images"
        )
    rows = decode_cache.DatasetRows.of(index)
    # 2. Each candidate's features and scores, one model in memory at a time.
    ranked = [_score(cfg, c, train, rows, device, image_size) for c in candidates]
    # 3. Best first: LogME for every candidate, LEEP among those that have one.
    ranked.sort(key=lambda s: -s.logme)
    for i, s in enumerate(ranked, 1):
        s.rank = i
    for i, s in enumerate(sorted((s for s in ranked if s.leep is not None), key=lambda s: -(s.leep or 0.0)), 1):
        s.leep_rank = i
    return Ranking(
        ranked=ranked,
        classes=list(splits.classes),
        images=len(train.train),
        images_per_class=median_per_class(splits.train, len(splits.classes)),
        max_per_class=max_per_class,
        seconds=round(time.perf_counter() - started, 3),
    )
