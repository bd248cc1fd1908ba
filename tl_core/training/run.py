"""A training run: one run, from its stored config to its recorded epochs, checkpoints and summary.

`train_run` starts it and always ends it (completed, cancelled, failed with a readable reason,
or back in the queue when its worker stops). `_fit` is the run, read top to bottom:
  1. data: the split, each image decoded once, a batch size that fits the data (run_data.py);
  2. model: the pretrained body and a new head in layer groups (backbones.py), the losses, and
     the strategy's plan over those groups (finetuning.py); on a GPU, will the run fit (startup.py);
  3. frozen features cached on disk where groups are frozen (feature_cache.py); the loss's terms
     beside cross-entropy (terms.py) and the memory levers;
  4. a fresh start, or, only when a resume was asked for, the run's own last checkpoint (checkpoint.py);
  then, every epoch:
  5. move the freeze boundary where the strategy wants it; the optimizer follows;
  6. train one epoch, setting each group's LR from its schedule at every step (loop.py);
  7. validate, record the epoch, save the checkpoints;
  and, after the last epoch:
  8. the held-out test split scored once (held_out.py), and the run's end recorded.
What the run writes of itself beside its epochs goes through one `RunRecord` (record.py); how it
is asked to stop, between batches, is stopping.py's.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..analysis import forgetting
from ..analysis.drift import Drift
from ..analysis.metrics import balanced_accuracy, class_metrics, macro_f1
from ..config import RunConfig
from ..data import decode_cache, shared_memory
from ..errors import UserError
from ..logs import logger
from ..models import backbones
from ..models.backbones import LayerGroup
from ..settings import current as settings
from ..store.run_folders import run_folder
from ..store.store import EpochWriter, Run, Store
from . import feature_cache, gpu_memory, held_out, loop
from .checkpoint import Best, Progress, RunCheckpoints, resume
from .finetuning import Finetuning, phase_ends, sync_param_groups
from .loop import EpochSoFar, peak_memory_mb, seed_everything
from .record import RunRecord
from .run_data import CHANNELS_LAST, RunData, frozen_features, load_data, load_model, training_loss
from .startup import StartupClock, amp_for, environment, pick_device, ready_gpu
from .stopping import RunCancelled, RunInterrupted, RunTaken, raising, stop_check
from .strategies import get_strategy
from .terms import load_target, make_terms

log = logger(__name__)  # a run's process writes its train.log through it (logs.py)


@dataclass
class RunResult:
    run_id: int
    status: str
    best_val_acc: float | None
    best_epoch: int | None  # counted from 1, as people and JSON consumers read it
    epochs: int
    error: str | None = None


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
        _log(
            f"{signal_name}: run {run_id} stopped with its worker; back in the queue, to continue from its last "
            f"checkpoint"
        )
    else:
        store.finish_run(
            run_id, "failed", error=f"stopped by {signal_name} with its worker (resumable from its last checkpoint)"
        )


def _explain(e: Exception) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return f"CUDA out of memory: reduce --batch-size or --image-size ({e})"
    if isinstance(e, UserError):
        return str(e)
    if said := shared_memory.explain(e):  # a DataLoader worker out of shared memory, or dead
        return said
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return (
            f"disk full while writing under {settings().runs_dir.resolve()}: free some space, then resume the run ({e})"
        )
    if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in ("out of memory", "can't allocate memory")):
        return f"out of memory: reduce --batch-size or --image-size ({e})"
    return f"{type(e).__name__}: {e}"


def _log(*lines: str) -> None:
    for line in lines:
        log.info(line)


def _result(store: Store, run_id: int) -> RunResult:
    r = store.get_run(run_id)
    return RunResult(run_id, r.status, r.best_val_acc, r.best_epoch_number, r.epochs_done, r.error)


def _fit(store: Store, run: Run, cfg: RunConfig, device: torch.device, run_dir: Path, show: bool) -> RunResult:
    """The run, its steps numbered as in the module's docstring; `train_run` records how it ends
    where it does not complete."""
    clock = StartupClock()  # what start-up costs, step by step, until the first batch
    seed_everything(cfg.seed)
    record = RunRecord(store, run)
    # Asked between batches, at most every 0.2 s (a query per batch would cost more than a small batch);
    # a worker's run also stops there when its worker stops (SIGTERM) or lost it.
    stop_requested = stop_check(store, run)

    # 1. Data.
    d = load_data(cfg, device)
    clock.mark("data")
    # 2. Model; the loss val and test are scored with, and the one that trains (weighted per class
    #    if asked); the strategy's plan over the model's layer groups.
    bb = load_model(cfg, len(d.classes), device)
    model, groups = bb.model, bb.groups
    amp, scaler = amp_for(device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    fit_loss, weighting = training_loss(cfg, d, device)
    plan = Finetuning(get_strategy(cfg.strategy), cfg.strategy_params(), groups, cfg.epochs)
    clock.mark("model")
    # 2b. On a GPU: cuDNN's search, for long runs only; will the run fit? (refused here if not)
    gpu = ready_gpu(cfg, model, plan, d, fit_loss, amp, device) if device.type == "cuda" else {}
    if gpu:
        clock.mark("probe_step")
    # 3. Frozen groups' output computed once per image and cached on disk (a cancel stops it).
    frozen = frozen_features(cfg, bb, d, device, amp, check=raising(stop_requested))
    record.start(cfg, d, bb)  # the summary, written whole: every note after this adds to it
    record.note(**({"class_weights": weighting} if weighting else {}), **gpu)
    # 3b. The loss's terms beside cross-entropy (regularizers.py, adaptation.py) and the target domain, set up on the
    #     weights training starts from, as layer drift is measured from them; the memory levers.
    target = load_target(cfg, d, device, CHANNELS_LAST)
    terms, said = make_terms(cfg, bb, d, device, CHANNELS_LAST)
    extra = [LayerGroup("domain", [*terms.modules()])] if terms.modules() else []
    drift = Drift(groups)
    checkpointed = gpu_memory.checkpoint_activations(groups) if cfg.checkpointing == "on" else 0
    record.note(
        **said,
        **({"target": target.describe()} if target else {}),
        memory={
            "accumulate": cfg.accumulate,
            "effective_batch": cfg.accumulate * d.batch_size,
            "checkpointing": cfg.checkpointing,
            **({"checkpointed_modules": checkpointed} if checkpointed else {}),
        },
    )
    # 4. A fresh start, or the run's own last checkpoint: the same trainable groups, optimizer
    #    state, schedule position, unfreezing history and random streams as when it stopped.
    checkpoints = RunCheckpoints(run_dir, run, cfg, d.classes)
    at = (
        resume(checkpoints.last_path, run, cfg, bb, plan, d, record, scaler, device, terms, extra)
        if run.resume
        else Progress()
    )
    optimizer, best, last_metrics = at.optimizer, at.best, at.last_metrics
    started = clock.started - at.elapsed  # the run's wall clock goes on from its checkpoint's
    bar = tqdm(
        total=cfg.epochs * len(d.train),
        initial=at.start_epoch * len(d.train) + (at.so_far.batches if at.so_far else 0),
        unit="batch",
        disable=not show,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    feats, last_confusion, peak_mb = None, None, 0.0
    compiled: dict[nn.Module, nn.Module] = {}  # torch.compile of each net trained
    with EpochWriter(store) as writer:  # epoch rows written in the background, all before the run ends
        for epoch in range(at.start_epoch, cfg.epochs):
            epoch_start, first = time.perf_counter(), epoch == at.start_epoch
            # 5. Move the freeze boundary where the strategy wants it; the optimizer follows, and
            #    the rest trains on the frozen groups' cached output when that pays (or is cached).
            if plan.plan(epoch) or first:
                optimizer = sync_param_groups(optimizer, cfg, groups, plan.planned_boundary, plan.multipliers(), extra)
                feats = frozen.at(plan.planned_boundary, epoch, plan.phase.end - epoch)
                _log(frozen.describe())
                precision = feature_cache.val_precision(epoch, amp, feats, frozen.precision)
                earlier = [
                    p for p in record.summary.get("val_precision", []) if p["from_epoch"] < precision["from_epoch"]
                ]  # a resume says its phase again
                record.note(feature_cache=frozen.summary(), val_precision=[*earlier, precision])
            assert optimizer is not None  # made (or restored) for the first epoch, just above
            net, train_batches, val_batches = (
                (feats.cut.rest, feats.train.for_epoch(epoch), feats.val)
                if feats
                else (model, d.train.for_epoch(epoch), d.val)
            )
            net = _compiled(net, compiled) if cfg.compile == "on" else net
            plan.train_mode(model)
            if checkpointed and first:  # what checkpointing saves, on this run's batches
                x = next(x for x, y in val_batches if len(y))
                record.note(memory={**record.summary["memory"], "activations_mb": gpu_memory.activation_memory(net, x)})
            if terms.adaptation is not None:
                assert target is not None  # an adaptation term has its target domain
                terms.target = target.batches(epoch)
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            if first:  # start-up is over: record what it cost, and where it went
                record.note(**clock.summary("features_and_resume"))

            # 6. Train one epoch (from where it stopped, for a run stopped in its middle).
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            so_far = at.so_far if first and at.so_far else EpochSoFar()
            epoch_start -= so_far.seconds
            try:
                train_loss, train_acc, seen, term_means = loop.train_one_epoch(
                    net,
                    train_batches,
                    optimizer,
                    fit_loss,
                    cfg,
                    device,
                    amp,
                    scaler,
                    plan.phase,
                    epoch,
                    bar,
                    should_stop=stop_requested,
                    terms=terms,
                    so_far=so_far,
                )
            except RunInterrupted:  # the worker is stopping: save how far this epoch got, to go on from there
                checkpoints.save_last(
                    model,
                    optimizer,
                    scaler,
                    plan,
                    terms,
                    d,
                    device,
                    epoch - 1,
                    best,
                    time.perf_counter() - started,
                    last_metrics,
                    partial=so_far,
                )
                raise

            # 7. Validate, record, checkpoint.
            ev = loop.evaluate(net, val_batches, loss_fn, device, amp, len(d.classes), keep=True)
            on_target = (
                loop.evaluate(model, target.val, loss_fn, device, amp, len(d.classes))
                if target is not None and target.labelled
                else None
            )
            plan.observe(ev["val_loss"])
            last_confusion = ev["confusion"].tolist()
            if ev["val_acc"] > best.acc:
                best = Best(ev["val_acc"], epoch, ev["confusion"])
                checkpoints.save_best(model, epoch, best.acc)
                record.save_predictions(epoch, d, val_batches, ev["outputs"])
            metrics = {
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": ev["val_loss"],
                "val_acc": ev["val_acc"],
                "val_macro_f1": macro_f1(last_confusion),
                "val_balanced_acc": balanced_accuracy(last_confusion),
                **({"val_top5": ev["val_top5"]} if "val_top5" in ev else {}),
                **({"target_loss": on_target["val_loss"], "target_acc": on_target["val_acc"]} if on_target else {}),
                **term_means,
                **drift.metrics(groups),
                **{f"lr/{pg.get('group', pg['name'])}": pg["lr"] for pg in optimizer.param_groups},  # per layer group
                "trainable_groups": plan.trainable_groups,
                **trainable(model),
                "epoch_seconds": time.perf_counter() - epoch_start,
                "images_per_sec": seen / max(so_far.seconds, 1e-9),
                "peak_memory_mb": peak_memory_mb(device),
                "wall_seconds": time.perf_counter() - started,
            }
            writer.log_epoch(run.id, epoch, metrics, best=(best.acc, best.epoch))
            last_metrics, peak_mb = metrics, max(peak_mb, metrics["peak_memory_mb"])
            checkpoints.save_last(
                model, optimizer, scaler, plan, terms, d, device, epoch, best, metrics["wall_seconds"], metrics
            )
            _log(
                f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.3f} acc {train_acc:.3f}  "
                f"val loss {ev['val_loss']:.3f} acc {ev['val_acc']:.3f}  groups {plan.trainable_groups}/{len(groups)}"
            )
    bar.close()
    terms.close()

    # 8. After the last epoch: the peak memory, knowledge kept, the held-out test split scored
    #    once, per-class results; each recorded as it is known (a failure keeps what came before).
    if device.type == "cuda":  # the run's peak, for the worker's placement of runs like it (placement.py)
        record.note(gpu_memory={**record.summary.get("gpu_memory", {}), "peak_mb": round(peak_mb, 1)})
    record.note(forgetting=_forgetting(cfg, bb, d, device, amp))
    record.note(**held_out.score_test_split(cfg, model, d, device, amp, loss_fn, checkpoints.best_path))
    assert best.confusion is not None  # every run has a best epoch once an epoch is done
    store.log_class_metrics(run.id, class_metrics(best.confusion.tolist(), d.classes))
    _finish(record, d, last_confusion, time.perf_counter() - started)
    return _result(store, run.id)


def _finish(record: RunRecord, d: RunData, last_confusion: list | None, total_seconds: float) -> None:
    """The run completed: its summary gains each phase's end, which the best epoch hides (a phase
    that ends below the one before it), the last epoch's confusion (for comparisons read there),
    and the images found unreadable while decoding (truncated)."""
    epochs = record.store.epoch_metrics([record.run.id])[record.run.id]
    fields: dict[str, Any] = {"phases": phase_ends(epochs, record.summary.get("val_precision", []))}
    if last_confusion is not None:
        fields["last_confusion"] = last_confusion
    if unreadable := decode_cache.unreadable_paths(d.rows, d.pipeline, d.splits):
        fields["unreadable"] = unreadable
    record.finish("completed", **fields, total_seconds=total_seconds)


def _forgetting(cfg: RunConfig, bb: backbones.Backbone, d: RunData, device: torch.device, amp) -> dict:
    """Knowledge kept (forgetting.py) at the last epoch, or why it was not measured."""
    why = forgetting.why_not_measured(bb, cfg.in_channels)
    if why is not None:
        return {"skipped": why}
    return {**forgetting.knowledge_kept(bb, d.val, device, amp), "epoch": cfg.epochs}


def trainable(model: nn.Module) -> dict[str, float]:
    """The parameters that train this epoch, and their share of all the model's (adapters counted in
    both, as peft's print_trainable_parameters counts them)."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trained, "trainable_share": trained / sum(p.numel() for p in model.parameters())}


def _compiled(net: nn.Module, cache_: dict) -> nn.Module:
    """torch.compile, once per module (a new freeze boundary brings a new one)."""
    if net not in cache_:
        cache_[net] = torch.compile(net)
    return cache_[net]
