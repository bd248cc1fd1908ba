"""A run's summary: what its training found and did, beside its per-epoch metrics.

Its data and how it was fed (classes, images, batch, preprocessing, caches), what was left out
and why (warnings, skipped and unreadable files), its methods (regulariser, target domain,
memory levers), its start-up cost, and its results after the last epoch (the test split, each
phase's end, knowledge kept). The store keeps it as one JSON column (runs.summary) and hands it
out as a `RunSummary`, which readers use by attribute: `run.summary.test.acc`.

Reading is tolerant, as stored rows come from every earlier release: a missing key is its
default (None, or an empty list), a key this version does not know is kept as it came (extra
"allow"), and a key whose stored value does not fit its type is left out of the summary read
(logged), never an error. Writing is strict: `Store.update_run(summary=...)` validates, so a
writer that puts the wrong type in a field fails where it writes. `to_dict()` gives the JSON as
stored: only the keys that were set, nested blocks as dicts (what `show --json` prints).

Nested blocks are models with their fields typed and any other key kept. Where a block's shape
varies (the feature cache's records of each phase, start-up parts) it is a typed dict.
"""

from __future__ import annotations

import json
from collections.abc import ItemsView, Mapping
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from .. import logs

log = logs.logger(__name__)
_said_unfit: set[object] = set()  # the summary keys whose stored form could not be read, warned of once


@dataclass
class ClassMetric:
    """One class's results on a split, from its confusion matrix (analysis/metrics.class_metrics):
    a row of the class_metrics table (the best epoch on val), and of a test block's `classes`."""

    class_index: int
    class_name: str
    precision: float
    recall: float
    f1: float
    support: int  # its images in the split
    confusion: list[int]  # its row of the confusion matrix: how often it was predicted as each class


class Block(BaseModel):
    """A nested block of the summary: its fields typed, any other key kept as it came."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    def to_dict(self) -> dict[str, Any]:
        """The block as stored: the keys that were set."""
        return self.model_dump(exclude_unset=True)


class Split(Block):
    seed: int | None = None
    """--split-seed: which images were train, val and test."""
    val_fingerprint: str | None = None
    """A hash of the validation images: runs with the same one were scored on the same images."""


class Exclusions(Block):
    """What the run's exclusions (its config's `exclude`) did, by path relative to the dataset folder."""

    excluded: list[str] = []
    """Images in no split: not trained, validated or tested on."""
    relabelled: list[str] = []
    """Images read as the class their entry names."""
    not_found: list[str] = []
    """Entries that named no image of the folder's scan (removed since, or skipped as unreadable)."""


class BatchSize(Block):
    used: int
    why: str | None = None
    """Why it is not the one asked for (fewer training images than the batch), if it is not."""


class WeightsPreprocessing(Block):
    """What the weights were trained on (models/weights.Preprocessing)."""

    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float
    native_size: int | None = None


class Preprocessing(Block):
    """How an image became the model's input (data/decode_cache.Pipeline.describe)."""

    pre: WeightsPreprocessing
    image_size: int
    augment: str = "none"
    resize: int | None = None
    """The shorter side before the centre crop."""
    native_size: int | None = None
    """The size the weights were trained at."""
    in_channels: int = 3
    stats: str | None = None
    """Where the mean and std of channels the weights have none for came from (models/channels.py)."""


class SkippedFile(Block):
    path: str
    reason: str


class Skipped(Block):
    """The files the dataset's scan left out: how many, and the first ones with why."""

    count: int = 0
    files: list[SkippedFile] = []


class CacheNote(Block):
    """Whether the decoded images were cached (data/decode_cache.make_loaders), and why not."""

    used: bool
    why: str | None = None


class Loader(Block):
    """The DataLoader as sized for /dev/shm (data/shared_memory.py)."""

    workers: int | None = None
    prefetch_factor: int | None = None
    asked_workers: int | None = None
    batch_mb: float | None = None
    shm_free_mb: float | None = None
    why: str | None = None
    """Why there are fewer workers than asked, if there are."""


class BatchNorm(Block):
    setting: str
    """--bn: auto, frozen or train."""
    mode: str
    """What the strategy's BatchNorm did: frozen (running statistics held) or train."""


class ClassWeights(Block):
    mode: str
    weights: dict[str, float]
    """Each class's weight in the training loss, by class name."""


class GpuMemory(Block):
    """The probe step's measurement on the GPU before training (training/gpu_memory.Probe, MiB), and
    the training's own peak, which replaces the probe's `peak_mb` when the run ends."""

    batch_size: int | None = None
    before_mb: float | None = None
    peak_mb: float | None = None
    grads_mb: float | None = None
    optimizer_mb: float | None = None
    available_mb: float | None = None
    total_mb: float | None = None
    seconds: float | None = None
    predicted_mb: float | None = None
    """The probe's peak plus the optimizer's state: what the run was predicted to need."""


class Regularizer(Block):
    name: str
    optimizer: str
    pull: str
    """What its pull toward the pretrained weights is under the run's optimizer, in a sentence."""


class Fisher(Block):
    """EWC's Fisher information: on how many images, estimated how."""

    images: int
    source: str


class Target(Block):
    """The target-domain folder of --target-data (training/terms.TargetData.describe)."""

    data: str
    layout: str | None = None
    """"split" (train/ and val/ folders) or "folders" (one folder: both)."""
    labelled: bool = False
    images: int | None = None
    adapted_on: int | None = None
    evaluated_on: int | None = None
    skipped: int | None = None
    decode_cache: CacheNote | None = None


class ActivationMemory(Block):
    without_checkpointing: float
    with_checkpointing: float


class Memory(Block):
    """The memory levers: gradient accumulation and activation checkpointing."""

    accumulate: int = 1
    effective_batch: int | None = None
    checkpointing: str = "off"
    checkpointed_modules: int | None = None
    activations_mb: ActivationMemory | None = None
    """What one batch's activations took with checkpointing and without, measured on the run's first batch."""


class FeatureCache(Block):
    """What the cache of frozen layers' output did (training/feature_cache.py)."""

    used: bool = False
    boundary: str | None = None
    views: int = 1
    hit: bool = False
    precision: str | None = None
    seconds: float = 0.0
    why: str | None = None
    """Why it was not used, if it was not."""
    phases: list[dict[str, Any]] = []
    """Each phase's own record, where the run had several."""


class ValPrecision(Block):
    """The precision of the validation numbers from an epoch on (training/feature_cache.val_precision)."""

    from_epoch: int
    """1-based."""
    precision: str
    how: str = ""


class Forgetting(Block):
    """Knowledge kept (analysis/forgetting.py) at the last epoch, or why it was not measured."""

    agreement: float | None = None
    """The share of images where the fine-tuned body with the ImageNet head agrees with the pretrained model."""
    top5: float | None = None
    images: int | None = None
    agreed: int | None = None
    reference: str | None = None
    epoch: int | None = None
    skipped: str | None = None


class SplitScores(Block):
    """A held-out split scored once after training (analysis/metrics.scores, with the loss and the epoch)."""

    acc: float
    macro_f1: float
    balanced_acc: float
    images: int
    loss: float
    epoch: int
    """1-based: the epoch whose model was scored."""
    classes: list[ClassMetric] = []


class Phase(Block):
    """A phase of the run (epochs with the same trainable groups) at its end (training/finetuning.phase_ends)."""

    first_epoch: int
    trainable_groups: int
    last_epoch: int | None = None
    val_acc: float | None = None
    val_loss: float | None = None
    train_acc: float | None = None
    precision: str | None = None


class ResumedFrom(Block):
    epoch: int
    """1-based: the epoch after which the run went on."""
    batch: int | None = None
    """Batches of the next epoch done before it stopped, where it stopped in the middle of one."""
    checkpoint: str | None = None


class PredictionsNote(Block):
    """The stored predictions on the validation images: of which epoch (1-based), how many."""

    epoch: int
    images: int


class ExportRecord(Block):
    """An export of the run's best checkpoint and its parity check (inference/export.py)."""

    format: str
    path: str
    bytes: int | None = None
    seconds: float | None = None
    images: int | None = None
    top1_agreement: float | None = None
    max_prob_diff: float | None = None
    tolerance: float | None = None
    passed: bool = False
    run: int | None = None


class RunSummary(BaseModel):
    """A run's summary, field by field (module docstring: how it is read and written)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, use_attribute_docstrings=True)

    # Its data and how it was fed: written before the first epoch.
    classes: list[str] = []
    """The class names, in label order."""
    train_images: int | None = None
    val_images: int | None = None
    split: Split | None = None
    exclusions: Exclusions | None = None
    """What the run's exclusions did to its data, before it was split; absent without."""
    batch_size: BatchSize | None = None
    preprocessing: Preprocessing | None = None
    warnings: list[str] = []
    """What the run's settings risk, in words (config.RunConfig.warnings and the loader's)."""
    skipped: Skipped | None = None
    weights: str | None = None
    """What was loaded: "imagenet", a file path, or "none"."""
    groups: list[str] = []
    """The layer groups, stem first, head last."""
    decode_cache: CacheNote | None = None
    loader: Loader | None = None
    batchnorm: BatchNorm | None = None
    class_weights: ClassWeights | None = None
    """Per-class weights of the training loss (--class-weights auto); absent without."""

    # On a GPU: the probe step and cuDNN's choice.
    cudnn_benchmark: str | None = None
    """Whether cuDNN's search was on, and why."""
    gpu_memory: GpuMemory | None = None

    # Its methods.
    regularizer: Regularizer | None = None
    fisher: Fisher | None = None
    target: Target | None = None
    memory: Memory | None = None
    feature_cache: FeatureCache | None = None
    val_precision: list[ValPrecision] = []

    # Its start-up, noted at the first batch.
    startup_seconds: float | None = None
    """Seconds from the start to the first training batch."""
    first_batch_at: float | None = None
    """When the first training batch started (Unix time)."""
    startup: dict[str, float] = {}
    """Where the start-up went: seconds per part (data, model, probe_step, features_and_resume)."""
    resumed_from: ResumedFrom | None = None

    # Its results, after the last epoch.
    forgetting: Forgetting | None = None
    test: SplitScores | None = None
    """The test split scored with the checkpoint chosen on val; absent for a run without a test split."""
    test_last: SplitScores | None = None
    """The test split scored with the last epoch's model, where that is not the one chosen."""
    phases: list[Phase] = []
    last_confusion: list[list[int]] | None = None
    """The last epoch's confusion matrix on val (true x predicted)."""
    unreadable: list[str] = []
    """Images that could not be decoded, found as they were read."""
    total_seconds: float | None = None

    # Written after training, by the store and the service.
    predictions: PredictionsNote | None = None
    exports: list[ExportRecord] = []

    @classmethod
    def from_stored(cls, data: Mapping[str, Any] | str | None) -> RunSummary:
        """A stored summary read back, as a dict or its JSON text: tolerant of what earlier releases
        wrote (module docstring)."""
        if isinstance(data, str):
            try:
                return cls.model_validate_json(data)  # parsed and validated in one pass
            except ValidationError:
                data = cast(Mapping[str, Any], json.loads(data))  # NaN and Infinity too, as the JSON parser above
        data = dict(data or {})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            unfit = {err["loc"][0] for err in e.errors() if err["loc"]}
            if not unfit <= _said_unfit:  # once per key and process: runs are listed again and again
                _said_unfit.update(unfit)
                log.warning(
                    "a run's summary: left out %s, stored in a form this version cannot read (%s)",
                    ", ".join(map(str, sorted(unfit, key=str))),
                    e.errors()[0]["msg"],
                )
            return cls.model_validate({k: v for k, v in data.items() if k not in unfit})

    @classmethod
    def of(cls, summary: RunSummary | Mapping[str, Any]) -> RunSummary:
        """`summary` checked, for writing: a dict is validated strictly, a model checked again (as
        its nested lists may have been appended to without validation)."""
        return cls.model_validate(summary.to_dict() if isinstance(summary, RunSummary) else dict(summary))

    def to_dict(self) -> dict[str, Any]:
        """The summary as stored and as JSON shows it: the keys that were set, blocks as dicts."""
        return self.model_dump(exclude_unset=True)

    def precision_at(self, epoch: int | None) -> str | None:
        """The precision of the validation numbers at `epoch` (1-based), or None where the run
        recorded none (trained before val_precision existed)."""
        said = [p for p in self.val_precision if epoch is not None and p.from_epoch <= epoch]
        return said[-1].precision if said else None

    # --- as a dict, for training/ until it reads the summary by attribute -----------------------
    # Values come out as to_dict() gives them (plain dicts and lists); a key is present when it
    # was set. Everything else reads attributes.

    def __contains__(self, key: object) -> bool:
        return key in self.model_fields_set

    def __getitem__(self, key: str) -> Any:
        if key not in self.model_fields_set:
            raise KeyError(key)
        return self.model_dump(include={key}, exclude_unset=True)[key]

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)  # validated (validate_assignment)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def keys(self) -> list[str]:
        return list(self.to_dict())

    def items(self) -> ItemsView[str, Any]:
        return self.to_dict().items()
