"""Runs and the worker: plan, check and queue runs (with the dataset's exclusions as they are then);
cancel, resume, delete; train one here."""

from __future__ import annotations

import datetime as dt
import functools
import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.engine import make_url

from .. import settings
from ..config import RunConfig, make_config
from ..data.folders import scan_target
from ..data.scan_cache import scan_dataset  # folders.scan_dataset, reused while no file changed
from ..data.splits import batch_size_for, split_dataset
from ..errors import UserError
from ..executors.processes import ensure_worker, running_worker, stop_workers
from ..models.weights import check_obtainable
from ..store import FINISHED, Run, Store, WorkerInfo, default_db_url
from ..store.run_folders import is_run_folder, run_folder
from .exclusions import with_exclusions

# --- the store and the worker ---------------------------------------------------------------


def open_store(url: str | None = None) -> Store:
    """One Store (one connection pool) per database URL for the whole process."""
    return _store(url or default_db_url())


@functools.lru_cache(maxsize=8)
def _store(url: str) -> Store:
    return Store(url)


def display_db_url(url: str) -> str:
    """The database URL with any password masked, for showing on screen."""
    return make_url(url).render_as_string(hide_password=True)


def worker_disabled() -> bool:
    """TL_NO_WORKER=1 keeps the dashboard from starting a worker (tests, read-only viewers)."""
    return settings.current().no_worker


def start_worker(store: Store) -> int | None:
    """The pid of a worker training this database's queue on this machine; one is started (detached)
    only if none is alive: the service (`python -m tl_core serve`) normally started it already."""
    if worker_disabled():
        return None
    return ensure_worker(store)


def worker_pid(store: Store) -> int | None:
    """The pid of this database's live worker on this machine (another database's is not ours), or None."""
    return running_worker(store)


def live_workers(store: Store) -> list[WorkerInfo]:
    """Every worker of this database that is heartbeating, on any machine (newest first)."""
    return store.workers(alive=True)


def worker_health(store: Store) -> dict:
    """This machine's worker of the database, as its heartbeat in the store shows it: healthy while
    one of this host's workers has not stopped and heartbeated within TL_WORKER_TIMEOUT_S (what other
    workers wait before failing its runs as orphaned). The container's health check."""
    host, timeout = socket.gethostname(), settings.current().worker_timeout_s
    mine = [w for w in store.workers() if w.host == host]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the store's times: UTC, naive
    live = [w for w in mine if w.alive]
    newest = max(live or mine, key=lambda w: w.heartbeat_at, default=None)
    return {
        "healthy": bool(live),
        "host": host,
        "timeout_s": timeout,
        "worker_id": newest and newest.id,
        "pid": newest and newest.pid,
        "stopped": newest is not None and newest.stopped_at is not None,
        "heartbeat_age_s": None if newest is None else round((now - newest.heartbeat_at).total_seconds(), 1),
    }


def stop_worker(store: Store) -> list[int]:
    """Stop this database's workers on this machine (their runs stop at their next batch and resume on
    the next start); the pids stopped, none if none was running."""
    return stop_workers(store)


# --- planning and queueing -----------------------------------------------------------------------


def check_run(cfg: RunConfig) -> None:
    """Refuse a run before it is recorded: its weights must be obtainable, its dataset trainable and its
    target-domain folder (--target-data) readable."""
    check_obtainable(cfg.backbone, cfg.weights_to_load)
    index = scan_dataset(cfg.data, cfg.in_channels)
    splits = split_dataset(
        index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction, cfg.exclude
    )  # an exclusion moving an image to a class the folder lacks is refused here
    batch_size_for(cfg.batch_size, len(splits.train))
    if cfg.target_data:
        scan_target(cfg.target_data, splits.classes, cfg.in_channels)


def stored_config(run: Run) -> RunConfig:
    """A recorded run's config, validated as a new one would be."""
    try:
        return RunConfig.from_stored(run.config)
    except ValidationError:
        return make_config(**run.config)  # raises the UserError naming the setting


def plan_runs(
    base: dict,
    strategies: Sequence[str],
    seeds: Sequence[int],
    train_fractions: Sequence[float] | None = None,
    lrs: Sequence[float | None] | None = None,
    split_seeds: Sequence[int] | None = None,
    backbones: Sequence[str] | None = None,
) -> list[RunConfig]:
    """The grid backbones x strategies x train fractions x LRs x split seeds x seeds, everything else
    equal: one validated config per cell and seed; UserError if any is invalid. Backbones, fractions,
    LRs and the split seed default to `base`'s; several split seeds make the split a replicate like
    the seed (the statistics then take the split as their unit)."""
    if not strategies:
        raise UserError("tick at least one strategy")
    if not seeds:
        raise UserError("choose at least one seed")
    nets = list(backbones or [base.get("backbone", RunConfig.model_fields["backbone"].default)])
    fractions = list(train_fractions or [base.get("train_fraction", 1.0)])
    rates = list(lrs or [base.get("lr")])
    splits = list(split_seeds or [base.get("split_seed", 0)])
    if (
        len(set(nets)) < len(nets)
        or len(set(fractions)) < len(fractions)
        or len(set(rates)) < len(rates)
        or len(set(seeds)) < len(seeds)
        or len(set(splits)) < len(splits)
    ):
        raise UserError("a backbone, train fraction, LR, split seed or seed is listed twice; list each once")
    configs = [
        make_config(
            **{**base, "backbone": b, "strategy": s, "train_fraction": f, "lr": lr, "split_seed": split, "seed": seed}
        )
        for b in nets
        for s in strategies
        for f in fractions
        for lr in rates
        for split in splits
        for seed in seeds
    ]
    checked: set[tuple] = set()
    for cfg in configs:  # the dataset check depends only on these, not on the strategy or seed
        key = (
            cfg.data,
            cfg.val_fraction,
            cfg.train_fraction,
            cfg.split_seed,
            cfg.test_fraction,
            cfg.batch_size,
            cfg.backbone,
            cfg.weights_to_load,
            tuple(cfg.exclude),
        )
        if key not in checked:
            check_run(cfg)
            checked.add(key)
    return configs


def draft_warnings(backbone: str, strategies: list[str], settings_: dict) -> list[str]:
    """What runs of these strategies with these (partial) settings would do that is likely not
    meant, each said once; the rest of the settings take their defaults."""
    fields = {k: v for k, v in settings_.items() if k in RunConfig.model_fields}
    drafts = [RunConfig.model_construct(**{**fields, "backbone": backbone, "strategy": s}) for s in strategies]
    return list(dict.fromkeys(w for cfg in drafts for w in cfg.warnings()))


def queue_runs(
    store: Store,
    base: dict,
    strategies: Sequence[str],
    seeds: Sequence[int],
    train_fractions: Sequence[float] | None = None,
    lrs: Sequence[float | None] | None = None,
    launched_by: str | None = None,
    split_seeds: Sequence[int] | None = None,
    backbones: Sequence[str] | None = None,
) -> list[Run]:
    """Validate every run of the grid first, then queue them all as one experiment (nothing queued on error).
    Each run records the dataset's exclusion list as it is now, unless `base` names its own `exclude`."""
    if "exclude" not in base:
        base = with_exclusions(store, base)
    planned = plan_runs(base, strategies, seeds, train_fractions, lrs, split_seeds, backbones)
    return [queue_run(store, c, launched_by) for c in planned]


def more_seeds(store: Store, runs: Sequence[Run], n: int = 2, launched_by: str | None = None) -> list[Run]:
    """Queue `n` more seeds of exactly these runs' settings (each group of runs that differ only by
    seed gets seeds after its highest), to tell a difference from noise; they record `launched_by`
    (who asked for them), not who launched the originals."""
    if n < 1:
        raise UserError("add at least one seed")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        settings = {k: v for k, v in r.config.items() if k not in ("seed", "name")}
        groups.setdefault(repr(sorted(settings.items())), []).append(r)
    configs = []
    for members in groups.values():
        top = max(int(r.config.get("seed", 0)) for r in members)
        base = {**{k: v for k, v in members[0].config.items() if k != "name"}, "experiment": members[0].experiment}
        configs += [RunConfig.from_stored({**base, "seed": top + i}) for i in range(1, n + 1)]
    return [queue_run(store, c, launched_by) for c in configs]


def more_splits(store: Store, runs: Sequence[Run], n: int = 2, launched_by: str | None = None) -> list[Run]:
    """Queue `n` more split seeds of exactly these runs' settings: each group of runs that differ
    only by seed and split seed gets split seeds after its highest, each with the seeds the group
    has, for a comparison whose unit is the split."""
    if n < 1:
        raise UserError("add at least one split")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        settings = {k: v for k, v in r.config.items() if k not in ("seed", "split_seed", "name")}
        groups.setdefault(repr(sorted(settings.items())), []).append(r)
    configs = []
    for members in groups.values():
        stored = [RunConfig.from_stored(r.config) for r in members]  # the split seed of runs recorded without one
        top = max(c.split_seed for c in stored)
        seeds = sorted({c.seed for c in stored})
        base = {**{k: v for k, v in members[0].config.items() if k != "name"}, "experiment": members[0].experiment}
        configs += [
            RunConfig.from_stored({**base, "split_seed": top + i, "seed": seed})
            for i in range(1, n + 1)
            for seed in seeds
        ]
    return [queue_run(store, c, launched_by) for c in configs]


def estimate_seconds(store: Store, configs: Sequence[RunConfig]) -> dict:
    """How long the planned runs should take here, from earlier runs on this machine.

    Each planned run is timed by the seconds per training image per epoch (startup and caches
    included) of earlier completed runs on this host with its backbone and image size, the same
    strategy where there is one; without any, no estimate is made (the answer says so).
    """
    host = socket.gethostname()
    done = [
        r
        for r in store.list_runs(statuses=["completed"])
        if r.host == host and r.summary.total_seconds and r.summary.train_images and r.epochs
    ]
    per_image: dict[tuple, float] = {}  # (backbone, image size, strategy | None) -> seconds per image-epoch, the median
    for key_of in (
        lambda r: (r.config.get("backbone"), r.config.get("image_size"), r.config.get("strategy")),
        lambda r: (r.config.get("backbone"), r.config.get("image_size"), None),
    ):
        seen: dict[tuple, list[float]] = {}
        for r in done:
            seconds, images = r.summary.total_seconds, r.summary.train_images
            assert seconds is not None and images is not None  # every run in `done` has both
            seen.setdefault(key_of(r), []).append(seconds / (images * r.epochs))
        for k, v in seen.items():
            per_image.setdefault(k, sorted(v)[len(v) // 2])
    total, measured = 0.0, 0
    for cfg in configs:
        rate = per_image.get((cfg.backbone, cfg.image_size, cfg.strategy)) or per_image.get(
            (cfg.backbone, cfg.image_size, None)
        )
        if rate is None:
            continue
        total += rate * _train_images(cfg) * cfg.epochs
        measured += 1
    if not measured:
        return {
            "runs": len(configs),
            "seconds": None,
            "basis": "no earlier run with this backbone and image size on this machine to estimate from",
        }
    if measured < len(configs):  # the rest as the measured ones, on average
        total *= len(configs) / measured
    return {
        "runs": len(configs),
        "seconds": total,
        "basis": f"from {len(done)} earlier runs on this machine"
        + ("" if measured == len(configs) else f" ({measured} of the {len(configs)} runs matched one)"),
    }


def _train_images(cfg: RunConfig) -> int:
    index = scan_dataset(cfg.data, cfg.in_channels)
    splits = split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction, cfg.exclude)
    return len(splits.train)


def queue_run(store: Store, cfg: RunConfig, launched_by: str | None = None) -> Run:
    """Record a checked run as queued: the worker will train it. `launched_by`: who launched it
    (the front end knows: the signed-in person, or the OS user; see tl_core.service.auth)."""
    return store.create_run(cfg.model_dump(), cfg.experiment, cfg.name, status="queued", launched_by=launched_by)


def start_here(store: Store, cfg: RunConfig, launched_by: str | None = None) -> Run:
    """Record a checked run as running in this process (so no worker takes it)."""
    return store.create_run(
        cfg.model_dump(),
        cfg.experiment,
        cfg.name,
        status="running",
        pid=os.getpid(),
        host=socket.gethostname(),
        launched_by=launched_by,
    )


def train_here(store: Store, run_id: int, progress: bool = True) -> Run:
    """Train a recorded run in this process; the run as it ended."""
    from ..training.run import train_run  # torch, torchvision and timm: only what trains imports them

    train_run(store, run_id, progress=progress)
    return store.get_run(run_id)


# --- a run's life ----------------------------------------------------------------------------------


def cancel_run(store: Store, run_id: int) -> Run:
    """Queued runs are cancelled at once; running ones stop at their next batch."""
    run = store.get_run(run_id)
    if run.status not in ("queued", "running"):
        raise UserError(f"run {run.id} is {run.status}; only queued or running runs can be cancelled")
    return store.request_cancel(run_id)


def resume_run(store: Store, run_id: int, here: bool = False) -> Run:
    """A failed or cancelled run back in the queue (here: running in this process) to continue from
    its last checkpoint; refused, with why, if it could not train now."""
    run = store.get_run(run_id)
    if run.status not in ("failed", "cancelled"):
        raise UserError(f"run {run.id} is {run.status}; only failed or cancelled runs can be resumed")
    check_run(stored_config(run))
    if not here:
        return store.requeue(run.id)
    store.requeue(run.id, status="running")
    store.update_run(run.id, pid=os.getpid(), host=socket.gethostname())
    return store.get_run(run.id)


def run_files_dir(run: Run) -> Path:
    return run_folder(run)


def delete_run(store: Store, run_id: int) -> None:
    """Delete a finished run: its records and its folder of checkpoints and log."""
    run = store.get_run(run_id)
    if run.status not in FINISHED:
        raise UserError(f"run {run.id} is {run.status}; cancel it first, then delete it")
    folder = run_files_dir(run)
    store.delete_run(run_id)
    # Only ever a folder named after this run: a wrong run_dir must not remove anything else.
    if folder.is_dir() and is_run_folder(folder, run):
        shutil.rmtree(folder, ignore_errors=True)
