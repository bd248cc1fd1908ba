"""The training loop: one run, from its stored config to its recorded epochs and checkpoints.

Read it top to bottom in `train_run`. The strategy decides, each epoch, how many layer groups
train and at what LR; the loop only applies that plan:
  1. freeze everything below the trainable groups (BatchNorm there stays in eval mode);
  2. give the optimizer any newly trainable group, at its own LR;
  3. train one epoch, setting each group's LR from the schedule at every step;
  4. validate, record the epoch's metrics, save the checkpoints.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import random
import resource
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import backbones, cache, data, decoded, features
from .config import RunConfig
from .errors import UserError
from .runfiles import run_folder, runs_dir
from .store import ClassMetric, EpochWriter, Run, Store
from .strategies import Strategy, get_strategy


class RunCancelled(Exception):
    pass


@dataclass
class RunResult:
    run_id: int
    status: str
    best_val_acc: float | None
    best_epoch: int | None  # counted from 1, as people and JSON consumers read it
    epochs: int
    error: str | None = None


# --- small pure helpers -----------------------------------------------------------------


def lr_factor(schedule: str, t: float) -> float:
    """Multiple of a group's peak LR at progress t through the current phase: t = 0 on its first
    step, 1 on its last (so every schedule ends a phase at its end value)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":  # x0.1 at half and at three quarters of the phase
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    if schedule == "onecycle":  # warm up from 1/25 over 25%, then cosine anneal to 1/25e4
        warm, start, end = 0.25, 1 / 25, 1 / 25e4
        if t < warm:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t / warm))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))
    raise ValueError(f"unknown schedule {schedule!r}")


def freeze_to(groups: list[backbones.LayerGroup], n_trainable: int) -> None:
    """Train the top `n_trainable` groups (the head is the last); freeze the rest."""
    boundary = len(groups) - n_trainable
    for i, group in enumerate(groups):
        for p in group.parameters():
            p.requires_grad_(i >= boundary)


def set_train_mode(model: nn.Module, groups: list[backbones.LayerGroup], n_trainable: int) -> None:
    """model.train(), but frozen groups in eval mode: their BatchNorm statistics stay put."""
    model.train()
    for group in groups[: len(groups) - n_trainable]:
        for module in group.modules():
            module.eval()


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


def make_optimizer(cfg: RunConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.base_lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay)


def sync_param_groups(optimizer: torch.optim.Optimizer | None, cfg: RunConfig, groups, n_trainable: int,
                      multipliers: list[float]) -> torch.optim.Optimizer:
    """Make the optimizer hold exactly the trainable groups, each at base LR x its multiplier.

    Groups already in the optimizer keep their state (Adam moments) and get their new peak LR;
    newly unfrozen groups are added (as fastai's freeze_to moves a boundary, not a rebuild).
    """
    top = groups[len(groups) - n_trainable:]
    wanted = [{"params": g.parameters(), "name": g.name, "peak_lr": cfg.base_lr * m, "lr": cfg.base_lr * m}
              for g, m in zip(top, multipliers)]
    if optimizer is None:
        return make_optimizer(cfg, wanted)
    have = {pg["name"]: pg for pg in optimizer.param_groups}
    for w in wanted:
        if w["name"] in have:
            have[w["name"]]["peak_lr"] = w["peak_lr"]
        else:
            optimizer.add_param_group(w)
    # Groups are only ever unfrozen; keep them ordered stem-side first like the model.
    order = {g.name: i for i, g in enumerate(groups)}
    optimizer.param_groups.sort(key=lambda pg: order[pg["name"]])
    return optimizer


def per_class_metrics(confusion: torch.Tensor, classes: list[str]) -> list[ClassMetric]:
    """Precision, recall and F1 of each class from a (true x predicted) confusion matrix."""
    cm = confusion.double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return [ClassMetric(i, name, float(precision[i]), float(recall[i]), float(f1[i]),
                        int(cm[i].sum()), [int(x) for x in confusion[i].tolist()])
            for i, name in enumerate(classes)]


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible; use --device auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def environment(device: torch.device) -> dict:
    import timm
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
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
class Phase:
    start: int  # first epoch of the phase
    end: int  # epoch at which the phase's LR schedule ends


def progress(step: int, phase_steps: int) -> float:
    """t of `step` (0-based) in a phase of `phase_steps` steps: 0 on the first, 1 on the last.

    (A phase of a single step takes its schedule's start value: its end value is ~0 for most.)
    """
    return min(1.0, step / (phase_steps - 1)) if phase_steps > 1 else 0.0


def train_one_epoch(model, loader, optimizer, loss_fn, cfg: RunConfig, device, amp, scaler, phase: Phase,
                    epoch: int, bar, should_stop) -> tuple[float, float, int]:
    steps_per_epoch = len(loader)
    phase_steps = (phase.end - phase.start) * steps_per_epoch
    # Sums stay on the device: reading a GPU value back waits for the queued kernels, so it is
    # done only when the progress bar shows it (at most twice a second) and at the end.
    total_loss, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0
    show = throttled(lambda: True, 0.5)
    for i, (x, y) in enumerate(loader):
        if should_stop():
            raise RunCancelled()
        if len(y) == 0:  # every image of this batch was unreadable (and listed in the log)
            continue
        # The schedule restarts with every phase (each unfreezing step is a new fit).
        t = progress((epoch - phase.start) * steps_per_epoch + i, phase_steps)
        for pg in optimizer.param_groups:
            pg["lr"] = pg["peak_lr"] * lr_factor(cfg.schedule, t)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if not bar.disable and show():
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    return total_loss.item() / max(seen, 1), correct.item() / max(seen, 1), seen


@torch.inference_mode()
def evaluate(model, loader, loss_fn, device, amp, num_classes: int) -> dict:
    model.eval()
    # Summed on the device and read back once (see train_one_epoch).
    total_loss, correct, top5 = (torch.zeros((), device=device) for _ in range(3))
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    seen = 0
    for x, y in loader:
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
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
    return out


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
    except Exception as e:  # the run must end failed, with a readable reason, whatever broke
        store.finish_run(run_id, "failed", error=_explain(e))
        if not isinstance(e, UserError):
            traceback.print_exc(file=sys.stderr)
        return _result(store, run_id)


def _explain(e: Exception) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return f"CUDA out of memory: reduce --batch-size or --image-size ({e})"
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"disk full while writing under {runs_dir().resolve()}: free some space, then resume the run ({e})"
    if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in ("out of memory", "can't allocate memory")):
        return f"out of memory: reduce --batch-size or --image-size ({e})"
    return f"{type(e).__name__}: {e}"


def _note(store: Store, run_id: int, **fields) -> None:
    """Add `fields` to the run's summary."""
    store.update_run(run_id, summary={**store.get_run(run_id).summary, **fields})


def _result(store: Store, run_id: int) -> RunResult:
    r = store.get_run(run_id)
    return RunResult(run_id, r.status, r.best_val_acc, r.best_epoch_number, r.epochs_done, r.error)


def _fit(store: Store, run: Run, cfg: RunConfig, device: torch.device, run_dir: Path,
         progress: bool) -> RunResult:
    run_id = run.id
    started = time.perf_counter()
    seed_everything(cfg.seed)
    strategy: Strategy = get_strategy(cfg.strategy)
    params = cfg.strategy_params()

    # Asked between batches; at most every 0.2 s (a query per batch would cost more than a small batch).
    stop_requested = throttled(lambda: store.cancel_requested(run_id), 0.2)

    def check() -> None:  # between batches of feature caching
        if stop_requested():
            raise RunCancelled()

    # 1. Data: split; each image decoded once (decoded.py), transforms from the weights' own
    #    preprocessing, batches normalised on the device.
    #    The split has its own seed: an experiment's runs share it whatever their --seed.
    index = cache.scan_dataset(cfg.data)  # data.scan_dataset, reused while no file changed
    splits = data.split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed)
    batch_size, batch_note = data.batch_size_for(cfg.batch_size, len(splits.train))
    classes = splits.classes
    pipeline = decoded.Pipeline(backbones.preprocessing(cfg.backbone), cfg.image_size, cfg.augment)
    rows = decoded.DatasetRows.of(index)
    workers = cfg.workers if cfg.workers is not None else _default_workers(device)
    channels_last = True  # NHWC: the layout convolutions run fastest in, on GPUs and CPUs (oneDNN) alike
    train_loader, val_loader, decode_note = decoded.make_loaders(
        splits, rows, pipeline, batch_size, cfg.seed, workers, device, channels_last=channels_last,
        enabled=cfg.decode_cache == "on")

    # 2. Model: pretrained body (or random, for scratch) and a new head.
    bb = backbones.create_backbone(cfg.backbone, len(classes), weights=cfg.weights_to_load,
                                   head=cfg.head, hidden=cfg.hidden, dropout=cfg.dropout)
    model, groups = bb.model.to(device), bb.groups
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp, scaler = _amp(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark == "on"
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    # Frozen groups' output is computed once per image and cached on disk (features.py).
    frozen = features.FrozenFeatures(bb, splits, rows, pipeline, views=cfg.feature_views, batch_size=batch_size,
                                     seed=cfg.seed, device=device, workers=workers, channels_last=channels_last,
                                     precision=features.extraction_dtype(cfg.feature_precision, device, amp),
                                     enabled=cfg.feature_cache == "on", check=check)
    warnings, skipped = cfg.warnings(), data.skipped_summary(index)
    store.update_run(run_id, summary={
        "classes": classes, "train_images": len(splits.train), "val_images": len(splits.val),
        "split": {"seed": cfg.split_seed, "val_fingerprint": data.split_fingerprint(splits)},
        "batch_size": {"used": batch_size, **({"why": batch_note} if batch_note else {})},
        "preprocessing": {**pipeline.describe(), "native_size": bb.preprocessing.native_size},
        "warnings": warnings, "skipped": skipped,
        "weights": bb.weights, "groups": [g.name for g in groups], "decode_cache": decode_note})
    unlisted = skipped["count"] - len(skipped["files"])
    for line in ([batch_note] if batch_note else []) + [f"warning: {w}" for w in warnings] + [
            f"skipped {f['path']} ({f['reason']})" for f in skipped["files"]] + (
            [f"skipped {unlisted} more files"] if unlisted else []):
        print(line, file=sys.stderr, flush=True)

    # A fresh start, or (only when a resume was asked for) the run's own last checkpoint: the
    # same trainable groups, optimizer state, schedule position, unfreezing history and random
    # streams as when it stopped.
    last = run_dir / "last.pt"
    st = (_resume(last, run, model, cfg, groups, classes, train_loader, store) if run.resume
          else TrainState(cfg.epochs))
    optimizer, n_now, phase, val_losses = st.optimizer, st.n_trainable, st.phase, st.val_losses
    best_acc, best_epoch, best_confusion = st.best_acc, st.best_epoch, st.best_confusion
    started -= st.elapsed
    bar = tqdm(total=cfg.epochs * len(train_loader), initial=st.start_epoch * len(train_loader), unit="batch",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    feats, feats_n, compiled = None, None, {}
    identity = {"run_uid": run.uid, "config_fingerprint": cfg.fingerprint()}  # checked by a resume
    with EpochWriter(store) as writer:  # epoch rows written in the background, all before the run ends
        for epoch in range(st.start_epoch, cfg.epochs):
            epoch_start = time.perf_counter()
            # 1-2. Ask the strategy what trains now; move the freeze boundary if it changed.
            n = strategy.n_trainable(epoch, len(groups), params, val_losses)
            if n != n_now:
                freeze_to(groups, n)
                multipliers = strategy.lr_multipliers(n, len(groups), params)
                optimizer = sync_param_groups(optimizer, cfg, groups, n, multipliers)
                # The LR schedule runs to the next change of plan, never past the run's last epoch.
                phase = Phase(epoch, min(cfg.epochs, strategy.next_change(epoch, len(groups), params) or cfg.epochs))
                n_now = n
            # 2b. With groups frozen, train the rest on their cached output when that pays (or is cached).
            if n != feats_n:
                feats, feats_n = frozen.at(len(groups) - n, epoch, phase.end - epoch), n
                bar.write(frozen.describe(), file=sys.stderr)
                _note(store, run_id, feature_cache=frozen.summary())
            net, train_batches, val_batches = ((feats.cut.rest, feats.train.for_epoch(epoch), feats.val) if feats
                                               else (model, train_loader, val_loader))
            if cfg.compile == "on":  # compiled once per module (a new freeze boundary brings a new one)
                if net not in compiled:
                    compiled[net] = torch.compile(net)
                net = compiled[net]
            set_train_mode(model, groups, n)
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")

            # 3. Train one epoch.
            if epoch == st.start_epoch:  # startup is over: record what it cost
                _note(store, run_id, startup_seconds=round(time.perf_counter() - started - st.elapsed, 3),
                      first_batch_at=time.time())
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            train_loss, train_acc, seen = train_one_epoch(
                net, train_batches, optimizer, loss_fn, cfg, device, amp, scaler, phase, epoch, bar,
                should_stop=stop_requested)
            train_seconds = time.perf_counter() - t0

            # 4. Validate, record, checkpoint.
            ev = evaluate(net, val_batches, loss_fn, device, amp, len(classes))
            val_losses.append(ev["val_loss"])
            if ev["val_acc"] > best_acc:
                best_acc, best_epoch, best_confusion = ev["val_acc"], epoch, ev["confusion"]
                _save({"model": model.state_dict(), "classes": classes, "config": cfg.model_dump(), **identity,
                       "epoch": epoch, "val_acc": best_acc}, run_dir / "best.pt")
            metrics = {
                "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": ev["val_loss"], "val_acc": ev["val_acc"],
                **({"val_top5": ev["val_top5"]} if "val_top5" in ev else {}),
                **{f"lr/{pg['name']}": pg["lr"] for pg in optimizer.param_groups},
                "trainable_groups": n,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "epoch_seconds": time.perf_counter() - epoch_start,
                "images_per_sec": seen / max(train_seconds, 1e-9),
                "peak_memory_mb": peak_memory_mb(device),
                "wall_seconds": time.perf_counter() - started,
            }
            writer.log_epoch(run_id, epoch, metrics, best=(best_acc, best_epoch))
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                   "n_trainable": n, "phase": (phase.start, phase.end), "val_losses": val_losses,
                   "best": (best_acc, best_epoch), "best_confusion": best_confusion, "classes": classes,
                   "rng": torch.get_rng_state(), "loader_rng": train_loader.generator.get_state(),
                   "wall_seconds": metrics["wall_seconds"], "config": cfg.model_dump(), **identity,
                   "metrics": metrics}, last)
            bar.write(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.3f} acc {train_acc:.3f}  "
                      f"val loss {ev['val_loss']:.3f} acc {ev['val_acc']:.3f}  groups {n}/{len(groups)}",
                      file=sys.stderr)
    bar.close()

    store.log_class_metrics(run_id, per_class_metrics(best_confusion, classes))
    summary = store.get_run(run_id).summary
    if unreadable := decoded.unreadable_paths(rows, pipeline, splits):  # found while decoding (a truncated file)
        summary["unreadable"] = unreadable
    store.finish_run(run_id, "completed", summary={**summary, "total_seconds": time.perf_counter() - started})
    return _result(store, run_id)


@dataclass
class TrainState:
    """Where the epoch loop starts: all zeros for a fresh run, a checkpoint's values on resume."""

    epochs: int
    start_epoch: int = 0
    optimizer: torch.optim.Optimizer | None = None
    n_trainable: int = 0
    phase: Phase | None = None
    val_losses: list[float] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1
    best_confusion: torch.Tensor | None = None
    elapsed: float = 0.0

    def __post_init__(self):
        self.phase = self.phase or Phase(0, self.epochs)


def _resume(path: Path, run: Run, model: nn.Module, cfg: RunConfig, groups, classes: list[str], train_loader,
            store: Store) -> TrainState:
    """Restore a run from its own last checkpoint (written at the end of every epoch).

    The checkpoint must be this run's (its uid) and written with these settings (the config's
    fingerprint); anything else is refused, never half-loaded. A run that stopped before its
    first checkpoint starts from its first epoch.
    """
    if not path.exists():
        if run.epochs_done:
            raise UserError(f"cannot resume run {run.id}: it recorded {run.epochs_done} epochs but its checkpoint "
                            f"{path} is gone; start a new run with the same settings instead")
        print(f"resume: run {run.id} stopped before its first checkpoint; starting from epoch 1",
              file=sys.stderr, flush=True)
        return TrainState(cfg.epochs)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    _check_checkpoint(ckpt, path, run, cfg, classes)
    _note(store, run.id, resumed_from={"epoch": ckpt["epoch"] + 1, "checkpoint": str(path)})
    print(f"resume: run {run.id} continues after epoch {ckpt['epoch'] + 1} from {path}", file=sys.stderr, flush=True)
    if "metrics" in ckpt:  # the checkpointed epoch's row, in case the process died before writing it
        store.log_epoch(run.id, ckpt["epoch"], ckpt["metrics"], best=tuple(ckpt["best"]))
    model.load_state_dict(ckpt["model"])
    # Rebuild the optimizer with exactly the groups it held (the unfrozen ones, stem-side first),
    # then load its state: Adam moments, and each group's name and peak LR.
    n = ckpt["n_trainable"]
    freeze_to(groups, n)
    strategy = get_strategy(cfg.strategy)
    optimizer = sync_param_groups(None, cfg, groups, n, strategy.lr_multipliers(n, len(groups), cfg.strategy_params()))
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    train_loader.generator.set_state(ckpt["loader_rng"])
    return TrainState(cfg.epochs, start_epoch=ckpt["epoch"] + 1, optimizer=optimizer, n_trainable=n,
                      phase=Phase(*ckpt["phase"]), val_losses=list(ckpt["val_losses"]),
                      best_acc=ckpt["best"][0], best_epoch=ckpt["best"][1], best_confusion=ckpt["best_confusion"],
                      elapsed=ckpt["wall_seconds"])


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


def _amp(device: torch.device):
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
