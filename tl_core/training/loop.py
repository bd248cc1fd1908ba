"""One epoch: train it (`train_one_epoch`) and evaluate on a loader (`evaluate`); how far an
epoch got when its run stopped in its middle (`EpochSoFar`), and the random streams it draws from.

Everything else of a run (its data, model, plan, checkpoints, record) is set up by run.py and
passed in: these functions only step the optimizer over batches and sum what they measured. Sums
stay on the device while an epoch trains: reading a GPU value back waits for the queued kernels.
"""

from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import RunConfig
from .finetuning import Phase
from .schedules import lr_factor, progress
from .stopping import RunCancelled, RunInterrupted, throttled
from .terms import Terms


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """The GPU allocator's peak since its last reset (run.py resets it every epoch), or on a CPU
    the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class EpochSoFar:
    """How far an epoch got: what a run stopped in the middle of it (its worker stopping) saves
    in its checkpoint, and what its resume starts that epoch from. The sums stay on the device
    while it trains (reading a GPU value back waits for the queued kernels)."""

    batches: int = 0  # batches done (the first ones of the epoch's order, EpochOrder)
    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | int = 0
    seen: int = 0
    sums: dict = field(default_factory=dict)  # the terms' logged values, summed over images
    seconds: float = 0.0  # training time spent on those batches
    rng: dict | None = None  # the random streams as they stood at the stop

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "loss_sum": float(self.loss_sum),
            "correct": int(self.correct),
            "seen": self.seen,
            "sums": {k: float(v) for k, v in self.sums.items()},
            "seconds": self.seconds,
            "rng": self.rng,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> EpochSoFar:
        return cls(
            state["batches"],
            torch.tensor(state["loss_sum"], device=device),
            torch.tensor(state["correct"], device=device),
            state["seen"],
            {k: torch.tensor(v, device=device) for k, v in state["sums"].items()},
            state["seconds"],
            state["rng"],
        )


def rng_state(device: torch.device) -> dict:
    """torch's random streams that training draws from: the CPU's, and the GPU's where it trains."""
    return {
        "cpu": torch.get_rng_state(),
        **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_one_epoch(
    model,
    loader,
    optimizer,
    loss_fn,
    cfg: RunConfig,
    device,
    amp,
    scaler,
    phase: Phase,
    epoch: int,
    bar,
    should_stop,
    terms: Terms | None = None,
    so_far: EpochSoFar | None = None,
) -> tuple[float, float, int, dict]:
    """Train one epoch: (mean task loss, accuracy, images seen, means of the terms' logged values).

    With --accumulate K the optimizer steps once every K batches (and at the epoch's end), each
    batch's loss divided by K: the gradient of one batch K times larger.
    `so_far` is updated after every batch. Given one with batches done (a run resumed in the middle
    of this epoch), those batches are drawn again in the epoch's order and passed over, and the
    random streams set back to where they stood at the stop: the epoch goes on as if it had never
    stopped. A stop is only taken between optimizer steps (no gradient half accumulated), before
    the next batch is drawn (its augmentation draws from the random streams saved).
    """
    terms = terms or Terms()
    so_far = so_far if so_far is not None else EpochSoFar()
    steps_per_epoch = len(loader)
    phase_steps = (phase.end - phase.start) * steps_per_epoch
    run_steps = cfg.epochs * steps_per_epoch
    k = cfg.accumulate
    # Sums stay on the device: reading a GPU value back waits for the queued kernels, so it is
    # done only when the progress bar shows it (at most twice a second) and at the end.
    so_far.loss_sum = torch.as_tensor(so_far.loss_sum, device=device, dtype=torch.float32)
    so_far.correct = torch.as_tensor(so_far.correct, device=device, dtype=torch.long)
    sums = so_far.sums
    show = throttled(lambda: True, 0.5)
    optimizer.zero_grad(set_to_none=True)
    pending = False  # gradients accumulated since the last step
    done, t0 = so_far.batches, time.perf_counter() - so_far.seconds
    batches = iter(loader)
    for i in range(steps_per_epoch):
        if i < done:  # trained before the run stopped
            if len(next(batches)[1]):
                terms.skip()
            continue
        if i == done and so_far.rng is not None:
            set_rng_state(so_far.rng, device)
        if not pending:
            try:
                if should_stop():
                    raise RunCancelled()
            except RunInterrupted:
                so_far.seconds, so_far.rng = time.perf_counter() - t0, rng_state(device)
                raise
        x, y = next(batches)
        if len(y) == 0:  # every image of this batch was unreadable (and listed in the log)
            so_far.batches = i + 1
            continue
        # The schedule restarts with every phase (each unfreezing step is a new fit).
        t = progress((epoch - phase.start) * steps_per_epoch + i, phase_steps)
        for pg in optimizer.param_groups:
            pg["lr"] = pg["peak_lr"] * lr_factor(cfg.schedule, t)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            # One pass: with domain adaptation, the target batch rides behind the source's (terms.py).
            logits = model(terms.inputs(x))[: len(y)]
            loss = loss_fn(logits, y)
            extra, logged = terms(len(y), (epoch * steps_per_epoch + i) / max(run_steps - 1, 1))
        objective = loss if extra is None else loss + extra
        scaler.scale(objective / k if k > 1 else objective).backward()
        pending = True
        if (i + 1) % k == 0:
            _step(optimizer, scaler)
            pending = False
        so_far.loss_sum += loss.detach().float() * len(y)
        so_far.correct += (logits.detach().argmax(1) == y).sum()
        if logged:
            logged["total_loss"] = objective.detach().float()
        for key, value in logged.items():
            sums[key] = sums.get(key, 0) + value * len(y)
        so_far.seen += len(y)
        so_far.batches = i + 1
        bar.update(1)
        if not bar.disable and show():
            bar.set_postfix(
                loss=f"{so_far.loss_sum.item() / so_far.seen:.3f}", acc=f"{so_far.correct.item() / so_far.seen:.3f}"
            )
    if pending:  # an epoch's last batches, fewer than K: their step is not carried into the next epoch
        _step(optimizer, scaler)
    so_far.seconds = time.perf_counter() - t0
    seen = so_far.seen
    means = {key: value.item() / max(seen, 1) for key, value in sums.items()}
    if "reg_penalty" in means:  # the regulariser's share of what was minimised
        means["reg_share"] = means["reg_penalty"] / means["total_loss"] if means["total_loss"] else 0.0
    means.pop("total_loss", None)
    return so_far.loss_sum.item() / max(seen, 1), so_far.correct.item() / max(seen, 1), seen, means


def _step(optimizer, scaler) -> None:
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


@torch.inference_mode()
def evaluate(model, loader, loss_fn, device, amp, num_classes: int, keep: bool = False) -> dict:
    """Validation loss, accuracy, top-5 and confusion; with `keep`, each image's label, predicted
    class and the log-probabilities of both too (on the device: read back only when the epoch is
    the best)."""
    model.eval()
    # Summed on the device and read back once (see train_one_epoch).
    total_loss, correct, top5 = (torch.zeros((), device=device) for _ in range(3))
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    seen, kept = 0, []
    for x, y in loader:
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        if keep:  # four numbers an image, whatever the number of classes
            lp = logits.float().log_softmax(1)
            top = lp.max(1)
            kept.append(torch.stack([y.float(), top.indices.float(), top.values, lp.gather(1, y[:, None])[:, 0]], 1))
        total_loss += loss_fn(logits.float(), y) * len(y)
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        if num_classes >= 5:
            top5 += (logits.topk(5, 1).indices == y[:, None]).any(1).sum()
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes**2)
        seen += len(y)
    out = {
        "val_loss": total_loss.item() / max(seen, 1),
        "val_acc": correct.item() / max(seen, 1),
        "confusion": confusion.view(num_classes, num_classes).cpu(),
    }
    if num_classes >= 5:
        out["val_top5"] = top5.item() / max(seen, 1)
    if keep:
        out["outputs"] = torch.cat(kept) if kept else None
    return out
