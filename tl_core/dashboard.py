"""What the dashboard pages need from the engine, as plain functions (no streamlit here).

The pages in pages/ are thin: they draw widgets and call these. Everything that reads the
store, the registries or the file system on their behalf lives here, so it can be tested
without a browser and reused by anything that is not Streamlit.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections import deque
from pathlib import Path
from typing import Iterable

from .config import RunConfig, make_config
from .errors import UserError
from .store import FINISHED, STATUSES, Run, Store, default_db_url

# FINISHED and STATUSES are imported here for the pages too: they never import the store module.

# --- the store and the worker ---------------------------------------------------------------


def open_store(url: str | None = None) -> Store:
    """One Store (one connection pool) per database URL for the whole dashboard process."""
    return _store(url or default_db_url())


@functools.lru_cache(maxsize=8)
def _store(url: str) -> Store:
    return Store(url)


def display_db_url(url: str) -> str:
    """The database URL with any password masked, for showing on screen."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def worker_disabled() -> bool:
    """TL_NO_WORKER=1 keeps the dashboard from starting a worker (tests, read-only viewers)."""
    return os.environ.get("TL_NO_WORKER", "").lower() in ("1", "true", "yes")


def start_worker(db_url: str) -> int | None:
    """The pid of the worker training this database's queue, started if none is alive."""
    if worker_disabled():
        return None
    from .worker import ensure_worker

    return ensure_worker(open_store(db_url))


def worker_pid(db_url: str) -> int | None:
    """The pid of this database's live worker (another database's worker is not ours), or None."""
    from .worker import running_worker

    return running_worker(open_store(db_url))


# --- datasets ---------------------------------------------------------------------------------


def data_roots() -> list[Path]:
    """Folders the dashboard may read datasets from: $TL_DATA_ROOTS (os.pathsep-separated), or ./data."""
    raw = os.environ.get("TL_DATA_ROOTS") or "data"
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def dataset_folders(roots: Iterable[Path]) -> list[str]:
    """Every visible sub-folder of every root, as absolute paths, sorted by name."""
    found: list[str] = []
    for root in roots:
        if root.is_dir():
            found += sorted(str(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return found


def resolve_data_path(path: str, roots: Iterable[Path]) -> str:
    """The real path of `path` if it lies inside one of `roots` (symlinks followed), else UserError."""
    roots = list(roots)
    if not path or not path.strip():
        raise UserError("choose a dataset folder first")
    real = Path(path.strip()).expanduser().resolve()
    if not any(real == root or real.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise UserError(f"{path} is outside the data folders the dashboard may read ({allowed}); "
                        f"copy or link the dataset into one of them, or add its parent to TL_DATA_ROOTS")
    if not real.is_dir():
        raise UserError(f"{path} is not a folder; choose the folder that holds one sub-folder per class")
    return str(real)


def dataset_report(path: str, val_fraction: float = 0.2, split_seed: int = 0) -> dict:
    """Classes, images per class per split, sizes, skipped files and warnings (UserError if unusable)."""
    from .data import dataset_report as report

    return report(path, val_fraction, split_seed)


def sample_images(path: str, per_class: int = 4) -> dict[str, list[str]]:
    """A few image paths of every class, for thumbnails."""
    from .data import scan_dataset

    index = scan_dataset(path)
    out: dict[str, list[str]] = {name: [] for name in index.classes}
    for items in index.items.values():
        for item in items:
            bucket = out[index.classes[item.label]]
            if len(bucket) < per_class:
                bucket.append(item.path)
    return out


# --- backbones and strategies -------------------------------------------------------------------


def backbone_table() -> list[dict]:
    """One row per registered backbone: size, layer groups, ImageNet top-1, weights availability."""
    from .backbones import describe, list_backbones

    rows = []
    for name in list_backbones():
        d = describe(name)
        rows.append({"backbone": name, "params_m": d["params"] / 1e6, "layer_groups": len(d["groups"]),
                     "imagenet_top1": d["imagenet_top1"], "weights": d["weights"]})
    return rows


def strategy_table() -> list[dict]:
    from .strategies import get_strategy, list_strategies

    return [{"strategy": n, "summary": get_strategy(n).summary, "when": get_strategy(n).when,
             "default_lr": get_strategy(n).default_lr, "knobs": list(get_strategy(n).knobs)}
            for n in list_strategies()]


def strategy_param_counts(backbone: str, strategy: str, settings: dict, num_classes: int = 10) -> dict:
    """Trainable and frozen parameters the strategy implies at its first and last epoch.

    `settings` holds any RunConfig fields (knobs, head, epochs); the rest take their defaults.
    For a plateau-driven progressive run the last epoch is an upper bound (`end_is_bound`).
    """
    from .strategies import get_strategy

    fields = {k: v for k, v in settings.items() if k in RunConfig.model_fields}
    cfg = RunConfig.model_construct(**{**fields, "backbone": backbone, "strategy": strategy})
    sizes = _group_sizes(backbone, num_classes, cfg.head, cfg.hidden)
    s, p, n = get_strategy(strategy), cfg.strategy_params(), len(sizes)
    plateau = strategy == "progressive" and p.unfreeze_on == "plateau"
    start = min(n, s.n_trainable(0, n, p, ()))
    end = n if plateau else min(n, s.n_trainable(max(0, cfg.epochs - 1), n, p, ()))
    total = sum(sizes)
    start_trainable, end_trainable = sum(sizes[n - start:]), sum(sizes[n - end:])
    return {"total": total, "groups": n, "start_groups": start, "end_groups": end,
            "start_trainable": start_trainable, "end_trainable": end_trainable,
            "start_frozen": total - start_trainable, "end_frozen": total - end_trainable,
            "end_is_bound": plateau}


@functools.lru_cache(maxsize=64)
def _group_sizes(backbone: str, num_classes: int, head: str, hidden: int) -> tuple[int, ...]:
    """Parameters in each layer group (head last), built without weights on the meta device."""
    from .backbones import create_backbone

    try:
        bb = create_backbone(backbone, num_classes, weights="none", head=head, hidden=hidden, device="meta")
    except NotImplementedError:  # RegNet's builder computes with real tensors
        bb = create_backbone(backbone, num_classes, weights="none", head=head, hidden=hidden)
    return tuple(g.num_params() for g in bb.groups)


def recommend_strategy(images_per_class: float) -> tuple[list[str], str]:
    """Strategies to try first for this much data per class, and why (a rule of thumb)."""
    n = round(images_per_class)
    if n < 100:
        return (["feature_extraction", "partial"],
                f"about {n} training images per class is little: a frozen backbone with a new head "
                f"(feature_extraction) is hard to overfit; if the images look unlike ImageNet, "
                f"try partial with 1-2 groups")
    if n < 1000:
        return (["partial", "two_phase", "discriminative"],
                f"about {n} training images per class: adapt the upper layers (partial), or fine-tune "
                f"everything carefully (two_phase, discriminative)")
    return (["full", "discriminative"],
            f"about {n} training images per class is plenty: fine-tune every layer (full), or with "
            f"learning rates falling towards the stem (discriminative)")


# --- queueing runs ------------------------------------------------------------------------------

_LABELS = {"data": "Dataset", "lr": "Learning rate", "batch_size": "Batch size", "image_size": "Image size",
           "weight_decay": "Weight decay", "train_fraction": "Train fraction", "val_fraction": "Val fraction",
           "unfreeze": "Groups to unfreeze", "lr_decay": "LR decay", "head_epochs": "Head epochs",
           "unfreeze_every": "Unfreeze every", "unfreeze_on": "Unfreeze on", "phase2_lr_factor": "Phase-2 LR factor"}


def form_message(error: UserError | str) -> str:
    """A UserError worded for the form: CLI flags (--batch-size) become the form's labels."""
    def label(m: re.Match) -> str:
        field = m.group(1).replace("-", "_")
        return _LABELS.get(field, field.replace("_", " ").capitalize())

    return re.sub(r"--([a-z0-9][a-z0-9-]*)", label, str(error))


def plan_runs(base: dict, strategies: list[str], seeds: list[int]) -> list[RunConfig]:
    """One validated config per (strategy, seed), everything else equal; UserError if any is invalid."""
    if not strategies:
        raise UserError("tick at least one strategy")
    if not seeds:
        raise UserError("choose at least one seed")
    from .cli import check_run

    configs = [make_config(**{**base, "strategy": s, "seed": seed}) for s in strategies for seed in seeds]
    checked: set[tuple] = set()
    for cfg in configs:  # the dataset check depends only on these, not on the strategy
        key = (cfg.data, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.batch_size, cfg.weights)
        if key not in checked:
            check_run(cfg)
            checked.add(key)
    return configs


def draft_warnings(backbone: str, strategies: list[str], settings: dict) -> list[str]:
    """What runs of these strategies with these (partial) settings would do that is likely not
    meant, each said once; the rest of the settings take their defaults."""
    fields = {k: v for k, v in settings.items() if k in RunConfig.model_fields}
    drafts = [RunConfig.model_construct(**{**fields, "backbone": backbone, "strategy": s}) for s in strategies]
    return list(dict.fromkeys(w for cfg in drafts for w in cfg.warnings()))


def queue_runs(store: Store, base: dict, strategies: list[str], seeds: list[int]) -> list[Run]:
    """Validate every run first, then queue them all as one experiment (nothing queued on error)."""
    configs = plan_runs(base, strategies, seeds)
    return [store.create_run(c.model_dump(), c.experiment, c.name, status="queued") for c in configs]


# --- the runs table -------------------------------------------------------------------------------


def eta_seconds(run: Run, epochs: int | None = None) -> float | None:
    """Seconds left for a running run, from its pace so far; None when unknown."""
    epochs = epochs or run.epochs
    if run.status != "running" or not run.epochs_done or run.duration_s is None:
        return None
    return run.duration_s / run.epochs_done * max(0, epochs - run.epochs_done)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def runs_rows(runs: list[Run]) -> list[dict]:
    """The Runs page table, from run records only (no metric rows: it refreshes every 2 s)."""
    rows = []
    for r in runs:
        rows.append({
            "id": r.id, "name": r.name, "experiment": r.experiment, "backbone": r.config.get("backbone"),
            "strategy": r.config.get("strategy"), "seed": r.config.get("seed"), "status": r.status,
            "epoch": f"{r.epochs_done} of {r.epochs}", "progress": r.epochs_done / max(1, r.epochs),
            "eta": format_seconds(eta_seconds(r)), "best_val_acc": r.best_val_acc,
            "duration": format_seconds(r.duration_s), "created": r.created_at.strftime("%Y-%m-%d %H:%M"),
        })
    return rows


def status_counts(runs: list[Run]) -> dict[str, int]:
    return {s: sum(r.status == s for r in runs) for s in STATUSES}


def cancel_run(store: Store, run_id: int) -> Run:
    run = store.get_run(run_id)
    if run.status not in ("queued", "running"):
        raise UserError(f"run {run.id} is {run.status}; only queued or running runs can be cancelled")
    return store.request_cancel(run_id)


def resume_run(store: Store, run_id: int) -> Run:
    """Queue a failed or cancelled run to continue from its last checkpoint."""
    from .cli import check_run, stored_config

    run = store.get_run(run_id)
    if run.status not in ("failed", "cancelled"):
        raise UserError(f"run {run.id} is {run.status}; only failed or cancelled runs can be resumed")
    check_run(stored_config(run))
    return store.requeue(run.id)


def run_files_dir(run: Run) -> Path:
    from .runfiles import run_folder

    return run_folder(run)


def delete_run(store: Store, run_id: int) -> None:
    """Delete a finished run: its records and its folder of checkpoints and log."""
    run = store.get_run(run_id)
    if run.status not in FINISHED:
        raise UserError(f"run {run.id} is {run.status}; cancel it first, then delete it")
    folder = run_files_dir(run)
    store.delete_run(run_id)
    from .runfiles import is_run_folder

    # Only ever a folder named after this run: a wrong run_dir must not remove anything else.
    if folder.is_dir() and is_run_folder(folder, run):
        shutil.rmtree(folder, ignore_errors=True)


# --- one run's files ------------------------------------------------------------------------------


def speed_note(summary: dict) -> str:
    """One line on what a run's caches did (features, decoded images) and its startup time."""
    parts = []
    fc, dc = summary.get("feature_cache"), summary.get("decode_cache")
    if fc and fc.get("used"):
        how = "found in the cache" if fc.get("hit") else f"computed in {fc.get('seconds', 0):.1f} s"
        views = f", {fc['views']} augmented views per image" if fc.get("views", 1) > 1 else ""
        parts.append(f"**frozen features**: cached at the {fc.get('boundary')} ({how}, {fc.get('precision')}{views})")
    elif fc:
        parts.append(f"**frozen features**: not cached ({fc.get('why', '')})")
    if dc:
        parts.append("**decoded images**: cached" if dc.get("used") else f"**decoded images**: not cached ({dc.get('why')})")
    if "startup_seconds" in summary:
        parts.append(f"**startup**: {summary['startup_seconds']:.1f} s to the first batch")
    return " · ".join(parts)


def input_note(summary: dict) -> str:
    """One line on what the model was fed: image size against the weights' own, preprocessing, batch."""
    parts = []
    if pre := summary.get("preprocessing"):
        p = pre["pre"]
        mean, std = (", ".join(f"{v:.3f}" for v in p[k]) for k in ("mean", "std"))
        parts.append(f"**input**: {pre['image_size']} px (the weights' native size: {pre['native_size']} px), "
                     f"resized {p['interpolation']} to {pre['resize']} px and centre-cropped, augmentation "
                     f"{pre['augment']}, normalised with mean ({mean}) and std ({std}) from the weights")
    if batch := summary.get("batch_size"):
        parts.append(f"**batch size**: {batch['used']}" + (f" ({batch['why']})" if batch.get("why") else ""))
    return " · ".join(parts)


def skipped_files(summary: dict) -> list[dict]:
    """Files a run left out: those its scan refused, then those that failed to decode."""
    return [*(summary.get("skipped") or {}).get("files", []),
            *({"path": p, "reason": "unreadable when decoded"} for p in summary.get("unreadable", []))]


def log_tail(run: Run, lines: int = 50) -> str:
    path = run_files_dir(run) / "train.log"
    if not path.is_file():
        return ""
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def checkpoint(run: Run, which: str = "best") -> Path | None:
    path = run_files_dir(run) / f"{which}.pt"
    return path if path.is_file() else None


# --- comparing runs ---------------------------------------------------------------------------------


def time_to_accuracy(epochs: dict[int, dict[str, float]], target: float) -> float | None:
    """Wall-clock seconds until val_acc first reached `target`; None if it never did."""
    for m in epochs.values():
        if m.get("val_acc", -1) >= target:
            return m.get("wall_seconds")
    return None


def summary_rows(runs: list[Run], metrics: dict[int, dict[int, dict[str, float]]],
                 target_acc: float) -> list[dict]:
    from .cli import summarize

    rows = []
    for r in runs:
        row = summarize(r, metrics.get(r.id, {}))
        row["seed"] = r.config.get("seed")
        row["time_to_target_s"] = time_to_accuracy(metrics.get(r.id, {}), target_acc)
        rows.append(row)
    return rows


EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "trainable_groups", "trainable_params",
              "epoch_seconds", "images_per_sec", "peak_memory_mb", "wall_seconds")


def metric_rows(runs: list[Run], metrics: dict[int, dict[int, dict[str, float]]]) -> list[dict]:
    """Every epoch of every run as one flat row (epoch 1-based), for tables and CSV.

    Keys come in a reading order: losses and accuracies, then the strategy's trainable
    groups, then speed, then each layer group's LR, then anything newer.
    """
    rows = []
    for r in runs:
        for e, m in metrics.get(r.id, {}).items():
            known = {k: m[k] for k in EPOCH_KEYS if k in m}
            lrs = {k: m[k] for k in sorted(m) if k.startswith("lr/")}
            rest = {k: v for k, v in m.items() if k not in known and k not in lrs}
            rows.append({"run_id": r.id, "name": r.name, "strategy": r.config.get("strategy"), "epoch": e + 1,
                         **known, **lrs, **rest})
    return rows
