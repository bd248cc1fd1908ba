"""The loss's terms as the training loop composes them, and the target domain they read.

term_specs.py declares the methods (regularisers toward the pretrained weights, domain
adaptation), regularizers.py and adaptation.py implement them; this module sets up a run's choice of them on the weights training starts from
(EWC's Fisher estimate included) and composes them as one `Terms`: the loop adds its sum to the
cross-entropy whatever the methods, and logs what it reports. An adaptation term reads the
features the head classifies (`FeatureTap`) for the source batch and for a batch of the target
domain (`TargetData`, from --target-data), whose labels, when it has them, only ever evaluate.

With an adaptation term the source batch and a target batch go through the model in ONE forward
pass, concatenated (`Terms.inputs`), and the outputs are split after it, as Ganin & Lempitsky's
DANN and tllib's dann.py do (`x = torch.cat((x_s, x_t)); y, f = model(x)`): BatchNorm then
normalises both domains with one set of batch statistics, and its running statistics move once a
step, on the mixture. (Two passes would normalise each domain by its own statistics, itself a
form of adaptation, AdaBN, that hides the gap the term is meant to close, and leave the running
statistics of every step skewed to the target.) MMD does the same, although tllib's dan.py runs
two passes: DAN's paper (Long et al. 2015, AlexNet) had no BatchNorm to tell them apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..analysis import forgetting
from ..config import RunConfig
from ..data import decode_cache, folders
from ..data.splits import Splits, batch_size_for
from ..errors import UserError
from ..models import backbones
from . import adaptation as adaptations
from . import regularizers
from .run_data import RunData


class FeatureTap:
    """The head's input (the features the head classifies), caught as the head is called."""

    def __init__(self, head: nn.Module):
        self.value: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._catch)

    def _catch(self, module, args) -> None:
        self.value = args[0]

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        assert value is not None  # the head ran since the last take
        return value.float().flatten(1)

    def close(self) -> None:
        self._handle.remove()


@dataclass
class Terms:
    """The terms a run adds to its cross-entropy (regularizers.py, adaptation.py), composed as one: a regulariser
    toward the pretrained weights, and a domain-adaptation term between the features of the
    source batch just forwarded and those of a target-domain batch. Either may be absent."""

    regularizer: regularizers.Regularizer | None = None
    adaptation: adaptations.Adaptation | None = None
    tap: FeatureTap | None = None
    target: Iterator[torch.Tensor] | None = None  # target-domain training batches, cycled

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The batch the model runs on for source batch `x`: `x` itself, or, with an adaptation
        term, `x` with the next target batch after it (one pass for both domains; the first
        len(x) outputs are the source's)."""
        if self.adaptation is None:
            return x
        assert self.target is not None  # set every epoch where there is an adaptation term
        return torch.cat([x, next(self.target).to(x.device, non_blocking=True)])

    def __call__(self, sources: int, run_progress: float) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """(the terms' sum, or None when there are none; what to log of them, as tensors), after the
        model ran on `inputs(x)`, whose first `sources` rows were the source batch."""
        parts: dict[str, torch.Tensor] = {}
        if self.regularizer is not None:
            parts["reg_penalty"] = self.regularizer.penalty()
        if self.adaptation is not None:
            assert self.tap is not None  # made with the adaptation term
            features = self.tap.take()
            parts["domain_loss"] = self.adaptation.loss(features[:sources], features[sources:], run_progress)
        if not parts:
            return None, {}
        total = sum(parts.values())
        assert isinstance(total, torch.Tensor)  # a sum of tensors (parts is not empty)
        logged = {
            **{k: v.detach().float() for k, v in parts.items()},
            **{
                k: torch.as_tensor(v, dtype=torch.float32)
                for k, v in (self.adaptation.stats if self.adaptation else {}).items()
            },
        }
        return total, logged

    def modules(self) -> list[nn.Module]:
        return self.adaptation.modules() if self.adaptation is not None else []

    def state_dict(self) -> dict:
        return {"adaptation": self.adaptation.state_dict()} if self.adaptation is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.adaptation is not None and "adaptation" in state:
            self.adaptation.load_state_dict(state["adaptation"])

    def skip(self) -> None:
        """A batch trained before the run stopped mid-epoch, passed over on resume: its target
        batch is drawn too (one per source batch, as `inputs` draws them), so the batches after it
        meet the same target batches as before."""
        if self.adaptation is not None:
            assert self.target is not None
            next(self.target)

    def close(self) -> None:
        if self.tap is not None:
            self.tap.close()


def cycle(loader, first_pass: int = 0) -> Iterator[torch.Tensor]:
    """A loader's image batches, again and again, each pass in its own order (target batches run
    alongside the source's)."""
    k = first_pass
    while True:
        empty = True
        for x, y in loader.for_epoch(k):
            if len(y):
                empty = False
                yield x
        if empty:
            raise UserError("--target-data: none of its images could be read; see the log for the files skipped")
        k += 1


@dataclass
class TargetData:
    """The target domain (--target-data): its images, in batches to train beside the source's
    (augmented as the source's are; its train split) and to evaluate on (never augmented; its val
    split) when it has labels."""

    index: folders.DatasetIndex
    labelled: bool
    train: object
    val: object
    note: dict

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """Target batches for one epoch, in an order that depends only on the run's seed (the
        loader's, load_target) and the epoch, so a resumed run sees the same ones as an
        uninterrupted run."""
        return cycle(self.train, first_pass=epoch * 1_000)

    def describe(self) -> dict:
        train, val = self.index.items["train"], self.index.items["val"]
        return {
            "data": self.index.root,
            "layout": self.index.layout,
            "labelled": self.labelled,
            "images": len({it.path for it in train + val}),
            "adapted_on": len(train),
            "evaluated_on": len(val),
            "skipped": len(self.index.skipped),
            "decode_cache": self.note,
        }


def load_target(cfg: RunConfig, d: RunData, device: torch.device, channels_last: bool) -> TargetData | None:
    """The target domain of a run with --target-data, in the source's preprocessing; None without.
    Its train split is adapted on, its val split evaluated on (one folder: both, folders.scan_target)."""
    if cfg.target_data is None:
        return None
    index, labelled = folders.scan_target(cfg.target_data, d.classes, cfg.in_channels)
    splits = Splits(d.classes, index.items["train"], index.items["val"], index)
    batch_size = min(d.batch_size, batch_size_for(None, len(splits.train))[0])
    train, val, note = decode_cache.make_loaders(
        splits,
        decode_cache.DatasetRows.of(index),
        d.pipeline,
        batch_size,
        cfg.seed + 1,
        0,
        device,
        channels_last=channels_last,
        enabled=cfg.decode_cache == "on",
    )
    return TargetData(index, labelled, train, val, note)


def make_terms(
    cfg: RunConfig, bb: backbones.Backbone, d: RunData, device: torch.device, channels_last: bool
) -> tuple[Terms, dict]:
    """The run's terms beside cross-entropy, set up on the weights training starts from; and what
    to say of them in the run's summary."""
    said: dict = {}
    regularizer = regularizers.make_regularizer(cfg.regularizer, cfg.reg_strength, cfg.head_reg_strength)
    if regularizer is not None:
        body = [p for g in bb.groups[:-1] for p in g.parameters()]
        fisher = None
        if regularizer.needs_fisher:
            fisher, n = _fisher(cfg, bb, d, body, device, channels_last)
            said["fisher"] = {
                "images": n,
                "source": "the pretrained model's own predictive distribution (its "
                "ImageNet classifier) on the run's training images: no source data at hand",
            }
        regularizer.setup(body, list(bb.groups[-1].parameters()), fisher)
        said["regularizer"] = {
            "name": regularizer.name,
            "optimizer": cfg.optimizer,
            "pull": regularizer_pull(regularizer.spec.label, cfg.optimizer),
        }
    adaptation = None
    if cfg.adapt != "none":
        adaptation = adaptations.make_adaptation(cfg.adapt, cfg.adapt_strength, _feature_dim(bb))
        assert adaptation is not None  # make_adaptation's None is for "none"
        for m in adaptation.modules():
            m.to(device)
    tap = FeatureTap(bb.head) if adaptation is not None else None
    terms = Terms(regularizer, adaptation, tap)  # target batches: set every epoch (TargetData.batches)
    return terms, said


def regularizer_pull(label: str, optimizer: str) -> str:
    """What the regulariser's pull toward w0 is under the run's optimizer, in one sentence.

    The penalty is a term of the loss, as Li et al. 2018 (L2-SP) and Kirkpatrick et al. 2017
    (EWC) define it and tllib adds it (SPRegularization); both papers and tllib's examples train
    with SGD, under which its gradient moves each weight by LR x alpha x (w - w0) a step (before
    momentum). Under AdamW (TransferLab's default) that gradient is divided, per weight, by Adam's
    running RMS of the weight's whole gradient, like any L2 term in Adam's loss (Loshchilov &
    Hutter 2019): a weight the task barely moves is pulled back at about the LR a step, whatever
    alpha, one the task moves hard much less. Kept in the loss (not made decoupled, as AdamW's own
    weight decay is), so that --optimizer sgd gives the papers' method exactly; said here, in the
    run's summary, and in the README."""
    if optimizer == "sgd":
        return f"{label}'s penalty in the loss under SGD, as in its paper: each weight pulled by LR x alpha x (w - w0)"
    return (
        f"{label}'s penalty in the loss under {optimizer.upper()}, which rescales its pull per weight by Adam's "
        f"running gradient RMS (its paper used SGD: --optimizer sgd for the paper's form)"
    )


def _feature_dim(bb: backbones.Backbone) -> int:
    first = next(m for m in bb.head.modules() if isinstance(m, nn.Linear))
    return first.in_features


def _fisher(cfg: RunConfig, bb: backbones.Backbone, d: RunData, body: list, device: torch.device, channels_last: bool):
    """EWC's diagonal Fisher, with the pretrained ImageNet classifier put back on the body for the
    estimate (the pretrained task's predictive distribution), the new head restored after."""
    new_head = bb.head
    bb.model.set_submodule(bb.spec.head_path, forgetting.imagenet_head(bb.spec.name).to(device))
    try:
        # The training images as validation sees them (never augmented), in a fixed order.
        splits = Splits(d.classes, d.splits.train, d.splits.train, d.index)
        _, unaugmented, _ = decode_cache.make_loaders(
            splits,
            d.rows,
            d.pipeline,
            d.batch_size,
            cfg.seed,
            0,
            device,
            channels_last=channels_last,
            enabled=cfg.decode_cache == "on",
        )
        images = (x for x, y in unaugmented if len(y))
        return regularizers.estimate_fisher(bb.model, body, images, cfg.fisher_images, seed=cfg.seed)
    finally:
        bb.model.set_submodule(bb.spec.head_path, new_head)
