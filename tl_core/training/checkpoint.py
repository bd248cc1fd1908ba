"""A run's checkpoints: what one holds (`Checkpoint`), written and read here alone, and a run
restored from its own (`resume`).

A run keeps two in its folder (run_folders.py), each written atomically (a crash mid-write never
leaves half of one):
  best.pt  the weights of the epoch best on val so far (prediction, export, the test pass), of the
           plain architecture: a LoRA run's adapters merged into its weights (models/adapters.py),
           so it loads into the model `create_backbone` builds, as every run's does;
  last.pt  everything to go on training, written at the end of every epoch, and where the run
           stopped when its worker stopped in the middle of an epoch (`partial`).
On disk a checkpoint is a flat dict of tensors and plain values, read with weights_only=True;
its keys are the `Checkpoint` fields' names, as every release has written them. Checkpoints of
older releases load too: without run uid or config fingerprint (checked against the config they
hold), with the fine-tuning plan as three keys (`Finetuning.from_legacy`) and the random streams
as one CPU tensor.

A resume takes only the run's own last.pt, written with the run's settings, over the same classes
(`Checkpoint.check`); anything else is refused, never half-loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..config import RunConfig
from ..errors import UserError
from ..logs import logger
from ..models.adapters import plain_state_dict
from ..models.backbones import Backbone, LayerGroup
from ..store.store import Run
from .finetuning import Finetuning, restore_optimizer
from .loop import EpochSoFar, rng_state, set_rng_state
from .record import RunRecord
from .run_data import RunData
from .terms import Terms

log = logger(__name__)

# What last.pt holds beside best.pt's keys, always (best_confusion is None before a best epoch).
_TRAINING = (
    "optimizer",
    "scaler",
    "finetuning",
    "terms",
    "rng",
    "loader_rng",
    "best",
    "best_confusion",
    "wall_seconds",
)


@dataclass
class Checkpoint:
    """What a checkpoint holds. Every one: the model's weights, the (0-based) epoch they are of,
    the classes in the head's order, the run's config, and whose it is (run uid, config
    fingerprint). best.pt adds that epoch's `val_acc`; last.pt adds the state to go on training
    (`resumable`): optimizer, grad scaler, the strategy's plan, the terms' modules, the random
    streams, the best epoch so far; that epoch's recorded metrics; and, for a run stopped in the
    middle of the next epoch, how far that got (`partial`, EpochSoFar.state_dict)."""

    model: dict
    epoch: int  # the last epoch done, counted from 0 (-1: stopped in the middle of the first)
    classes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # RunConfig.model_dump()
    run_uid: str | None = None  # None in checkpoints of runs made before run uids
    config_fingerprint: str | None = None
    val_acc: float | None = None  # best.pt
    # last.pt: what goes on training
    optimizer: dict | None = None
    scaler: dict | None = None
    finetuning: dict | None = None  # Finetuning.state_dict
    terms: dict | None = None  # Terms.state_dict
    rng: dict | None = None  # rng_state: torch's random streams
    loader_rng: torch.Tensor | None = None  # the training loader's shuffling generator
    best: tuple[float, int] | None = None  # (val_acc, epoch) of the best epoch so far
    best_confusion: torch.Tensor | None = None
    wall_seconds: float | None = None  # training time up to this checkpoint
    metrics: dict | None = None  # the epoch's recorded row, in case the process died before writing it
    partial: dict | None = None  # EpochSoFar.state_dict of the epoch after `epoch`, stopped in its middle
    legacy: dict = field(default_factory=dict)  # keys of older formats (n_trainable, phase, val_losses)

    @property
    def resumable(self) -> bool:
        """Whether training can go on from it (last.pt), or it holds weights only (best.pt)."""
        return self.optimizer is not None

    def to_dict(self) -> dict:
        """The dict written on disk: the fields set, and every training field of a resumable one."""
        out = {**self.legacy}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "legacy" and (value is not None or (self.resumable and f.name in _TRAINING)):
                out[f.name] = value
        return out

    def save(self, path: Path) -> None:
        """Write it to `path` atomically: a crash mid-write never leaves a half checkpoint."""
        tmp = path.with_suffix(".tmp")
        try:
            torch.save(self.to_dict(), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """The checkpoint at `path`, of this release or an older one (tensors only: weights_only)."""
        raw = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(raw, dict) or "model" not in raw or "epoch" not in raw:
            raise UserError(
                f"{path} is not a checkpoint TransferLab wrote (no model weights and epoch); start a new run instead"
            )
        names = {f.name for f in fields(cls)} - {"legacy"}
        ckpt = cls(
            **{k: v for k, v in raw.items() if k in names}, legacy={k: v for k, v in raw.items() if k not in names}
        )
        if isinstance(ckpt.rng, torch.Tensor):  # written before the GPU's stream was saved too
            ckpt.rng = {"cpu": ckpt.rng}
        if ckpt.best is not None:
            ckpt.best = cast(tuple[float, int], tuple(ckpt.best))  # (val_acc, epoch), a list where older
        return ckpt

    def fingerprint(self) -> str:
        """The fingerprint of the settings it was written with (of the config it holds, where older)."""
        return self.config_fingerprint or RunConfig.from_stored(self.config).fingerprint()

    def finetuning_state(self, n_groups: int) -> dict:
        """The strategy's plan as it stood (Finetuning.state_dict), from either format."""
        return self.finetuning or Finetuning.from_legacy(self.legacy, n_groups)

    def check(self, path: Path, run: Run, cfg: RunConfig, classes: list[str]) -> None:
        """Refuse a checkpoint that is not this run's own, as it was configured, over these classes."""
        if self.run_uid is not None and self.run_uid != run.uid:  # older checkpoints name no owner
            raise UserError(
                f"cannot resume run {run.id}: {path} is the checkpoint of another run (uid {self.run_uid}, "
                f"not {run.uid}); start a new run instead"
            )
        if self.fingerprint() != cfg.fingerprint():
            raise UserError(
                f"cannot resume run {run.id}: its checkpoint {path} was written with other settings "
                f"than the run's config; start a new run instead"
            )
        if self.classes != classes:
            raise UserError(
                f"cannot resume: the dataset's classes changed since the checkpoint {path} "
                f"({len(self.classes)} then, {len(classes)} now); start a new run instead"
            )


@dataclass
class Best:
    """The epoch best on val so far (-1 before any): its accuracy and confusion matrix."""

    acc: float = -1.0
    epoch: int = -1
    confusion: torch.Tensor | None = None


class RunCheckpoints:
    """A run's two checkpoints in its folder, written from the objects that train: best.pt after an
    epoch better on val, last.pt after every epoch (and where a stopped epoch got)."""

    def __init__(self, run_dir: Path, run: Run, cfg: RunConfig, classes: list[str]):
        self.best_path, self.last_path = run_dir / "best.pt", run_dir / "last.pt"
        self._common: dict[str, Any] = dict(
            classes=classes, config=cfg.model_dump(), run_uid=run.uid, config_fingerprint=cfg.fingerprint()
        )  # what a resume checks

    def save_best(self, model: nn.Module, epoch: int, val_acc: float) -> None:
        Checkpoint(plain_state_dict(model), epoch, val_acc=val_acc, **self._common).save(self.best_path)

    def save_last(
        self,
        model: nn.Module,
        optimizer,
        scaler,
        plan: Finetuning,
        terms: Terms,
        d: RunData,
        device: torch.device,
        epoch: int,
        best: Best,
        wall_seconds: float,
        metrics: dict | None,
        partial: EpochSoFar | None = None,
    ) -> None:
        """Everything to go on training after `epoch` (and, with `partial`, part of the next)."""
        Checkpoint(
            model.state_dict(),
            epoch,
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            finetuning=plan.state_dict(),
            terms=terms.state_dict(),
            rng=rng_state(device),
            loader_rng=d.train.generator.get_state(),
            best=(best.acc, best.epoch),
            best_confusion=best.confusion,
            wall_seconds=wall_seconds,
            metrics=metrics,
            partial=partial.state_dict() if partial is not None else None,
            **self._common,
        ).save(self.last_path)


@dataclass
class Progress:
    """Where the epoch loop starts: zeros for a fresh run, a checkpoint's values on resume."""

    start_epoch: int = 0
    optimizer: torch.optim.Optimizer | None = None
    best: Best = field(default_factory=Best)
    elapsed: float = 0.0
    so_far: EpochSoFar | None = None  # the start epoch's batches done before a stop in its middle
    last_metrics: dict | None = None  # the last epoch's recorded metrics


def resume(
    path: Path,
    run: Run,
    cfg: RunConfig,
    bb: Backbone,
    plan: Finetuning,
    d: RunData,
    record: RunRecord,
    scaler,
    device: torch.device,
    terms: Terms | None = None,
    extra: Sequence[LayerGroup] = (),
) -> Progress:
    """Restore a run from its own last checkpoint (written at the end of every epoch, and where
    the run stopped when its worker stopped in the middle of an epoch).

    The checkpoint must be this run's (its uid) and written with these settings (the config's
    fingerprint); anything else is refused, never half-loaded. A run that stopped before its
    first checkpoint starts from its first epoch.
    """
    if not path.exists():
        if run.epochs_done:
            raise UserError(
                f"cannot resume run {run.id}: it recorded {run.epochs_done} epochs but its checkpoint "
                f"{path} is gone; start a new run with the same settings instead"
            )
        log.info(f"resume: run {run.id} stopped before its first checkpoint; starting from epoch 1")
        return Progress()
    ckpt = Checkpoint.load(path)
    ckpt.check(path, run, cfg, d.classes)
    # What save_last always writes: last.pt is never a weights-only checkpoint.
    assert ckpt.optimizer is not None and ckpt.rng is not None and ckpt.loader_rng is not None
    assert ckpt.best is not None and ckpt.wall_seconds is not None
    partial = ckpt.partial  # written when the run stopped in the middle of an epoch
    record.note(
        resumed_from={
            "epoch": ckpt.epoch + 1,
            **({"batch": partial["batches"]} if partial else {}),
            "checkpoint": str(path),
        }
    )
    log.info(
        f"resume: run {run.id} continues after epoch {ckpt.epoch + 1}"
        + (f" and {partial['batches']}/{len(d.train)} batches of epoch {ckpt.epoch + 2}" if partial else "")
        + f" from {path}"
    )
    if ckpt.metrics is not None:  # the checkpointed epoch's row, in case the process died before writing it
        record.store.log_epoch(run.id, ckpt.epoch, ckpt.metrics, best=ckpt.best)
    bb.model.load_state_dict(ckpt.model)
    # The plan as it stood (its groups frozen again), then an optimizer with exactly the groups it
    # held (the unfrozen ones, stem-side first) and its state: Adam moments, each group's peak LR.
    plan.load_state_dict(ckpt.finetuning_state(len(bb.groups)))
    if terms is not None:
        terms.load_state_dict(ckpt.terms or {})
    optimizer = restore_optimizer(cfg, bb.groups, plan.planned_boundary, plan.multipliers(), extra, ckpt.optimizer)
    if ckpt.scaler is not None:
        scaler.load_state_dict(ckpt.scaler)
    set_rng_state(ckpt.rng, device)
    d.train.generator.set_state(ckpt.loader_rng)
    return Progress(
        start_epoch=ckpt.epoch + 1,
        optimizer=optimizer,
        best=Best(*ckpt.best, ckpt.best_confusion),
        elapsed=ckpt.wall_seconds,
        so_far=EpochSoFar.from_state(partial, device) if partial else None,
        last_metrics=ckpt.metrics,
    )
