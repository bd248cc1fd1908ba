"""RunConfig: every setting of a run, validated before anything is queued or trained.

The one declaration of a run's settings: the CLI makes a flag of each field (cli/parser.py), and the
New run form reads each field's choices and default from here (`choices`, `default`).

A setting that names a registered method (`--regularizer`, `--adapt`) is a str checked against
its registry when validated (`OneOf`), not a Literal that repeats the registry's names: a method
declared in its registry is a choice of the CLI, the form and this check at once. Those
registries, like the strategies' and the backbones' that the model validator reads, import no
torch, so a run's settings are checked where torch must not load (queueing, the worker).
"""

from __future__ import annotations

import hashlib
import json
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import core_schema

from .data.exclusions import Exclusion
from .data.splits import DEFAULT_BATCH_SIZE
from .errors import UserError
from .models.families import get_spec
from .models.weights import native_size
from .registry import Registry
from .training.strategies import StrategyParams, batchnorm_mode, get_strategy
from .training.term_specs import ADAPTATIONS, REGULARIZERS

# Settings that name or file a run but do not change what it trains: left out of its fingerprint.
BOOKKEEPING = ("name", "experiment")
# Settings added after runs were first checkpointed: left out of the fingerprint while at their
# defaults, so a checkpoint written before they existed still resumes.
ADDED_LATER = (
    "regularizer",
    "reg_strength",
    "head_reg_strength",
    "fisher_images",
    "target_data",
    "adapt",
    "adapt_strength",
    "in_channels",
    "accumulate",
    "checkpointing",
    "test_fraction",
    "class_weights",
    "bn",
    "lora_rank",
    "lora_alpha",
    "layer_decay",
    "exclude",
)


class OneOf:
    """Field metadata: the str setting is one of `registry.choices()`, read when a config is
    validated (so a method registered is a choice at once); `choices(field)` lists them. An unknown
    name is the registry's UserError, which lists them too."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: str) -> str:
        if value != self.registry.none:
            self.registry.get(value)
        return value


def _methods(registry: Registry) -> str:
    """What each method of a registry does, for a field's help (--help, the form)."""
    return " ".join(f"{name}: {spec.summary}" for name, spec in registry.items())


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # what to train
    data: str
    backbone: str = "efficientnet_lite0"
    strategy: str = "feature_extraction"
    weights: str = Field("imagenet", description="imagenet, none, or a path to a state_dict")
    head: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(512, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    # data
    image_size: int = Field(96, gt=0)
    augment: Literal["none", "light", "standard"] = "none"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    train_fraction: float = Field(1.0, gt=0, le=1)
    split_seed: int = Field(
        0,
        description="seeds the train/val split and the train-fraction subset, so that "
        "the runs of an experiment share them whatever their --seed",
    )
    test_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="hold out this share of every class as the test "
        "split, carved first by --split-seed (val and train fractions split the rest); "
        "0: none, or the folder's own test/. Runs choose their epoch on val and are "
        "scored once on test",
    )
    exclude: list[Exclusion] = Field(
        [],  # pydantic copies a mutable default for each config
        description="images left out ({path, action: exclude}) or moved to another class ({path, action: relabel, "
        "to: class}), by path relative to --data, applied before the split: the dataset's exclusion list when the "
        "run was queued, or --exclude FILE",
    )
    # optimisation
    epochs: int = Field(5, gt=0)
    batch_size: int | None = Field(
        None,
        gt=0,
        description=f"images per batch; default: {DEFAULT_BATCH_SIZE}, "
        f"or fewer for a small dataset (the run says what it used)",
    )
    lr: float | None = Field(None, gt=0, description="None: the strategy's default")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["none", "auto"] = Field(
        "none",
        description="weights of the classes in the training cross-entropy: auto, inverse class frequency "
        "over the training split normalised to mean 1 (for imbalanced data)",
    )
    # strategy knobs
    unfreeze: int = 2
    lr_decay: float = 3.0
    head_lr_factor: float = 10.0
    head_epochs: int = 2
    phase2_lr_factor: float = 0.1
    unfreeze_every: int = 1
    unfreeze_on: Literal["schedule", "plateau"] = "schedule"
    patience: int = 1
    stage_lr_factor: float = 1.0
    layer_decay: float = Field(
        0.75,
        description="discriminative on a transformer (a timm ViT): each block's LR is this times the LR of "
        "the block above it (BEiT's layer-wise decay); other backbones use --lr-decay per layer group",
    )
    bn: Literal["auto", "frozen", "train"] = Field(
        "auto",
        description="BatchNorm of the pretrained layers that train: frozen keeps it in inference mode (the "
        "pretrained running statistics, which the head learned on, never move; its weight and bias still train), "
        "train normalises by batch statistics and moves them to the data's; auto: each strategy's choice, train "
        'from random weights (see README, "BatchNorm when layers unfreeze")',
    )
    lora_rank: int = Field(
        8, description="lora: the rank r of each adapter's update B @ A (its parameters grow with r)"
    )
    lora_alpha: float = Field(
        16.0, description="lora: the adapters' update is scaled by alpha / rank (twice the rank is usual)"
    )
    # terms of the loss beside the strategy (training/term_specs.py): keep what was pretrained, cross domains
    regularizer: Annotated[str, OneOf(REGULARIZERS)] = Field(
        "none",
        description="a term that keeps the pretrained weights near where they started (pretrained groups "
        f"then get no weight decay). {_methods(REGULARIZERS)}",
    )
    reg_strength: float = Field(0.1, ge=0, description="alpha: the weight of the regularizer's pull")
    head_reg_strength: float = Field(
        0.01,
        ge=0,
        description="beta: plain L2 on the new head while a regularizer is on (it replaces the head's weight decay)",
    )
    fisher_images: int = Field(
        256,
        gt=0,
        description="ewc: training images the Fisher information is estimated "
        "on, from the pretrained model's own predictions (no source data at hand)",
    )
    target_data: str | None = Field(
        None,
        description="a target-domain folder: class folders (labels used for evaluation only) or images without labels",
    )
    adapt: Annotated[str, OneOf(ADAPTATIONS)] = Field(
        "none", description=f"domain adaptation toward --target-data. {_methods(ADAPTATIONS)}"
    )
    adapt_strength: float = Field(1.0, ge=0, description="the adaptation term's weight in the loss")
    # other inputs, memory
    in_channels: int = Field(
        3,
        ge=1,
        le=64,
        description="image channels: 1 keeps grayscale as one channel; more "
        "reads multi-band TIFF or .npy arrays; the first convolution is rebuilt from the RGB "
        "filters",
    )
    accumulate: int = Field(
        1,
        ge=1,
        description="gradient accumulation: one optimizer step per K batches, an "
        "effective batch of K x batch size (BatchNorm still sees batches of batch size)",
    )
    checkpointing: Literal["off", "on"] = Field(
        "off",
        description="activation checkpointing: recompute each trained stage's activations in the backward "
        "pass instead of keeping them (less memory, about a third more compute)",
    )
    # bookkeeping and hardware
    seed: int = Field(
        0, description="seeds the initialisation, data order and augmentation (not the split: --split-seed)"
    )
    experiment: str = Field("default", min_length=1, max_length=200)
    name: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int | None = Field(None, ge=0, description="DataLoader workers; None picks by CPU count")
    # speed: caches and hardware (see tl_core/training/feature_cache.py, tl_core/data/decode_cache.py)
    feature_cache: Literal["on", "off"] = Field(
        "on", description="train above frozen layers on their output, computed once and cached on disk"
    )
    feature_views: int = Field(
        4,
        ge=1,
        le=64,
        description="with augmentation: augmented views of each image the feature cache keeps (each epoch samples one)",
    )
    feature_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="precision the frozen layers' output is computed in; auto: bf16 where the hardware "
        "computes it natively (a GPU's autocast, CPUs with AVX512-BF16 or AMX), else fp32",
    )
    decode_cache: Literal["on", "off"] = Field(
        "on", description="decode and resize each image once, kept as uint8 on disk"
    )
    compile: Literal["off", "on"] = Field("off", description="torch.compile the trainable part")
    cudnn_benchmark: Literal["auto", "on", "off"] = Field(
        "auto",
        description="on a GPU: cuDNN times its algorithms for each new input shape (faster steps for "
        "some models, the first step of each shape much slower; see BENCHMARKS.md); auto: on only for runs long "
        "enough to pay the search back",
    )

    @field_validator("exclude", mode="after")
    @classmethod
    def _one_entry_per_image(cls, exclude: list[Exclusion]) -> list[Exclusion]:
        # In path order, so that the same list is the same config (and fingerprint) however it was made.
        paths = [e.path for e in exclude]
        if twice := sorted({p for p in paths if paths.count(p) > 1}):
            raise ValueError(f"{', '.join(twice[:5])} listed twice; give each image one entry")
        return sorted(exclude, key=lambda e: e.path)

    @model_validator(mode="after")
    def _check_against_registries(self) -> RunConfig:
        spec = get_spec(self.backbone)
        strategy = get_strategy(self.strategy)
        n_groups = len(spec.body_groups) + 1
        strategy.validate(n_groups, self.epochs, self.strategy_params())
        if spec.fixed_image_size and self.image_size != spec.fixed_image_size:
            raise UserError(
                f"--image-size {self.image_size}: {self.backbone} takes exactly {spec.fixed_image_size} px images"
            )
        if self.image_size < spec.min_image_size:
            raise UserError(f"--image-size {self.image_size}: {self.backbone} needs at least {spec.min_image_size} px")
        if why := spec.adapter.check_image_size(self.backbone, self.image_size):
            raise UserError(
                f"--image-size {self.image_size}: {self.backbone} cannot run on images of that size ({why}); "
                f"choose another size, e.g. {native_size(self.backbone)}"
            )
        if self.adapt != "none" and not self.target_data:
            raise UserError(
                f"--adapt {self.adapt} needs --target-data FOLDER: a folder of target-domain images "
                f"(with or without class folders) to adapt toward"
            )
        if self.regularizer != "none" and self.weights_to_load == "none":
            raise UserError(
                f"--regularizer {self.regularizer} pulls the weights toward the pretrained ones, but "
                f"this run starts from none (--strategy {self.strategy}, --weights {self.weights}); "
                f"use --regularizer none, or a strategy with pretrained weights"
            )
        fisher = self.regularizer != "none" and REGULARIZERS.get(self.regularizer).needs_fisher
        if fisher and (self.weights_to_load != "imagenet" or self.in_channels != 3 or not spec.imagenet_head):
            others = " or ".join(n for n, s in REGULARIZERS.items() if not s.needs_fisher)
            raise UserError(
                f"--regularizer {self.regularizer} estimates its Fisher information from the pretrained "
                f"model's own ImageNet predictions on RGB images: it needs --weights imagenet (weights with "
                f"their own classifier) and --in-channels 3; use --regularizer {others} otherwise"
            )
        return self

    def body_trains(self) -> bool:
        """Whether any group below the head trains at some epoch of this run."""
        n = len(get_spec(self.backbone).body_groups) + 1
        strategy, params = get_strategy(self.strategy), self.strategy_params()
        return any(strategy.freeze_to(e, n, params, []) < n - 1 for e in range(self.epochs))

    def warnings(self) -> list[str]:
        """Settings that run but likely not as meant: said before queueing, kept in the run."""
        n_groups = len(get_spec(self.backbone).body_groups) + 1
        out = get_strategy(self.strategy).warnings(n_groups, self.epochs, self.strategy_params())
        if not self.body_trains():
            if self.adapt != "none":
                out.append(
                    f"--adapt {self.adapt} with --strategy {self.strategy}: the body stays frozen, so "
                    f"adaptation cannot move the features; only the head learns from the source (choose a "
                    f"strategy that fine-tunes, e.g. full or partial)"
                )
            if self.regularizer != "none":
                out.append(
                    f"--regularizer {self.regularizer} with --strategy {self.strategy}: the pretrained "
                    f"weights are frozen, so there is nothing to pull back (only the head's L2 applies)"
                )
            if self.checkpointing == "on":
                out.append(
                    f"--checkpointing on with --strategy {self.strategy}: frozen layers keep no "
                    f"activations for a backward pass, so there is no memory to save"
                )
        if self.bn == "frozen" and self.weights_to_load == "none":
            out.append(
                f"--bn frozen with random weights (--strategy {self.strategy}, --weights {self.weights}): there "
                f"are no pretrained BatchNorm statistics to hold, so its BatchNorm trains"
            )
        native = native_size(self.backbone)
        if self.weights_to_load != "none" and self.image_size < native / 2:
            out.append(
                f"--image-size {self.image_size} is below half the {native} px the {self.backbone} weights "
                f"were trained at: accuracy is traded for speed (fine for a quick comparison on a CPU; "
                f"raise it towards {native} for the best accuracy)"
            )
        return out

    @classmethod
    def from_stored(cls, stored: dict) -> RunConfig:
        """The config of a recorded run, as it trained when it was recorded.

        A run recorded before --split-seed existed (its config has no split_seed) split its data
        with --seed, trained full's head at the base LR and partial's groups at one LR: those
        settings are filled in so that such a run resumes exactly as it began.
        """
        settings = dict(stored)
        if "split_seed" not in settings:
            settings.update(split_seed=settings.get("seed", 0), head_lr_factor=1.0)
            if settings.get("strategy") == "partial":
                settings["lr_decay"] = 1.0
        return cls(**settings)

    def fingerprint(self) -> str:
        """A digest of every setting that shapes training (not the run's name or experiment)."""
        settings = {
            k: v
            for k, v in self.model_dump().items()
            if k not in BOOKKEEPING and not (k in ADDED_LATER and v == default(k))
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def strategy_params(self) -> StrategyParams:
        return StrategyParams(
            unfreeze=self.unfreeze,
            lr_decay=self.lr_decay,
            head_lr_factor=self.head_lr_factor,
            head_epochs=self.head_epochs,
            phase2_lr_factor=self.phase2_lr_factor,
            unfreeze_every=self.unfreeze_every,
            unfreeze_on=self.unfreeze_on,
            patience=self.patience,
            stage_lr_factor=self.stage_lr_factor,
            bn=batchnorm_mode(get_strategy(self.strategy), self.bn, self.weights_to_load != "none"),
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            layer_decay=self.layer_decay,
            transformer_blocks=get_spec(self.backbone).transformer_blocks,
        )

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else get_strategy(self.strategy).default_lr

    @property
    def weights_to_load(self) -> str:
        return self.weights if get_strategy(self.strategy).pretrained else "none"


def choices(field: str) -> list[str]:
    """The values a setting allows, in order: its registry's choices ("none" first), or its Literal's as
    declared; [] for a setting without a fixed set of values (a number, a path)."""
    info = RunConfig.model_fields[field]
    for meta in info.metadata:
        if isinstance(meta, OneOf):
            return meta.registry.choices()
    if typing.get_origin(info.annotation) is Literal:
        return list(typing.get_args(info.annotation))
    return []


def knobs(field: str, value: str) -> tuple[str, ...]:
    """The settings the method `value` of a registry setting reads, as its declaration says (the form
    shows them while it is chosen); none for "none" or a setting without a registry."""
    for meta in RunConfig.model_fields[field].metadata:
        if isinstance(meta, OneOf) and value != meta.registry.none:
            return meta.registry.get(value).knobs
    return ()


def default(field: str) -> Any:
    return RunConfig.model_fields[field].default


def make_config(**settings) -> RunConfig:
    """RunConfig from keyword settings; any invalid setting becomes one UserError naming it.

    (Registry checks in the model validator raise UserError directly: pydantic passes through
    exceptions that are not ValueErrors.)
    """
    try:
        return RunConfig(**settings)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"]) or "settings"
            problems.append(f"--{where.replace('_', '-')}: {err['msg'].lower()} (got {err.get('input')!r})")
        raise UserError("; ".join(problems)) from None
