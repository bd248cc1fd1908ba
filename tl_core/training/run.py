"""The training loop: one run, from its stored config to its recorded epochs and checkpoints.

Read `_fit` top to bottom:
  1. data: the split, each image decoded once (decode_cache.py), a batch size that fits the data;
  2. model: the pretrained body and a new head, in layer groups (backbones.py);
  3. the strategy's plan over those groups (finetuning.py) and frozen features cached on disk
     where groups are frozen (feature_cache.py);
  4. a fresh start, or, only when a resume was asked for, the run's own last checkpoint;
  then, every epoch:
  5. move the freeze boundary where the strategy wants it; the optimizer follows;
  6. train one epoch, setting each group's LR from its schedule (schedules.py) at every step;
  7. validate, record the epoch, save the checkpoints;
  and, after the last epoch, the held-out test split scored once (`_test_metrics`): the epoch
  chosen on val, and the last epoch where that is another.
Beside the task's cross-entropy, the loss may carry terms (losses.py): a regulariser toward the
pretrained weights, a domain-adaptation term on the features of a target-domain batch. They
are composed as one `Terms` (terms.py): one code path whatever the methods.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import random
import resource
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..models import backbones, channels
from ..data import scan_cache, folders, decode_cache, shared_memory
from ..data.splits import Splits, batch_size_for, class_weights, split_dataset, split_fingerprint
from . import feature_cache, gpu_memory
from ..analysis import forgetting, predictions
from ..models.backbones import LayerGroup
from ..config import RunConfig
from ..analysis.drift import Drift
from ..errors import UserError
from .finetuning import Finetuning, Phase, phase_ends, restore_optimizer, sync_param_groups
from ..logs import logger
from ..store.run_folders import run_folder
from .schedules import lr_factor, progress
from ..settings import current as settings
from ..analysis.metrics import balanced_accuracy, class_metrics, macro_f1, scores
from ..store.store import EpochWriter, Run, Store
from .strategies import get_strategy
from .terms import Terms, load_target, make_terms

log = logger(__name__)  # a run's process writes its train.log through it (logs.py)


class RunCancelled(Exception):
    pass


class RunInterrupted(Exception):
    """SIGTERM or SIGINT to a run a worker started: its worker is stopping (the signal's name)."""


class RunTaken(Exception):
    """The run is no longer this process's: failed as orphaned, or put back in the queue, by another worker."""


@dataclass
class RunResult:
    run_id: int
    status: str
    best_val_acc: float | None
    best_epoch: int | None  # counted from 1, as people and JSON consumers read it
    epochs: int
    error: str | None = None


# --- small pure helpers -----------------------------------------------------------------


def throttled(ask: Callable[[], bool], seconds: float) -> Callable[[], bool]:
    """`ask`, but asked at most once every `seconds` (the answer in between is False)."""
    last = -math.inf

    def asked() -> bool:
        nonlocal last
        if time.monotonic() - last < seconds:
            return False
        last = time.monotonic()
        return ask()

    return asked


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible; use --device auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "torchvision": version("torchvision"), "timm": version("timm"),
           "python": platform.python_version(), "device": str(device), "threads": torch.get_num_threads(),
           "cpus": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint
    finally:
        tmp.unlink(missing_ok=True)


# --- one epoch ----------------------------------------------------------------------------


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
        return {"batches": self.batches, "loss_sum": float(self.loss_sum), "correct": int(self.correct),
                "seen": self.seen, "sums": {k: float(v) for k, v in self.sums.items()}, "seconds": self.seconds,
                "rng": self.rng}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "EpochSoFar":
        return cls(state["batches"], torch.tensor(state["loss_sum"], device=device),
                   torch.tensor(state["correct"], device=device), state["seen"],
                   {k: torch.tensor(v, device=device) for k, v in state["sums"].items()}, state["seconds"],
                   state["rng"])


def rng_state(device: torch.device) -> dict:
    """torch's random streams that training draws from: the CPU's, and the GPU's where it trains."""
    return {"cpu": torch.get_rng_state(),
            **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_one_epoch(model, loader, optimizer, loss_fn, cfg: RunConfig, device, amp, scaler, phase: Phase,
                    epoch: int, bar, should_stop, terms: Terms | None = None,
                    so_far: EpochSoFar | None = None) -> tuple[float, float, int, dict]:
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
            bar.set_postfix(loss=f"{so_far.loss_sum.item() / so_far.seen:.3f}",
                            acc=f"{so_far.correct.item() / so_far.seen:.3f}")
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
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes ** 2)
        seen += len(y)
    out = {"val_loss": total_loss.item() / max(seen, 1), "val_acc": correct.item() / max(seen, 1),
           "confusion": confusion.view(num_classes, num_classes).cpu()}
    if num_classes >= 5:
        out["val_top5"] = top5.item() / max(seen, 1)
    if keep:
        out["outputs"] = torch.cat(kept) if kept else None
    return out


def _val_paths(batches, d: "RunData", n: int) -> list[str] | None:
    """The validation images in the order `batches` gave `n` of them (unreadable ones left out),
    or None where that order cannot be known."""
    if n == len(d.splits.val):
        return [it.path for it in d.splits.val]
    rows = getattr(batches, "rows", None)  # feature batches: the readable rows
    dataset = getattr(batches, "dataset", None)
    if rows is None and dataset is not None and hasattr(dataset, "unreadable"):  # the decode cache's loader
        rows = [r for r in dataset.rows.tolist() if r not in dataset.unreadable]
    if rows is not None and len(rows) == n:
        return [d.rows.paths[r] for r in list(rows)]
    return None


def _save_predictions(store: Store, run_id: int, epoch: int, d: "RunData", batches, outputs) -> None:
    """The best epoch's predictions on every validation image, replacing the previous best's."""
    if outputs is None:
        return
    rows = outputs.cpu().double().numpy()
    paths = _val_paths(batches, d, len(rows))
    if paths is None:
        _log(f"predictions not stored: {len(rows)} validation images could not be matched to their files")
        return
    store.save_predictions(run_id, epoch, predictions.from_outputs(paths, *rows.T))


# --- the run ------------------------------------------------------------------------------


def train_run(store: Store, run_id: int, progress: bool = True) -> RunResult:
    """Train run `run_id` from its stored config; record every epoch; never leave it 'running'."""
    run = store.get_run(run_id)
    run_dir = run_folder(run)
    try:
        cfg = RunConfig.from_stored(run.config)
        run_dir.mkdir(parents=True, exist_ok=True)
        device = pick_device(cfg.device)
        store.start_run(run_id, os.getpid(), socket.gethostname(), environment(device), str(run_dir.resolve()))
        return _fit(store, run, cfg, device, run_dir, progress)
    except RunCancelled:
        store.finish_run(run_id, "cancelled", error="cancelled by request")
        return _result(store, run_id)
    except RunInterrupted as e:
        _interrupted(store, run_id, str(e))
        return _result(store, run_id)
    except RunTaken:
        _log(f"run {run_id} is no longer this process's ({store.get_run(run_id).status}); stopped, recording nothing")
        return _result(store, run_id)
    except Exception as e:  # the run must end failed, with a readable reason, whatever broke
        store.finish_run(run_id, "failed", error=_explain(e))
        if not isinstance(e, UserError):
            log.error(f"run {run_id} failed", exc_info=e)
        return _result(store, run_id)


def _interrupted(store: Store, run_id: int, signal_name: str) -> None:
    """A worker's run stopped by a signal at a batch: back in the queue, to continue from its last
    checkpoint (TL_RESUME_ON_RESTART), else failed, resumable. A cancel asked for meanwhile wins."""
    if store.cancel_requested(run_id):
        store.finish_run(run_id, "cancelled", error="cancelled by request")
    elif settings().resume_on_restart:
        store.requeue(run_id)
        _log(f"{signal_name}: run {run_id} stopped with its worker; back in the queue, to continue from its last "
             f"checkpoint")
    else:
        store.finish_run(run_id, "failed", error=f"stopped by {signal_name} with its worker (resumable from its "
                                                 f"last checkpoint)")


def _stop_check(store: Store, run: Run) -> Callable[[], bool]:
    """Asked between batches: True once a cancel was requested (asked at most every 0.2 s). For a run
    a worker started it also raises RunInterrupted after SIGTERM or SIGINT (the worker is stopping;
    a second signal stops the process at once), and RunTaken once the run is no longer this
    process's (asked every 2 s: another worker failed it as orphaned, or put it back in the queue)."""
    cancelled = throttled(lambda: store.cancel_requested(run.id), 0.2)
    if run.worker_pid is None or threading.current_thread() is not threading.main_thread():
        return cancelled  # trained in the foreground: Ctrl-C is the terminal's
    received: list[str] = []

    def on_signal(signum, _frame) -> None:
        if received:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        received.append(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def taken() -> bool:
        now = store.get_run(run.id)
        return now.status != "running" or now.pid != os.getpid()

    taken_yet = throttled(taken, 2.0)

    def should_stop() -> bool:
        if received:
            raise RunInterrupted(received[0])
        if taken_yet():
            raise RunTaken()
        return cancelled()

    return should_stop


def _explain(e: Exception) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return f"CUDA out of memory: reduce --batch-size or --image-size ({e})"
    if isinstance(e, UserError):
        return str(e)
    if said := shared_memory.explain(e):  # a DataLoader worker out of shared memory, or dead
        return said
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return (f"disk full while writing under {settings().runs_dir.resolve()}: free some space, then resume "
                f"the run ({e})")
    if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in ("out of memory", "can't allocate memory")):
        return f"out of memory: reduce --batch-size or --image-size ({e})"
    return f"{type(e).__name__}: {e}"


def _note(store: Store, run_id: int, **fields) -> None:
    """Add `fields` to the run's summary."""
    store.update_run(run_id, summary={**store.get_run(run_id).summary, **fields})


def _log(*lines: str) -> None:
    for line in lines:
        log.info(line)


def _result(store: Store, run_id: int) -> RunResult:
    r = store.get_run(run_id)
    return RunResult(run_id, r.status, r.best_val_acc, r.best_epoch_number, r.epochs_done, r.error)


@dataclass
class RunData:
    """What a run trains and validates on, and what it said about it."""

    index: folders.DatasetIndex
    splits: Splits
    rows: decode_cache.DatasetRows
    pipeline: decode_cache.Pipeline
    batch_size: int
    batch_note: str | None
    workers: int  # DataLoader workers, as fitted to /dev/shm (loader)
    train: object  # batches of (images, labels) on the device
    val: object
    decode_note: dict
    loader: shared_memory.LoaderPlan  # the workers and prefetch, fitted to /dev/shm's free space

    @property
    def classes(self) -> list[str]:
        return self.splits.classes


CHANNELS_LAST = True  # NHWC: the layout convolutions run fastest in, on GPUs and CPUs (oneDNN) alike


def load_data(cfg: RunConfig, device: torch.device) -> RunData:
    """The split (by its own seed: an experiment's runs share it whatever their --seed), the batch
    size, and loaders over images decoded once, normalised on the device with the weights' own
    preprocessing (channels the weights have none for: measured on the training images)."""
    index = scan_cache.scan_dataset(cfg.data, cfg.in_channels)  # folders.scan_dataset, reused while no file changed
    splits = split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction)
    batch_size, batch_note = batch_size_for(cfg.batch_size, len(splits.train))
    pre, stats = channels.normalisation(backbones.preprocessing(cfg.backbone), cfg.in_channels, cfg.weights_to_load,
                                        [it.path for it in splits.train])
    pipeline = decode_cache.Pipeline(pre, cfg.image_size, cfg.augment, cfg.in_channels, stats)
    rows = decode_cache.DatasetRows.of(index)
    workers = cfg.workers if cfg.workers is not None else _default_workers(device)
    # Workers hand batches over through /dev/shm: as many as its free space holds (shared_memory.py).
    cached = decode_cache.cache_refusal(rows, pipeline, cfg.decode_cache == "on") is None
    loader = shared_memory.fit(workers, batch_size * decode_cache.item_bytes(pipeline, cached))
    train, val, note = decode_cache.make_loaders(splits, rows, pipeline, batch_size, cfg.seed, loader.workers, device,
                                            channels_last=CHANNELS_LAST, enabled=cfg.decode_cache == "on",
                                            prefetch_factor=loader.prefetch_factor)
    return RunData(index, splits, rows, pipeline, batch_size, batch_note, loader.workers, train, val, note, loader)


def load_model(cfg: RunConfig, num_classes: int, device: torch.device) -> backbones.Backbone:
    """The pretrained body (or random, for scratch) and a new head, on the device."""
    bb = backbones.create_backbone(cfg.backbone, num_classes, weights=cfg.weights_to_load,
                                   head=cfg.head, hidden=cfg.hidden, dropout=cfg.dropout, in_channels=cfg.in_channels)
    bb.model = bb.model.to(device, memory_format=torch.channels_last if CHANNELS_LAST else torch.preserve_format)
    return bb


def frozen_features(cfg: RunConfig, bb: backbones.Backbone, d: RunData, device: torch.device,
                    amp: torch.dtype | None, check: Callable[[], None] | None = None) -> feature_cache.FrozenFeatures:
    """The run's cache of frozen groups' output (feature_cache.py), as its settings ask for it."""
    return feature_cache.FrozenFeatures(bb, d.splits, d.rows, d.pipeline, views=cfg.feature_views, batch_size=d.batch_size,
                                   seed=cfg.seed, device=device, workers=d.workers, channels_last=CHANNELS_LAST,
                                   check=check, enabled=_feature_cache_enabled(cfg),
                                   precision=feature_cache.extraction_dtype(cfg.feature_precision, device, amp))


def _feature_cache_enabled(cfg: RunConfig) -> bool | str:
    if cfg.feature_cache != "on":
        return False
    if cfg.adapt != "none":
        return ("off: --adapt runs target-domain images through the whole model at every step, "
                "so there are no frozen features to reuse")
    return True


def _record_start(store: Store, run: Run, cfg: RunConfig, d: RunData, bb: backbones.Backbone) -> None:
    """The run's summary before its first epoch: data, batch, input, warnings, skipped files; and its log."""
    warnings, skipped = cfg.warnings(), folders.skipped_summary(d.index)
    if d.loader.lowered:  # fewer DataLoader workers than asked: /dev/shm is small (shared_memory.py)
        warnings.append(d.loader.note())
    # A resume keeps its earlier best's predictions (and the precision of earlier phases); a start
    # from scratch has none yet.
    kept = {k: v for k, v in run.summary.items() if k in ("predictions", "exports", "val_precision") and run.resume}
    if not run.resume:
        store.delete_predictions(run.id)
    store.update_run(run.id, summary={**kept,
        "classes": d.classes, "train_images": len(d.splits.train), "val_images": len(d.splits.val),
        "split": {"seed": cfg.split_seed, "val_fingerprint": split_fingerprint(d.splits)},
        "batch_size": {"used": d.batch_size, **({"why": d.batch_note} if d.batch_note else {})},
        "preprocessing": {**d.pipeline.describe(), "native_size": bb.preprocessing.native_size},
        "warnings": warnings, "skipped": skipped,
        "weights": bb.weights, "groups": [g.name for g in bb.groups], "decode_cache": d.decode_note,
        "loader": d.loader.summary(), "batchnorm": {"setting": cfg.bn, "mode": cfg.strategy_params().bn}})
    unlisted = skipped["count"] - len(skipped["files"])
    _log(*([d.batch_note] if d.batch_note else []))
    for line in [*(f"warning: {w}" for w in warnings),
                 *(f"skipped {f['path']} ({f['reason']})" for f in skipped["files"]),
                 *([f"skipped {unlisted} more files"] if unlisted else [])]:
        log.warning(line)


@dataclass
class Progress:
    """Where the epoch loop starts: zeros for a fresh run, a checkpoint's values on resume."""

    start_epoch: int = 0
    optimizer: torch.optim.Optimizer | None = None
    best_acc: float = -1.0
    best_epoch: int = -1
    best_confusion: torch.Tensor | None = None
    elapsed: float = 0.0
    so_far: EpochSoFar | None = None  # the start epoch's batches done before a stop in its middle
    last_metrics: dict | None = None  # the last epoch's recorded metrics


def _fit(store: Store, run: Run, cfg: RunConfig, device: torch.device, run_dir: Path, show: bool) -> RunResult:
    started = time.perf_counter()
    seed_everything(cfg.seed)
    # Asked between batches, at most every 0.2 s (a query per batch would cost more than a small batch);
    # a worker's run also stops there when its worker stops (SIGTERM) or lost it.
    stop_requested = _stop_check(store, run)

    def check() -> None:  # between batches of feature caching
        if stop_requested():
            raise RunCancelled()

    # 1. Data.
    d = load_data(cfg, device)
    data_ready = time.perf_counter()
    # 2. Model.
    bb = load_model(cfg, len(d.classes), device)
    model, groups = bb.model, bb.groups
    amp, scaler = amp_for(device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)  # what val and test are scored with
    fit_loss, weighting = training_loss(cfg, d, device)  # what trains: the same, weighted per class if asked
    plan = Finetuning(get_strategy(cfg.strategy), cfg.strategy_params(), groups, cfg.epochs)
    loaded = time.perf_counter()
    if device.type == "cuda":  # 2b. cuDNN's search, for long runs only; will the run fit? (gpu_memory.py)
        torch.backends.cudnn.benchmark, why = cudnn_benchmark(cfg, cfg.epochs * len(d.train))
        probe = gpu_memory.probe_step(model, groups, plan.widest(), (d.batch_size, cfg.in_channels, cfg.image_size,
                                  cfg.image_size), fit_loss, amp, cfg.optimizer, device, CHANNELS_LAST,
                                  forwards=2 if cfg.adapt != "none" else 1)
        if not probe.fits():
            raise UserError(probe.advice(torch.cuda.get_device_name(device)))
    probed = time.perf_counter()
    # 3. The strategy's plan; frozen groups' output computed once per image and cached on disk.
    frozen = frozen_features(cfg, bb, d, device, amp, check)
    _record_start(store, run, cfg, d, bb)
    if weighting:
        _note(store, run.id, class_weights=weighting)
    if device.type == "cuda":  # after the summary's start (_record_start writes it whole)
        _note(store, run.id, cudnn_benchmark=why, gpu_memory=probe.summary())
    # 3b. The loss's terms beside cross-entropy (losses.py) and the target domain, set up on the
    #     weights training starts from, as layer drift is measured from them; the memory levers.
    target = load_target(cfg, d, device, CHANNELS_LAST)
    terms, said = make_terms(cfg, bb, d, device, CHANNELS_LAST)
    extra = [LayerGroup("domain", terms.modules())] if terms.modules() else []
    drift = Drift(groups)
    checkpointed = gpu_memory.checkpoint_activations(groups) if cfg.checkpointing == "on" else 0
    _note(store, run.id, **said, **({"target": target.describe()} if target else {}),
          memory={"accumulate": cfg.accumulate, "effective_batch": cfg.accumulate * d.batch_size,
                  "checkpointing": cfg.checkpointing, **({"checkpointed_modules": checkpointed} if checkpointed else {})})
    # 4. A fresh start, or the run's own last checkpoint: the same trainable groups, optimizer
    #    state, schedule position, unfreezing history and random streams as when it stopped.
    at = (_resume(run_dir / "last.pt", run, cfg, bb, plan, d, store, scaler, device, terms, extra) if run.resume
          else Progress())
    optimizer, best_acc, best_epoch, best_confusion = at.optimizer, at.best_acc, at.best_epoch, at.best_confusion
    started -= at.elapsed
    identity = {"run_uid": run.uid, "config_fingerprint": cfg.fingerprint()}  # what a resume checks
    last_metrics = at.last_metrics
    bar = tqdm(total=cfg.epochs * len(d.train),
               initial=at.start_epoch * len(d.train) + (at.so_far.batches if at.so_far else 0), unit="batch",
               disable=not show, file=sys.stderr, dynamic_ncols=True)
    feats, compiled, last_confusion, peak_mb = None, {}, None, 0.0
    with EpochWriter(store) as writer:  # epoch rows written in the background, all before the run ends
        for epoch in range(at.start_epoch, cfg.epochs):
            epoch_start = time.perf_counter()
            # 5. Move the freeze boundary where the strategy wants it; the optimizer follows, and
            #    the rest trains on the frozen groups' cached output when that pays (or is cached).
            if plan.plan(epoch) or epoch == at.start_epoch:
                optimizer = sync_param_groups(optimizer, cfg, groups, plan.boundary, plan.multipliers(), extra)
                feats = frozen.at(plan.boundary, epoch, plan.phase.end - epoch)
                _log(frozen.describe())
                precision = feature_cache.val_precision(epoch, amp, feats, frozen.precision)
                said = [p for p in store.get_run(run.id).summary.get("val_precision", [])
                        if p["from_epoch"] < precision["from_epoch"]]  # a resume says its phase again
                _note(store, run.id, feature_cache=frozen.summary(), val_precision=[*said, precision])
            net, train_batches, val_batches = ((feats.cut.rest, feats.train.for_epoch(epoch), feats.val) if feats
                                               else (model, d.train.for_epoch(epoch), d.val))
            net = _compiled(net, compiled) if cfg.compile == "on" else net
            plan.train_mode(model)
            if checkpointed and epoch == at.start_epoch:  # what checkpointing saves, on this run's batches
                x = next(x for x, y in val_batches if len(y))
                _note(store, run.id, memory={**store.get_run(run.id).summary["memory"],
                                             "activations_mb": gpu_memory.activation_memory(net, x)})
            if terms.adaptation is not None:
                terms.target = target.batches(epoch)
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            if epoch == at.start_epoch:  # startup is over: record what it cost, and where it went
                now = time.perf_counter()
                _note(store, run.id, startup_seconds=round(now - started - at.elapsed, 3), first_batch_at=time.time(),
                      startup={"data": round(data_ready - started - at.elapsed, 3), "model": round(loaded - data_ready, 3),
                               **({"probe_step": round(probed - loaded, 3)} if device.type == "cuda" else {}),
                               "features_and_resume": round(now - probed, 3)})

            # 6. Train one epoch.
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            so_far = at.so_far if epoch == at.start_epoch and at.so_far else EpochSoFar()
            epoch_start -= so_far.seconds
            try:
                train_loss, train_acc, seen, term_means = train_one_epoch(
                    net, train_batches, optimizer, fit_loss, cfg, device, amp, scaler, plan.phase, epoch, bar,
                    should_stop=stop_requested, terms=terms, so_far=so_far)
            except RunInterrupted:  # the worker is stopping: save how far this epoch got, to go on from there
                _save({**_state(model, optimizer, scaler, plan, terms, d, device), "epoch": epoch - 1,
                       "best": (best_acc, best_epoch), "best_confusion": best_confusion, "classes": d.classes,
                       "wall_seconds": time.perf_counter() - started, "config": cfg.model_dump(), **identity,
                       "partial": so_far.state_dict(), **({"metrics": last_metrics} if last_metrics else {})},
                      run_dir / "last.pt")
                raise
            train_seconds = so_far.seconds

            # 7. Validate, record, checkpoint.
            ev = evaluate(net, val_batches, loss_fn, device, amp, len(d.classes), keep=True)
            on_target = (evaluate(model, target.val, loss_fn, device, amp, len(d.classes))
                         if target is not None and target.labelled else None)
            plan.observe(ev["val_loss"])
            last_confusion = ev["confusion"].tolist()
            if ev["val_acc"] > best_acc:
                best_acc, best_epoch, best_confusion = ev["val_acc"], epoch, ev["confusion"]
                _save({"model": model.state_dict(), "classes": d.classes, "config": cfg.model_dump(), **identity,
                       "epoch": epoch, "val_acc": best_acc}, run_dir / "best.pt")
                _save_predictions(store, run.id, epoch, d, val_batches, ev["outputs"])
            metrics = {
                "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": ev["val_loss"], "val_acc": ev["val_acc"],
                "val_macro_f1": macro_f1(last_confusion), "val_balanced_acc": balanced_accuracy(last_confusion),
                **({"val_top5": ev["val_top5"]} if "val_top5" in ev else {}),
                **({"target_loss": on_target["val_loss"], "target_acc": on_target["val_acc"]} if on_target else {}),
                **term_means,
                **drift.metrics(groups),
                **{f"lr/{pg.get('group', pg['name'])}": pg["lr"] for pg in optimizer.param_groups},  # per layer group
                "trainable_groups": plan.trainable_groups,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "epoch_seconds": time.perf_counter() - epoch_start,
                "images_per_sec": seen / max(train_seconds, 1e-9),
                "peak_memory_mb": peak_memory_mb(device),
                "wall_seconds": time.perf_counter() - started,
            }
            writer.log_epoch(run.id, epoch, metrics, best=(best_acc, best_epoch))
            last_metrics, peak_mb = metrics, max(peak_mb, metrics["peak_memory_mb"])
            _save({**_state(model, optimizer, scaler, plan, terms, d, device), "epoch": epoch,
                   "best": (best_acc, best_epoch), "best_confusion": best_confusion, "classes": d.classes,
                   "wall_seconds": metrics["wall_seconds"], "config": cfg.model_dump(), **identity,
                   "metrics": metrics}, run_dir / "last.pt")
            _log(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.3f} acc {train_acc:.3f}  "
                 f"val loss {ev['val_loss']:.3f} acc {ev['val_acc']:.3f}  groups {plan.trainable_groups}/{len(groups)}")
    bar.close()
    terms.close()
    if device.type == "cuda":  # the run's peak, for the worker's placement of runs like it (placement.py)
        _note(store, run.id, gpu_memory={**store.get_run(run.id).summary.get("gpu_memory", {}),
                                         "peak_mb": round(peak_mb, 1)})

    _note(store, run.id, forgetting=_forgetting(cfg, bb, d, device, amp))
    _note(store, run.id, **_test_metrics(cfg, model, d, device, amp, loss_fn, run_dir / "best.pt"))
    store.log_class_metrics(run.id, class_metrics(best_confusion.tolist(), d.classes))
    summary = store.get_run(run.id).summary
    # Each phase's end, which the best epoch hides (a phase that ends below the one before it).
    summary["phases"] = phase_ends(store.epoch_metrics([run.id])[run.id], summary.get("val_precision", []))
    if last_confusion is not None:  # per-class results at the last epoch too, for comparisons read there
        summary["last_confusion"] = last_confusion
    if unreadable := decode_cache.unreadable_paths(d.rows, d.pipeline, d.splits):  # found while decoding (truncated)
        summary["unreadable"] = unreadable
    store.finish_run(run.id, "completed", summary={**summary, "total_seconds": time.perf_counter() - started})
    return _result(store, run.id)


# cuDNN's search (cudnn.benchmark) costs seconds per new input shape and buys little for these
# models: measured on an H100 (BENCHMARKS.md), EfficientNet-Lite0's steady step 1.01x faster with
# it, its first step 16 s slower and each new shape 9 s slower. That pays back only after about
# 100,000 steps of ~30 ms; "auto" turns it on from there.
BENCHMARK_MIN_STEPS = 100_000


def cudnn_benchmark(cfg: RunConfig, steps: int) -> tuple[bool, str]:
    """(cudnn.benchmark on?, why) for a run of `steps` training steps."""
    if cfg.cudnn_benchmark != "auto":
        return cfg.cudnn_benchmark == "on", f"{cfg.cudnn_benchmark} (--cudnn-benchmark)"
    on = steps >= BENCHMARK_MIN_STEPS
    return on, (f"{'on' if on else 'off'} (auto: {steps:,} training steps, {'at least' if on else 'under'} the "
                f"{BENCHMARK_MIN_STEPS:,} its search pays back in)")


def _state(model, optimizer, scaler, plan: Finetuning, terms: Terms, d: RunData, device: torch.device) -> dict:
    """What a checkpoint holds to go on training: weights, optimizer (and grad scaler) state, the
    strategy's plan, the terms' modules and the random streams."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "finetuning": plan.state_dict(), "terms": terms.state_dict(), "rng": rng_state(device),
            "loader_rng": d.train.generator.get_state()}


def training_loss(cfg: RunConfig, d: RunData, device: torch.device) -> tuple[nn.Module, dict | None]:
    """The cross-entropy training minimises, and what the run records of its class weights (None
    without --class-weights). Weighted (splits.class_weights, from the training split alone) it is
    the training objective only: val and test are scored with the plain one, comparable across runs."""
    if cfg.class_weights == "none":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), None
    weights = class_weights(d.splits.train, d.classes)
    loss = nn.CrossEntropyLoss(weight=torch.tensor(weights, device=device), label_smoothing=cfg.label_smoothing)
    return loss, {"mode": cfg.class_weights, "weights": dict(zip(d.classes, weights))}


def _test_metrics(cfg: RunConfig, model: nn.Module, d: RunData, device: torch.device, amp, loss_fn,
                  best: Path) -> dict:
    """The held-out test split scored once, after the last epoch: {"test": the checkpoint chosen on
    val (best.pt), "test_last": the last epoch's model, only where that is not the best}, each
    metrics.scores with the loss and the 1-based epoch; {} for a run without a test split.

    Nothing before this reads a test image (the split is carved before train and val, and the
    loaders, feature cache, best epoch, plateau unfreezing, LR finder and probe see train and val
    only). The test pass runs the whole model on the images in the run's precision (val may read
    cached features, bf16 where the hardware computes it). The model is left at the weights it
    came with (the last epoch's), so this may be called from a resume that had no epoch left.
    """
    if not d.splits.test:
        return {}
    held_out = Splits(d.classes, d.splits.test, d.splits.test, d.index)
    _, loader, _ = decode_cache.make_loaders(held_out, d.rows, d.pipeline, d.batch_size, cfg.seed, d.workers, device,
                                        channels_last=CHANNELS_LAST, enabled=cfg.decode_cache == "on")

    def scored(epoch: int) -> dict:
        ev = evaluate(model, loader, loss_fn, device, amp, len(d.classes))
        return {**scores(ev["confusion"].tolist(), d.classes), "loss": ev["val_loss"], "epoch": epoch + 1}

    chosen = torch.load(best, map_location=device, weights_only=True)
    out = {} if chosen["epoch"] == cfg.epochs - 1 else {"test_last": scored(cfg.epochs - 1)}
    last = {k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}
    model.load_state_dict(chosen["model"])
    out["test"] = scored(chosen["epoch"])
    model.load_state_dict(last)
    _log(f"test ({len(d.splits.test)} images, epoch {chosen['epoch'] + 1} chosen on val): acc {out['test']['acc']:.4f}"
         + (f"; the last epoch's model: acc {out['test_last']['acc']:.4f}" if "test_last" in out else ""))
    return out


def _forgetting(cfg: RunConfig, bb: backbones.Backbone, d: RunData, device: torch.device, amp) -> dict:
    """Knowledge kept (forgetting.py) at the last epoch, or why it was not measured."""
    why = forgetting.why_not_measured(bb, cfg.in_channels)
    if why is not None:
        return {"skipped": why}
    return {**forgetting.knowledge_kept(bb, d.val, device, amp), "epoch": cfg.epochs}


def _compiled(net: nn.Module, cache_: dict) -> nn.Module:
    """torch.compile, once per module (a new freeze boundary brings a new one)."""
    if net not in cache_:
        cache_[net] = torch.compile(net)
    return cache_[net]


def _resume(path: Path, run: Run, cfg: RunConfig, bb: backbones.Backbone, plan: Finetuning, d: RunData,
            store: Store, scaler, device: torch.device, terms: Terms | None = None,
            extra: list[LayerGroup] = ()) -> Progress:
    """Restore a run from its own last checkpoint (written at the end of every epoch, and where
    the run stopped when its worker stopped in the middle of an epoch).

    The checkpoint must be this run's (its uid) and written with these settings (the config's
    fingerprint); anything else is refused, never half-loaded. A run that stopped before its
    first checkpoint starts from its first epoch.
    """
    if not path.exists():
        if run.epochs_done:
            raise UserError(f"cannot resume run {run.id}: it recorded {run.epochs_done} epochs but its checkpoint "
                            f"{path} is gone; start a new run with the same settings instead")
        _log(f"resume: run {run.id} stopped before its first checkpoint; starting from epoch 1")
        return Progress()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    _check_checkpoint(ckpt, path, run, cfg, d.classes)
    partial = ckpt.get("partial")  # written when the run stopped in the middle of an epoch
    at = {"epoch": ckpt["epoch"] + 1, **({"batch": partial["batches"]} if partial else {})}
    _note(store, run.id, resumed_from={**at, "checkpoint": str(path)})
    _log(f"resume: run {run.id} continues after epoch {ckpt['epoch'] + 1}"
         + (f" and {partial['batches']}/{len(d.train)} batches of epoch {ckpt['epoch'] + 2}" if partial else "")
         + f" from {path}")
    if "metrics" in ckpt:  # the checkpointed epoch's row, in case the process died before writing it
        store.log_epoch(run.id, ckpt["epoch"], ckpt["metrics"], best=tuple(ckpt["best"]))
    bb.model.load_state_dict(ckpt["model"])
    # The plan as it stood (its groups frozen again), then an optimizer with exactly the groups it
    # held (the unfrozen ones, stem-side first) and its state: Adam moments, each group's peak LR.
    plan.load_state_dict(ckpt.get("finetuning") or Finetuning.from_legacy(ckpt, len(bb.groups)))
    if terms is not None:
        terms.load_state_dict(ckpt.get("terms", {}))
    optimizer = restore_optimizer(cfg, bb.groups, plan.boundary, plan.multipliers(), extra, ckpt["optimizer"])
    if "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    set_rng_state(rng if isinstance(rng, dict) else {"cpu": rng}, device)  # a tensor: written before GPU streams
    d.train.generator.set_state(ckpt["loader_rng"])
    return Progress(start_epoch=ckpt["epoch"] + 1, optimizer=optimizer, best_acc=ckpt["best"][0],
                    best_epoch=ckpt["best"][1], best_confusion=ckpt["best_confusion"], elapsed=ckpt["wall_seconds"],
                    so_far=EpochSoFar.from_state(partial, device) if partial else None,
                    last_metrics=ckpt.get("metrics"))


def _check_checkpoint(ckpt: dict, path: Path, run: Run, cfg: RunConfig, classes: list[str]) -> None:
    """Refuse a checkpoint that is not this run's own, as it was configured."""
    owner = ckpt.get("run_uid")  # checkpoints of runs made before run uids name no owner
    if owner is not None and owner != run.uid:
        raise UserError(f"cannot resume run {run.id}: {path} is the checkpoint of another run (uid {owner}, "
                        f"not {run.uid}); start a new run instead")
    written = ckpt.get("config_fingerprint") or RunConfig.from_stored(ckpt.get("config", {})).fingerprint()
    if written != cfg.fingerprint():
        raise UserError(f"cannot resume run {run.id}: its checkpoint {path} was written with other settings "
                        f"than the run's config; start a new run instead")
    if ckpt["classes"] != classes:
        raise UserError(f"cannot resume: the dataset's classes changed since the checkpoint {path} "
                        f"({len(ckpt['classes'])} then, {len(classes)} now); start a new run instead")


def warm_cuda() -> bool:
    """Start CUDA ahead of a run, in the worker's standby process, where this process sees one GPU
    (with several, the standby waits to be told its GPU: CUDA, once started, could not change it):
    the context, cuBLAS's and cuDNN's handles and the kernels of a small bf16 convolution step, the
    start-up the run's first batch then does not pay. Returns whether it did."""
    from ..executors.placement import gpu_count  # the driver's count: asks CUDA nothing where there are several

    if gpu_count() != 1 or not torch.cuda.is_available():
        return False
    device = torch.device("cuda")
    amp, _ = amp_for(device)
    conv = nn.Conv2d(3, 8, 3).to(device, memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=amp):
        loss = conv(x).float().mean() + (x.flatten(1) @ x.flatten(1).T).float().mean()
    loss.backward()
    torch.cuda.synchronize(device)
    del conv, x, loss
    torch.cuda.empty_cache()
    return True


def amp_for(device: torch.device):
    """Autocast dtype and grad scaler: bf16 where the GPU has it, fp16 + scaling otherwise, none on CPU."""
    if device.type != "cuda":
        return None, torch.amp.GradScaler("cpu", enabled=False)
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, torch.amp.GradScaler("cuda", enabled=False)
    return torch.float16, torch.amp.GradScaler("cuda")


def _default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    # On a small CPU box the model's threads need the cores more than decoding does.
    return min(8, cpus - 1) if device.type == "cuda" else min(4, max(0, cpus - 2))
