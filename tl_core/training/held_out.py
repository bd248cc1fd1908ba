"""The held-out test split, scored once after the last epoch (`score_test_split`).

Nothing before this reads a test image: the split is carved before train and val (data/splits.py),
and the loaders, feature cache, best epoch, plateau unfreezing, LR finder and data probe see train
and val only. The test pass runs the whole model on the images in the run's precision (val may
read cached features, bf16 where the hardware computes it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..analysis.metrics import scores
from ..config import RunConfig
from ..data import decode_cache
from ..data.splits import Splits
from ..logs import logger
from ..models.adapters import load_plain_state_dict
from .checkpoint import Checkpoint
from .loop import evaluate
from .run_data import CHANNELS_LAST, RunData

log = logger(__name__)


def score_test_split(
    cfg: RunConfig, model: nn.Module, d: RunData, device: torch.device, amp, loss_fn, best: Path
) -> dict:
    """{"test": the checkpoint chosen on val (`best`, best.pt), "test_last": the last epoch's model,
    only where that is not the best}, each metrics.scores with the loss and the 1-based epoch; {} for
    a run without a test split. The model is left at the weights it came with (the last epoch's),
    so this may be called from a resume that had no epoch left."""
    if not d.splits.test:
        return {}
    held_out = Splits(d.classes, d.splits.test, d.splits.test, d.index)
    _, loader, _ = decode_cache.make_loaders(
        held_out,
        d.rows,
        d.pipeline,
        d.batch_size,
        cfg.seed,
        d.workers,
        device,
        channels_last=CHANNELS_LAST,
        enabled=cfg.decode_cache == "on",
    )

    def scored(epoch: int) -> dict:
        ev = evaluate(model, loader, loss_fn, device, amp, len(d.classes))
        return {**scores(ev["confusion"].tolist(), d.classes), "loss": ev["val_loss"], "epoch": epoch + 1}

    chosen = Checkpoint.load(best, map_location=device)
    out = {} if chosen.epoch == cfg.epochs - 1 else {"test_last": scored(cfg.epochs - 1)}
    last = {k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}
    load_plain_state_dict(model, chosen.model)  # best.pt holds the plain architecture (LoRA's adapters merged)
    out["test"] = scored(chosen.epoch)
    model.load_state_dict(last)
    log.info(
        f"test ({len(d.splits.test)} images, epoch {chosen.epoch + 1} chosen on val): acc {out['test']['acc']:.4f}"
        + (f"; the last epoch's model: acc {out['test_last']['acc']:.4f}" if "test_last" in out else "")
    )
    return out
