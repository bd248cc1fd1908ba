"""Transfer strategies: which layer groups train, and at what learning rate, epoch by epoch.

A strategy is a small declarative object over a backbone's ordered layer groups
(stem, stages..., head). It answers two questions and nothing else:
  freeze_to(epoch, val_losses): the freeze boundary now, fastai's freeze_to(n): groups 0..n-1
                                frozen, the rest trained (L-1 of L groups: the head alone);
  lr_multipliers(n):            each trainable group's LR as a multiple of the base LR.
The training loop asks them every epoch (finetuning.py applies the answer); there is no
per-strategy branch in the loop. Because the answers depend only on the epoch and the
validation-loss history, a resumed run gets the same plan back. Groups are numbered k = 1..L
with the head L; discriminative LRs follow lr_k = base / decay^(L-k). As the field practises it, pretrained groups fine-tune well below
the new head's LR: every strategy that trains pretrained groups beside a new head gives the
head the higher LR (partial and progressive by discriminative LRs, full by --head-lr-factor).

Every strategy is filed in `STRATEGIES` (a registry.Registry, one instance each, in the order
declared here): `get_strategy(name)` (a UserError listing the choices), `list_strategies()`.
Adding a strategy: one class here with `@register_strategy`; the CLI, the form and the tests
parametrized over `list_strategies()` pick it up. This module imports no torch: a run's settings
are checked against it before anything is queued.

BatchNorm in the pretrained groups that train (`--bn`, StrategyParams.bn, applied by
finetuning.set_train_mode): "frozen" keeps every pretrained BatchNorm in inference mode, normalising
by its ImageNet running statistics, which never move; its affine weight and bias still train
with their group (Keras's transfer-learning guide: BatchNorm stays in inference mode when the base
model is unfrozen). "train" normalises trained groups by batch statistics and lets their running
statistics follow the target data (PyTorch's default). A head that learned on frozen features
(eval-mode BatchNorm, the only mode the feature cache can compute) must keep seeing them at an
unfreeze: under "train" the statistics switch under it and the run collapses (measured on the
demo data: BENCHMARKS.md, "BatchNorm at the unfreeze"). `--bn auto` takes each strategy's
`bn_auto`; where nothing was pretrained every setting means "train" (the running statistics
of a random network mean nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class StrategyParams:
    """The knobs strategies read (a subset of the run config)."""

    unfreeze: int = 2  # partial: body groups trained below the head
    lr_decay: float = 3.0  # partial / discriminative / progressive: LR ratio between neighbouring groups
    head_lr_factor: float = 10.0  # full: the new head's LR as a multiple of base (the body's)
    head_epochs: int = 2  # two_phase: epochs with only the head training
    phase2_lr_factor: float = 0.1  # two_phase: LR of the second phase, as a multiple of base
    unfreeze_every: int = 1  # progressive: epochs between unfreezing steps ("schedule")
    unfreeze_on: str = "schedule"  # progressive: "schedule" or "plateau" (of val loss)
    patience: int = 1  # progressive, plateau: epochs without improvement before unfreezing
    stage_lr_factor: float = 1.0  # progressive: every group's LR x this at each unfreezing stage
    bn: str = "frozen"  # pretrained BatchNorm in trained groups: "frozen" (inference mode) or "train"
    lora_rank: int = 8  # lora: rank r of each adapter's update B @ A
    lora_alpha: float = 16.0  # lora: the update is scaled by alpha / r
    layer_decay: float = 0.75  # discriminative on a transformer: each block's LR x this below the next
    transformer_blocks: bool = False  # the backbone's groups past the stem are transformer blocks (its spec)


class Strategy:
    name: str = ""
    summary: str = ""  # what it does, one sentence
    when: str = ""  # when to use it, one sentence
    default_lr: float = 1e-3
    pretrained: bool = True  # False: random init (the scratch baseline)
    knobs: tuple[str, ...] = ()  # StrategyParams fields this strategy reads
    bn_auto: str = "frozen"  # what --bn auto means for it (module docstring)
    trains: str = "all"  # which parameters of a trained group train: "all", "biases" or "adapters"

    def freeze_to(self, epoch: int, n_groups: int, p: StrategyParams, val_losses: Sequence[float] = ()) -> int:
        """The freeze boundary in `epoch` (0-based): groups [0, n) frozen. 0 trains everything."""
        return 0

    def lr_multipliers(self, n: int, n_groups: int, p: StrategyParams) -> list[float]:
        """LR multiple of each trainable group [n, n_groups), stem-side first."""
        return [1.0] * (n_groups - n)

    def next_change(self, epoch: int, n_groups: int, p: StrategyParams) -> int | None:
        """The next epoch at which the plan is known to change (the LR schedule's phase end)."""
        return None

    def validate(self, n_groups: int, epochs: int, p: StrategyParams) -> None:
        """Raise UserError for settings this strategy cannot run with."""

    def warnings(self, n_groups: int, epochs: int, p: StrategyParams) -> list[str]:
        """Settings that run but likely not as meant: said before the run is queued."""
        return self._bn_warnings(n_groups, epochs, p)

    def unfreezes(self, n_groups: int, epochs: int, p: StrategyParams) -> bool:
        """Whether pretrained groups unfreeze during the run, after epochs with them frozen (a
        plateau-driven strategy assumed to plateau as often as it can)."""
        stalled = [1.0] * epochs
        first = self.freeze_to(0, n_groups, p, stalled)
        return any(self.freeze_to(e, n_groups, p, stalled) < first for e in range(epochs))

    def _bn_warnings(self, n_groups: int, epochs: int, p: StrategyParams) -> list[str]:
        if p.bn != "train" or not self.unfreezes(n_groups, epochs, p):
            return []
        return [
            f"--bn train with --strategy {self.name}: at each unfreeze the newly trained groups' BatchNorm "
            f"switches from the pretrained statistics the head learned on to batch statistics, and the "
            f"accuracy drops (two_phase on the demo data: see BENCHMARKS.md); --bn frozen keeps them"
        ]


def discriminative(n: int, n_groups: int, decay: float) -> list[float]:
    """lr_k / base = 1 / decay^(L-k) for the trainable groups k = n+1..L (1-based; the head is L)."""
    return [1.0 / decay ** (n_groups - k) for k in range(n + 1, n_groups + 1)]


BN_MODES = ("frozen", "train")


def batchnorm_mode(strategy: Strategy, setting: str, pretrained: bool) -> str:
    """What --bn `setting` ("auto", "frozen" or "train") means for `strategy`: "frozen" or "train".
    Without pretrained weights there are no statistics to hold: "train" whatever the setting (a
    grid of strategies shares one setting; the run's warnings say so)."""
    if not pretrained:
        return "train"
    return setting if setting in BN_MODES else strategy.bn_auto


# Every strategy, one instance each (strategies are stateless), in the order declared below.
STRATEGIES: Registry[Strategy] = Registry("strategy", make=lambda cls: cls())
register_strategy = STRATEGIES.register
list_strategies = STRATEGIES.names
get_strategy = STRATEGIES.get


@register_strategy
class FeatureExtraction(Strategy):
    name = "feature_extraction"
    summary = "Freeze the whole pretrained backbone and train only a new head on its features."
    when = "Small dataset close to ImageNet-like images: cheapest, and hard to overfit."
    default_lr = 1e-3

    def freeze_to(self, epoch, n_groups, p, val_losses=()):
        return n_groups - 1


@register_strategy
class Partial(Strategy):
    name = "partial"
    summary = "Train the new head and the last N layer groups; keep the earlier, generic layers frozen."
    when = "Medium dataset, or images somewhat unlike ImageNet: adapt the high-level features only."
    default_lr = 1e-3
    knobs = ("unfreeze", "lr_decay", "bn")

    def freeze_to(self, epoch, n_groups, p, val_losses=()):
        return n_groups - 1 - p.unfreeze

    def lr_multipliers(self, n, n_groups, p):
        return discriminative(n, n_groups, p.lr_decay)

    def validate(self, n_groups, epochs, p):
        _check_decay(p)
        if not 1 <= p.unfreeze <= n_groups - 1:
            raise UserError(
                f"--unfreeze {p.unfreeze}: this backbone has {n_groups - 1} layer groups "
                f"below the head; choose 1 to {n_groups - 1}"
            )


@register_strategy
class Full(Strategy):
    name = "full"
    summary = "Fine-tune every layer at a low learning rate, starting from the pretrained weights."
    when = "Plenty of data (hundreds of images per class) or a domain far from ImageNet."
    default_lr = 1e-4
    knobs = ("head_lr_factor", "bn")

    def lr_multipliers(self, n, n_groups, p):
        # The head is new and random: at the body's low LR it would barely learn.
        return [1.0] * (n_groups - n - 1) + [p.head_lr_factor]

    def validate(self, n_groups, epochs, p):
        if p.head_lr_factor <= 0:
            raise UserError(
                f"--head-lr-factor {p.head_lr_factor}: must be > 0 (10 trains the new head at "
                f"10x the pretrained layers' LR)"
            )


@register_strategy
class TwoPhase(Strategy):
    name = "two_phase"
    summary = "Train the head alone first, then unfreeze everything and fine-tune at a lower LR."
    when = "A safer full fine-tune: the new head settles before its gradients reach the backbone."
    default_lr = 1e-3
    knobs = ("head_epochs", "phase2_lr_factor", "bn")

    def freeze_to(self, epoch, n_groups, p, val_losses=()):
        return n_groups - 1 if epoch < p.head_epochs else 0

    def lr_multipliers(self, n, n_groups, p):
        return [1.0] if n == n_groups - 1 else [p.phase2_lr_factor] * (n_groups - n)

    def next_change(self, epoch, n_groups, p):
        return p.head_epochs if epoch < p.head_epochs else None

    def validate(self, n_groups, epochs, p):
        if not 1 <= p.head_epochs < epochs:
            raise UserError(
                f"--head-epochs {p.head_epochs}: the head-only phase must last 1 to {epochs - 1} epochs of the {epochs}"
            )
        if p.phase2_lr_factor <= 0:
            raise UserError("--phase2-lr-factor must be > 0 (0.1 trains the second phase at LR/10)")


@register_strategy
class Discriminative(Strategy):
    """On a transformer whose groups are its blocks (a timm ViT), the LR decays per block by
    --layer-decay, BEiT's layer-wise decay (timm's `param_groups_layer_decay`): the block k below
    the head trains at layer_decay^k of the head's LR, the stem (patch and position embeddings)
    lowest. Elsewhere, by --lr-decay per layer group."""

    name = "discriminative"
    summary = "Fine-tune every layer, with learning rates falling by a factor per group towards the stem."
    when = (
        "Full fine-tuning that protects the generic early features: lr_k = base / decay^(L-k); "
        "on a transformer, per block: base x layer_decay^(L-k)."
    )
    default_lr = 1e-3
    knobs = ("lr_decay", "layer_decay", "bn")

    def lr_multipliers(self, n, n_groups, p):
        if p.transformer_blocks:
            return [p.layer_decay ** (n_groups - k) for k in range(n + 1, n_groups + 1)]
        return discriminative(n, n_groups, p.lr_decay)

    def validate(self, n_groups, epochs, p):
        _check_decay(p)
        if not 0 < p.layer_decay <= 1:
            raise UserError(
                f"--layer-decay {p.layer_decay}: must be in (0, 1] (0.65 to 0.85 is usual for ViTs; 1 gives "
                f"every block the same LR)"
            )


@register_strategy
class Progressive(Strategy):
    name = "progressive"
    summary = "Start with the head; unfreeze one more group, top down, every K epochs or on a val-loss plateau."
    when = "Small to medium data where full fine-tuning overfits: the ULMFiT recipe."
    default_lr = 1e-3
    knobs = ("unfreeze_every", "unfreeze_on", "patience", "lr_decay", "stage_lr_factor", "bn")

    def freeze_to(self, epoch, n_groups, p, val_losses=()):
        if p.unfreeze_on == "schedule":
            return max(0, n_groups - 1 - epoch // p.unfreeze_every)
        # Plateau: replay the history, unfreezing one group each time `patience` epochs pass
        # without a new best val loss. Pure in the history, so a resume replays the same steps.
        n, best, waited = n_groups - 1, float("inf"), 0
        for loss in val_losses[:epoch]:
            if loss < best - 1e-4:
                best, waited = loss, 0
            else:
                waited += 1
            if waited >= p.patience:
                n, waited = max(0, n - 1), 0
        return n

    def lr_multipliers(self, n, n_groups, p):
        # Stage s (s groups unfrozen below the head) runs at stage_lr_factor^s of the plan.
        stage = p.stage_lr_factor ** (n_groups - 1 - n)
        return [m * stage for m in discriminative(n, n_groups, p.lr_decay)]

    def next_change(self, epoch, n_groups, p):
        if p.unfreeze_on != "schedule" or 1 + epoch // p.unfreeze_every >= n_groups:
            return None
        return (epoch // p.unfreeze_every + 1) * p.unfreeze_every

    def validate(self, n_groups, epochs, p):
        _check_decay(p)
        if p.unfreeze_on not in ("schedule", "plateau"):
            raise UserError(f"--unfreeze-on {p.unfreeze_on!r}: choose schedule or plateau")
        if p.unfreeze_every < 1 or p.patience < 1:
            raise UserError("--unfreeze-every and --patience must be at least 1 epoch")
        if not 0 < p.stage_lr_factor <= 1:
            raise UserError(
                f"--stage-lr-factor {p.stage_lr_factor}: must be in (0, 1] (0.5 halves every "
                f"group's LR at each unfreezing step; 1 keeps it)"
            )

    def warnings(self, n_groups, epochs, p):
        said = self._bn_warnings(n_groups, epochs, p)
        if p.unfreeze_on != "schedule":
            return said
        reached = n_groups - self.freeze_to(epochs - 1, n_groups, p)
        if reached >= n_groups:
            return said
        needed = 1 + (n_groups - 1) * p.unfreeze_every
        return said + [
            f"progressive unfreezes {reached} of {n_groups} groups in {epochs} epochs (one more every "
            f"{p.unfreeze_every}); raise --epochs to {needed} or lower --unfreeze-every to train them all"
        ]


@register_strategy
class Scratch(Strategy):
    name = "scratch"
    summary = "Random initialisation, every layer trained: the baseline that shows what pretraining buys."
    when = "As a control in a comparison, or when the images share nothing with ImageNet."
    default_lr = 1e-3
    pretrained = False
    bn_auto = "train"


@register_strategy
class LoRA(Strategy):
    name = "lora"
    summary = (
        "Freeze every pretrained weight; train low-rank adapters (rank r) beside the attention and MLP "
        "projections (convolutions in a CNN) and the new head."
    )
    when = "A large pretrained model (a ViT) and little data: a fine-tune's reach at a few percent of its parameters."
    default_lr = 1e-3
    knobs = ("lora_rank", "lora_alpha", "bn")
    trains = "adapters"

    def validate(self, n_groups, epochs, p):
        if p.lora_rank < 1:
            raise UserError(f"--lora-rank {p.lora_rank}: must be at least 1 (4 to 16 is usual)")
        if p.lora_alpha <= 0:
            raise UserError(
                f"--lora-alpha {p.lora_alpha}: must be > 0 (the adapters' update is scaled by alpha / rank; "
                f"twice the rank is usual)"
            )


@register_strategy
class BitFit(Strategy):
    name = "bitfit"
    summary = "Freeze every pretrained weight but the bias terms; train those and the new head."
    when = "The cheapest fine-tune of the whole body: its biases are about 0.1-1% of its parameters."
    default_lr = 1e-3
    knobs = ("bn",)
    trains = "biases"


def _check_decay(p: StrategyParams) -> None:
    if p.lr_decay < 1:
        raise UserError(
            f"--lr-decay {p.lr_decay}: must be at least 1 (2.6 to 10 is usual; 1 gives every group the same LR)"
        )
