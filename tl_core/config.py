"""RunConfig: every setting of a run, validated before anything is queued or trained."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UserError


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
    # optimisation
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float | None = Field(None, gt=0, description="None: the strategy's default")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # strategy knobs
    unfreeze: int = 2
    lr_decay: float = 3.0
    head_epochs: int = 2
    phase2_lr_factor: float = 0.1
    unfreeze_every: int = 1
    unfreeze_on: Literal["schedule", "plateau"] = "schedule"
    patience: int = 1
    # bookkeeping and hardware
    seed: int = 0
    experiment: str = Field("default", min_length=1, max_length=200)
    name: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int | None = Field(None, ge=0, description="DataLoader workers; None picks by CPU count")
    # speed: caches and hardware (see tl_core/features.py, tl_core/decoded.py)
    feature_cache: Literal["on", "off"] = Field(
        "on", description="train above frozen layers on their output, computed once and cached on disk")
    feature_views: int = Field(4, ge=1, le=64, description="with augmentation: augmented views of each "
                               "image the feature cache keeps (each epoch samples one)")
    feature_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="precision the frozen layers' output is computed in; auto: bf16 where the hardware "
        "computes it natively (a GPU's autocast, CPUs with AVX512-BF16 or AMX), else fp32")
    decode_cache: Literal["on", "off"] = Field("on", description="decode and resize each image once, "
                                               "kept as uint8 on disk")
    compile: Literal["off", "on"] = Field("off", description="torch.compile the trainable part")
    cudnn_benchmark: Literal["on", "off"] = Field(
        "on", description="on a GPU: cuDNN times its algorithms for each new input shape (faster steps for "
        "many models; the first step of each shape is slower; see BENCHMARKS.md)")

    @model_validator(mode="after")
    def _check_against_registries(self) -> "RunConfig":
        from .backbones import get_spec
        from .strategies import get_strategy

        spec = get_spec(self.backbone)
        strategy = get_strategy(self.strategy)
        n_groups = len(spec.body_groups) + 1
        strategy.validate(n_groups, self.epochs, self.strategy_params())
        if spec.fixed_image_size and self.image_size != spec.fixed_image_size:
            raise UserError(f"--image-size {self.image_size}: {self.backbone} takes exactly "
                            f"{spec.fixed_image_size} px images")
        if self.image_size < spec.min_image_size:
            raise UserError(f"--image-size {self.image_size}: {self.backbone} needs at least "
                            f"{spec.min_image_size} px")
        return self

    def strategy_params(self):
        from .strategies import StrategyParams

        return StrategyParams(unfreeze=self.unfreeze, lr_decay=self.lr_decay, head_epochs=self.head_epochs,
                              phase2_lr_factor=self.phase2_lr_factor, unfreeze_every=self.unfreeze_every,
                              unfreeze_on=self.unfreeze_on, patience=self.patience)

    @property
    def base_lr(self) -> float:
        from .strategies import get_strategy

        return self.lr if self.lr is not None else get_strategy(self.strategy).default_lr

    @property
    def weights_to_load(self) -> str:
        from .strategies import get_strategy

        return self.weights if get_strategy(self.strategy).pretrained else "none"


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
