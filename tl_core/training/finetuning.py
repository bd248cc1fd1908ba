"""Fine-tuning: a strategy's plan applied to a model's layer groups over a run.

One convention, fastai's: `freeze_to(n)` freezes groups 0..n-1 (stem first) and trains the rest,
so n = 0 trains everything and n = L-1 (of L groups, the head last) trains the head alone.
Strategies answer with that boundary (strategies.py), the feature cache cuts there (cuts.py,
feature_cache.py), and this module moves it:
  - within a trained group, a parameter-efficient strategy trains a subset (`Strategy.trains`:
    its biases, BitFit; its LoRA adapters, models/adapters.py), the new head always in full;
  - frozen parameters get no gradient, and frozen groups stay in eval mode, so their BatchNorm
    running statistics do not move and normalise as at inference, as the feature cache computed
    them (Lightning's BaseFinetuning with train_bn=False stops the statistics too, by
    track_running_stats=False, but then normalises by batch statistics while training);
  - with `--bn frozen` (StrategyParams.bn), every pretrained BatchNorm stays in eval mode in the
    trained groups too: it normalises by the running statistics the frozen phase used, which never
    move, while its affine weight and bias train with their group (Keras's recipe at an unfreeze).
    The mode is a pure function of the boundary and the config, set every epoch: a resume gets it
    back without any state. (fastai's train_bn, BatchNorm trained in frozen groups too, is not
    offered: the feature cache computes frozen groups once, necessarily in eval mode.)
  - the optimizer holds exactly the trainable groups, each at its own peak LR; a group that
    unfreezes is added with fresh state, groups already there keep theirs (Adam moments); each
    layer group is split in two optimizer groups, its weights with weight decay and its norms,
    biases and embeddings without (timm's param_groups_weight_decay, `decay_split`);
  - each move starts a phase: the LR schedule runs from the move to the strategy's next change,
    never past the run's last epoch.
`Finetuning` keeps that state (boundary, phase, val-loss history) and gives it to a checkpoint
with `state_dict()` and takes it back with `load_state_dict()`, as Lightning's callback does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import RunConfig
from ..models.adapters import is_adapter_parameter
from ..models.backbones import LayerGroup
from .strategies import Strategy, StrategyParams

_BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)  # BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d


def trained(trains: str, name: str) -> bool:
    """Whether the parameter `name` (as its group's `named_parameters` names it) of a trained group
    below the head trains under a strategy's `trains` ("all", "biases" or "adapters")."""
    if trains == "biases":
        return name.rpartition(".")[2] == "bias"
    if trains == "adapters":
        return is_adapter_parameter(name)
    return True


def freeze_to(groups: Sequence[LayerGroup], n: int, trains: str = "all") -> None:
    """Freeze groups[:n], train groups[n:] (fastai's freeze_to); in groups[n:] below the head, only
    the parameters `trains` names (`trained`); the head (groups[-1]) in full."""
    for i, group in enumerate(groups):
        head = i == len(groups) - 1
        for name, p in group.named_parameters():
            p.requires_grad_(i >= n and (head or trained(trains, name)))


def set_train_mode(model: nn.Module, groups: Sequence[LayerGroup], n: int, bn: str = "train") -> None:
    """model.train(), but groups[:n] (the frozen ones) in eval mode: their BatchNorm statistics stay put.

    bn "frozen": every BatchNorm outside the new head (groups[-1]) in eval mode as well, trained
    groups' included (their affine parameters still get gradients); "train": trained groups'
    BatchNorm normalises by batch statistics and updates its running statistics.
    """
    model.train()
    for group in groups[:n]:
        for module in group.modules():
            module.eval()
    if bn == "frozen":
        head = {id(m) for part in groups[-1].modules() for m in part.modules()}
        for m in model.modules():  # the whole model: a BatchNorm outside every group is held too
            if isinstance(m, _BATCHNORMS) and id(m) not in head:
                m.eval()


def make_optimizer(cfg: RunConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        # Nesterov needs a momentum: --momentum 0 (which the config allows) is plain SGD.
        return torch.optim.SGD(
            param_groups,
            lr=cfg.base_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
    return torch.optim.AdamW(param_groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay)


NO_DECAY = "/no_decay"  # the suffix of a layer group's optimizer group without weight decay


def decay_split(group: LayerGroup) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights that take weight decay, parameters that do not) of a layer group.

    timm's `param_groups_weight_decay`: 1-D parameters (every BatchNorm and LayerNorm weight and
    bias, every bias) get none, since decay pulls a norm's scale toward zero, not toward a simpler
    function; nor do the bare parameters a family lists as parts of a group, ViT's class token and
    position embedding (timm's `VisionTransformer.no_weight_decay()`), nor those a timm model's own
    `no_weight_decay()` names (`group.no_decay`: relative position tables, position embeddings).
    Decay falls on the rest: convolution and linear weights.
    """
    bare = {id(p) for p in group.parts if isinstance(p, nn.Parameter)} | {id(p) for p in group.no_decay}
    decayed: list[nn.Parameter] = []
    not_decayed: list[nn.Parameter] = []
    for p in group.parameters():
        if not p.requires_grad:  # frozen inside a trained group (BitFit's weights, LoRA's base layers)
            continue
        (not_decayed if p.ndim <= 1 or id(p) in bare else decayed).append(p)
    return decayed, not_decayed


def _wanted(
    cfg: RunConfig,
    groups: Sequence[LayerGroup],
    n: int,
    multipliers: list[float],
    extra: Sequence[LayerGroup],
    split: bool,
) -> list[dict]:
    """The optimizer groups for groups[n:] and `extra`: two per layer group (`split`), named
    "<group>" (decayed) and "<group>/no_decay", each carrying the layer group's name as "group";
    or, for an optimizer restored from a checkpoint written before the split, one per layer group
    at one weight decay, as then."""
    model_decay = 0.0 if cfg.regularizer != "none" else cfg.weight_decay
    wanted = []
    for g, m, decay in [(g, m, model_decay) for g, m in zip(groups[n:], multipliers)] + [
        (g, multipliers[-1], cfg.weight_decay) for g in extra
    ]:
        lr = {"peak_lr": cfg.base_lr * m, "lr": cfg.base_lr * m}
        if not split:
            wanted.append({"params": g.parameters(), "name": g.name, **lr, "weight_decay": decay})
            continue
        decayed, not_decayed = decay_split(g)
        wanted += [
            {"params": params, "name": name, "group": g.name, **lr, "weight_decay": wd}
            for params, name, wd in ((decayed, g.name, decay), (not_decayed, g.name + NO_DECAY, 0.0))
            if params
        ]
    return wanted


def sync_param_groups(
    optimizer: torch.optim.Optimizer | None,
    cfg: RunConfig,
    groups: Sequence[LayerGroup],
    n: int,
    multipliers: list[float],
    extra: Sequence[LayerGroup] = (),
) -> torch.optim.Optimizer:
    """Make the optimizer hold exactly groups[n:], each at base LR x its multiplier, and the
    `extra` groups (a loss term's own modules, e.g. DANN's domain discriminator) at the head's LR.

    Groups already in the optimizer keep their state (Adam moments) and get their new peak LR;
    newly unfrozen groups are added (as fastai's freeze_to moves a boundary, not a rebuild).
    Each layer group is two optimizer groups (`_wanted`), its weights at --weight-decay and its
    1-D parameters and embeddings at none (`decay_split`), at one LR.
    With a regulariser toward the pretrained weights (--regularizer), the model's groups get no
    weight decay: it would pull them toward zero, against the regulariser's pull toward w0 (the
    head gets its own plain L2, --head-reg-strength, instead; L2-SP's recipe).
    """
    if optimizer is None:
        return make_optimizer(cfg, _wanted(cfg, groups, n, multipliers, extra, split=True))
    have = {pg["name"]: pg for pg in optimizer.param_groups}
    for w in _wanted(cfg, groups, n, multipliers, extra, split=is_split(optimizer.param_groups)):
        if w["name"] in have:
            have[w["name"]]["peak_lr"] = w["peak_lr"]
        else:
            optimizer.add_param_group(w)
    # Groups are only ever unfrozen; keep them ordered stem-side first like the model (a layer
    # group's decayed part before its NO_DECAY part).
    order = {g.name: i for i, g in enumerate([*groups, *extra])}
    optimizer.param_groups.sort(key=lambda pg: (order[pg.get("group", pg["name"])], pg["name"]))
    return optimizer


def is_split(param_groups: Sequence[dict]) -> bool:
    """Whether optimizer groups (an optimizer's, or a checkpoint's state_dict()["param_groups"])
    split each layer group by weight decay; checkpoints written before the split have one each."""
    return all("group" in pg for pg in param_groups)


def restore_optimizer(
    cfg: RunConfig,
    groups: Sequence[LayerGroup],
    n: int,
    multipliers: list[float],
    extra: Sequence[LayerGroup],
    state: dict,
) -> torch.optim.Optimizer:
    """The optimizer a checkpoint held (`state`: its state_dict()), over groups[n:] and `extra`, in
    the layout it was written in: split by weight decay, or, written before the split, one group
    per layer group with every parameter decayed as then (a run resumes as it started, whichever)."""
    optimizer = make_optimizer(cfg, _wanted(cfg, groups, n, multipliers, extra, split=is_split(state["param_groups"])))
    optimizer.load_state_dict(state)
    return optimizer


def phase_ends(epochs: Mapping[int, Mapping[str, float]], precisions: Sequence[dict] = ()) -> list[dict]:
    """Each phase of a run (epochs with the same trainable groups; strategies only unfreeze, so a
    count is never repeated) with its validation numbers at its last epoch, from the recorded
    `epochs` ({0-based epoch: metrics}); epochs counted from 1. The best epoch hides a phase that
    ends worse than the one before it; these do not. `precisions`: the run's "val_precision"
    entries, to say which precision produced each phase's numbers."""
    out: list[dict] = []
    for epoch in sorted(epochs):
        m = epochs[epoch]
        groups = int(m.get("trainable_groups", 0))
        if not out or out[-1]["trainable_groups"] != groups:
            out.append({"first_epoch": epoch + 1, "trainable_groups": groups})
        out[-1].update(
            last_epoch=epoch + 1, val_acc=m.get("val_acc"), val_loss=m.get("val_loss"), train_acc=m.get("train_acc")
        )
    for phase in out:
        said = [p for p in precisions if p["from_epoch"] <= phase["last_epoch"]]
        if said:
            phase["precision"] = said[-1]["precision"]
    return out


@dataclass
class Phase:
    start: int  # first epoch of the phase
    end: int  # the epoch at which its LR schedule ends (exclusive; at most the run's epochs)


class Finetuning:
    """Where a run's freeze boundary is, which LR phase it is in, and the val losses it has seen."""

    def __init__(self, strategy: Strategy, params: StrategyParams, groups: Sequence[LayerGroup], epochs: int):
        self.strategy, self.params, self.groups, self.epochs = strategy, params, groups, epochs
        self.boundary: int | None = None  # freeze_to(boundary); None until the first epoch is planned
        self.phase = Phase(0, epochs)
        self.val_losses: list[float] = []

    @property
    def planned_boundary(self) -> int:
        """The boundary, read once an epoch is planned (`plan`, or `load_state_dict` on resume)."""
        assert self.boundary is not None, "no epoch planned yet"
        return self.boundary

    @property
    def trainable_groups(self) -> int:
        """Groups above the boundary with a parameter that trains (under LoRA, a group whose layers
        take no adapter, EfficientNet-Lite's stem, has none)."""
        return sum(any(p.requires_grad for p in g.parameters()) for g in self.groups[self.boundary or 0 :])

    def plan(self, epoch: int) -> bool:
        """Move the boundary where the strategy wants it for `epoch`; True if it moved (a new phase)."""
        n = self.strategy.freeze_to(epoch, len(self.groups), self.params, self.val_losses)
        if n == self.boundary:
            return False
        self._move(n)
        # The schedule runs to the next change of plan, never past the run's last epoch.
        self.phase = Phase(
            epoch, min(self.epochs, self.strategy.next_change(epoch, len(self.groups), self.params) or self.epochs)
        )
        return True

    def widest(self) -> int:
        """The boundary with the most groups trainable that the plan can reach in the run (a
        plateau-driven strategy assumed to plateau as often as it can): what its memory must allow."""
        stalled = [1.0] * self.epochs
        return min(self.strategy.freeze_to(e, len(self.groups), self.params, stalled) for e in range(self.epochs))

    def multipliers(self) -> list[float]:
        """Each trainable group's LR as a multiple of the base LR, stem-side first."""
        return self.strategy.lr_multipliers(self.planned_boundary, len(self.groups), self.params)

    def train_mode(self, model: nn.Module) -> None:
        set_train_mode(model, self.groups, self.boundary or 0, self.params.bn)

    def observe(self, val_loss: float) -> None:
        """An epoch's validation loss (a plateau-driven strategy unfreezes on it)."""
        self.val_losses.append(val_loss)

    def state_dict(self) -> dict:
        return {
            "boundary": self.boundary,
            "phase": (self.phase.start, self.phase.end),
            "val_losses": list(self.val_losses),
        }

    def load_state_dict(self, state: dict) -> None:
        """Back to a checkpoint's state: its boundary (frozen again), phase and history."""
        self._move(state["boundary"])
        self.phase = Phase(*state["phase"])
        self.val_losses = list(state["val_losses"])

    @staticmethod
    def from_legacy(ckpt: dict, n_groups: int) -> dict:
        """The state of a checkpoint written before this class (trainable groups counted from the head)."""
        return {"boundary": n_groups - ckpt["n_trainable"], "phase": ckpt["phase"], "val_losses": ckpt["val_losses"]}

    def _move(self, n: int) -> None:
        freeze_to(self.groups, n, self.strategy.trains)
        self.boundary = n
