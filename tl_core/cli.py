"""Command line: `python -m tl_core COMMAND`.

Exit status: 0 done, 2 bad input (one line on stderr), 1 training failed (recorded as failed).
Every command takes --json (one JSON object on stdout) and --db URL.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import typing
from typing import Any, Sequence

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from .config import RunConfig, make_config
from .errors import UserError
from .store import Run, Store, UnknownRun, default_db_url

# Short help for the run flags; the rest read well from their names.
_HELP = {
    "data": "dataset folder: <class>/* images, or train/<class>/* + val/<class>/*",
    "backbone": "a registered backbone (see `python -m tl_core backbones`)",
    "strategy": "feature_extraction, partial, full, two_phase, discriminative, progressive, scratch",
    "weights": "imagenet (pretrained), none (random init), or a path to a state_dict",
    "lr": "base learning rate (default: the strategy's own)",
    "unfreeze": "partial: layer groups trained below the head",
    "lr_decay": "partial/discriminative/progressive: lr_k = lr / decay^(L-k), the head at --lr",
    "head_epochs": "two_phase: epochs that train the head alone",
    "phase2_lr_factor": "two_phase: LR of the second phase as a multiple of --lr",
    "unfreeze_every": "progressive: epochs between unfreezing steps",
    "unfreeze_on": "progressive: unfreeze on a schedule or when val loss plateaus",
    "train_fraction": "keep this share of every class's training images",
    "head_lr_factor": "full: the new head's LR as a multiple of --lr (the pretrained layers')",
    "stage_lr_factor": "progressive: every group's LR x this at each unfreezing step (1: unchanged)",
    "workers": "DataLoader worker processes (default: by CPU count)",
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One --flag per RunConfig field, with its type, choices and default."""
    for name, field in RunConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        args = typing.get_args(ann)
        kw: dict[str, Any] = {"dest": name, "help": _HELP.get(name, field.description)}
        if typing.get_origin(ann) is typing.Literal:
            kw["choices"] = list(args)
        else:
            base = next((a for a in args if a is not type(None)), ann) if args else ann
            kw["type"] = base
        if field.is_required():
            kw["required"] = True
        else:
            kw["default"] = argparse.SUPPRESS  # unset flags fall back to RunConfig's default
            if field.default is not None:
                kw["help"] = f"{kw['help'] or ''} (default: {field.default})".strip()
        p.add_argument(flag, **kw)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--db", default=None, help=f"database URL (default: $DATABASE_URL or {default_db_url()})")

    parser = argparse.ArgumentParser(prog="python -m tl_core", description="TransferLab: measure transfer-learning strategies.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", parents=[common], help="write the bundled demo datasets as image folders")
    p.add_argument("out", help="folder to write <dataset>/<class>/*.png into")
    p.add_argument("--per-class", type=int, default=150, help="images per class; 0 writes all (default 150)")
    p.add_argument("--size", type=int, default=96, help="side of the written PNGs in px (default 96)")
    p.add_argument("--datasets", nargs="+", default=["animals", "digits"], choices=["animals", "digits"])

    p = sub.add_parser("dataset", parents=[common], help="report on a dataset folder")
    p.add_argument("path")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", "--seed", dest="split_seed", type=int, default=0,
                   help="seed of the train/val split (default 0, as runs use)")

    p = sub.add_parser("run", parents=[common], help="train one run in the foreground (or queue it with --detach)")
    _add_config_flags(p)
    p.add_argument("--detach", action="store_true", help="queue the run for the worker and print its id")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("runs", parents=[common], help="table of runs")
    p.add_argument("--experiment", default=None)
    p.add_argument("--status", default=None)

    p = sub.add_parser("show", parents=[common], help="one run: config, status, per-epoch metrics")
    p.add_argument("run_id", type=int)

    p = sub.add_parser("compare", parents=[common], help="side-by-side summary of runs")
    p.add_argument("run_ids", type=int, nargs="+")

    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run (stops within one batch)")
    p.add_argument("run_id", type=int)

    p = sub.add_parser("resume", parents=[common], help="continue a failed or cancelled run from its last checkpoint")
    p.add_argument("run_id", type=int)
    p.add_argument("--detach", action="store_true", help="queue it for the worker instead of training here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("worker", parents=[common], help="take queued runs from the database and train them")
    p.add_argument("--max-concurrent", type=int, default=None, help="runs at once (default $TL_MAX_CONCURRENT, "
                   "else one per GPU, one on CPU)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the queue")

    p = sub.add_parser("train-run", parents=[common], help=argparse.SUPPRESS)  # what the worker starts
    p.add_argument("run_id", type=int, nargs="?")
    p.add_argument("--standby", action="store_true", help="import everything, then read the run id from stdin")

    sub.add_parser("backbones", parents=[common], help="registered backbones, sizes and weight availability")
    sub.add_parser("strategies", parents=[common], help="registered strategies")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UnknownRun as e:
        print(f"error: {e}; list runs with `python -m tl_core runs`", file=sys.stderr)
        return 2
    except DBAPIError as e:  # nothing was half-written: every store write is one transaction
        print(f"error: the database {args.db or default_db_url()} cannot be used ({e.orig}); check that its "
              f"folder is writable and the disk has space, or pass --db URL", file=sys.stderr)
        return 2


def _out(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, default=str) if args.json else text)


# --- commands ---------------------------------------------------------------------------


def cmd_demo_data(args) -> int:
    from .demo_data import write_demo_data

    if args.per_class < 0 or args.size < 8:
        raise UserError("--per-class must be >= 0 and --size at least 8")
    written = write_demo_data(args.out, tuple(args.datasets), args.per_class, args.size)
    lines = [f"{name}: {sum(c.values())} images in {len(c)} classes -> {args.out}/{name}" for name, c in written.items()]
    _out(args, {"out": args.out, "datasets": written}, "\n".join(lines))
    return 0


def cmd_dataset(args) -> int:
    from .data import dataset_report

    rep = dataset_report(args.path, args.val_fraction, args.split_seed)
    lines = [f"{rep['root']} ({rep['layout']}): {rep['num_classes']} classes, "
             f"{rep['train_images']} train / {rep['val_images']} val images",
             f"image sizes: min {rep['image_size']['min']}, median {rep['image_size']['median']}, max {rep['image_size']['max']}"]
    lines += [f"  {c:<20} train {n['train']:>6}  val {n['val']:>6}" for c, n in rep["per_class"].items()]
    lines += [f"skipped: {s['path']} ({s['reason']})" for s in rep["skipped"]]
    lines += [f"warning: {w}" for w in rep["warnings"]]
    _out(args, rep, "\n".join(lines))
    return 0


def check_run(cfg: RunConfig) -> None:
    """Refuse a run before it is recorded: the dataset must be trainable as configured."""
    from .data import batch_size_for, scan_dataset, split_dataset

    from .backbones import check_weights_obtainable

    if cfg.weights not in ("imagenet", "none") and not os.path.isfile(cfg.weights):
        raise UserError(f"--weights {cfg.weights}: no such file; pass imagenet, none, or a state_dict file")
    check_weights_obtainable(cfg.backbone, cfg.weights_to_load)
    splits = split_dataset(scan_dataset(cfg.data), cfg.val_fraction, cfg.train_fraction, cfg.split_seed)
    batch_size_for(cfg.batch_size, len(splits.train))


def stored_config(run: Run) -> RunConfig:
    """A recorded run's config, validated as a new one would be."""
    try:
        return RunConfig.from_stored(run.config)
    except ValidationError:
        return make_config(**run.config)  # raises the UserError naming the setting


def cmd_run(args) -> int:
    settings = {k: v for k, v in vars(args).items() if k in RunConfig.model_fields}
    cfg = make_config(**settings)
    check_run(cfg)
    for warning in cfg.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    store = Store(args.db)
    if args.detach:
        run = store.create_run(cfg.model_dump(), cfg.experiment, cfg.name, status="queued")
        _out(args, {"run_id": run.id, "status": run.status}, f"queued run {run.id}")
        return 0
    run = store.create_run(cfg.model_dump(), cfg.experiment, cfg.name, status="running",
                           pid=os.getpid(), host=socket.gethostname())
    return _train_here(args, store, run.id)


def cmd_resume(args) -> int:
    store = Store(args.db)
    run = store.get_run(args.run_id)
    if run.status not in ("failed", "cancelled"):
        raise UserError(f"run {run.id} is {run.status}; only failed or cancelled runs can be resumed")
    check_run(stored_config(run))
    if args.detach:
        store.requeue(run.id)
        _out(args, {"run_id": run.id, "status": "queued"}, f"queued run {run.id} to resume")
        return 0
    store.requeue(run.id, status="running")
    store.update_run(run.id, pid=os.getpid(), host=socket.gethostname())
    return _train_here(args, store, run.id)


def _train_here(args, store: Store, run_id: int) -> int:
    """Train a recorded run in this process and report it; exit 1 if it failed."""
    from .train import train_run

    run = store.get_run(run_id)
    result = train_run(store, run.id, progress=not args.no_progress)
    run = store.get_run(run.id)
    obj = {"run_id": run.id, "status": run.status, "best_val_acc": run.best_val_acc,
           "best_epoch": run.best_epoch_number, "epochs": run.epochs_done, "error": run.error,
           "duration_s": run.duration_s, "run_dir": run.run_dir, "batch_size": run.summary.get("batch_size"),
           "warnings": run.summary.get("warnings", []), "skipped": run.summary.get("skipped"),
           "unreadable": run.summary.get("unreadable", [])}
    text = (f"run {run.id} {run.status}: best val acc {run.best_val_acc or 0:.4f} at epoch "
            f"{run.best_epoch_number} of {run.epochs_done}" if run.status == "completed"
            else f"run {run.id} {run.status}: {run.error}")
    if skipped := (run.summary.get("skipped") or {}).get("count", 0) + len(run.summary.get("unreadable", [])):
        text += f"\n{skipped} files skipped (listed in `python -m tl_core show {run.id}`)"
    _out(args, obj, text)
    if result.status == "failed":
        print(f"error: run {run.id} failed: {run.error}", file=sys.stderr)
        return 1
    return 0


def _row(r: Run) -> dict:
    return {"id": r.id, "experiment": r.experiment, "name": r.name, "backbone": r.config.get("backbone"),
            "strategy": r.config.get("strategy"), "status": r.status, "epochs_done": r.epochs_done,
            "epochs": r.epochs, "best_val_acc": r.best_val_acc, "duration_s": r.duration_s}


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def cmd_runs(args) -> int:
    store = Store(args.db)
    runs = store.list_runs(args.experiment, [args.status] if args.status else None)
    rows = [_row(r) for r in runs]
    cols = ["id", "experiment", "name", "backbone", "strategy", "status", "epochs_done", "epochs",
            "best_val_acc", "duration_s"]
    _out(args, {"runs": rows}, _table(rows, cols) if rows else "no runs yet")
    return 0


def cmd_show(args) -> int:
    store = Store(args.db)
    run = store.get_run(args.run_id)
    epochs = store.epoch_metrics([run.id])[run.id]
    classes = [c.__dict__ for c in store.class_metrics(run.id)]
    obj = {**run.to_dict(), "epochs": [{"epoch": e + 1, **m} for e, m in epochs.items()], "class_metrics": classes}
    keys = ["train_loss", "train_acc", "val_loss", "val_acc", "trainable_groups", "epoch_seconds"]
    text = "\n".join([
        f"run {run.id} {run.name!r} [{run.experiment}]: {run.status}" + (f" ({run.error})" if run.error else ""),
        "config: " + ", ".join(f"{k}={v}" for k, v in run.config.items() if v is not None),
        f"environment: {run.environment}",
        _table([{"epoch": e + 1, **m} for e, m in epochs.items()], ["epoch", *keys]) if epochs else "no epochs yet",
        *[f"warning: {w}" for w in run.summary.get("warnings", [])],
        *[f"skipped {f['path']} ({f['reason']})" for f in (run.summary.get("skipped") or {}).get("files", [])],
        *[f"skipped {p} (unreadable when decoded)" for p in run.summary.get("unreadable", [])],
    ])
    _out(args, obj, text)
    return 0


def summarize(run: Run, epochs: dict[int, dict[str, float]]) -> dict:
    """The comparison row of one run."""
    last = epochs[max(epochs)] if epochs else {}
    ips = [m["images_per_sec"] for m in epochs.values() if "images_per_sec" in m]
    return {"id": run.id, "name": run.name, "strategy": run.config.get("strategy"),
            "backbone": run.config.get("backbone"), "status": run.status,
            "best_val_acc": run.best_val_acc, "best_epoch": run.best_epoch_number,
            "final_val_acc": last.get("val_acc"), "epochs": len(epochs),
            "total_seconds": last.get("wall_seconds"), "trainable_params": last.get("trainable_params"),
            "images_per_sec": sum(ips) / len(ips) if ips else None}


def cmd_compare(args) -> int:
    store = Store(args.db)
    runs = [store.get_run(i) for i in args.run_ids]
    metrics = store.epoch_metrics(args.run_ids)
    rows = [summarize(r, metrics[r.id]) for r in runs]
    cols = ["id", "strategy", "backbone", "status", "best_val_acc", "best_epoch", "final_val_acc", "epochs",
            "total_seconds", "trainable_params", "images_per_sec"]
    _out(args, {"runs": rows}, _table(rows, cols))
    return 0


def cmd_backbones(args) -> int:
    from .backbones import describe, list_backbones

    rows = []
    for name in list_backbones():
        d = describe(name)
        rows.append({"name": name, "params": d["params"], "groups": len(d["groups"]),
                     "imagenet_top1": d["imagenet_top1"], "weights": d["weights"]})
    _out(args, {"backbones": rows}, _table(rows, ["name", "params", "groups", "imagenet_top1", "weights"]))
    return 0


def cmd_strategies(args) -> int:
    from .strategies import get_strategy, list_strategies

    rows = [{"name": n, "default_lr": get_strategy(n).default_lr, "summary": get_strategy(n).summary}
            for n in list_strategies()]
    _out(args, {"strategies": rows}, _table(rows, ["name", "default_lr", "summary"]))
    return 0


def cmd_cancel(args) -> int:
    store = Store(args.db)
    run = store.get_run(args.run_id)
    if run.status not in ("queued", "running"):
        raise UserError(f"run {run.id} is {run.status}; only queued or running runs can be cancelled")
    run = store.request_cancel(run.id)
    _out(args, {"run_id": run.id, "status": run.status, "cancel_requested": True},
         f"run {run.id}: " + ("cancelled" if run.status == "cancelled" else "will stop at its next batch"))
    return 0


def cmd_worker(args) -> int:
    from .worker import Worker

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError("--max-concurrent must be at least 1")
    Worker(args.db or default_db_url(), args.max_concurrent, args.poll).serve()
    return 0


def cmd_train_run(args) -> int:
    from .runfiles import run_folder
    from .train import train_run  # torch, torchvision and timm: the seconds a standby saves

    run_id = args.run_id
    if args.standby:  # the worker's process kept ready ahead of need (worker.py)
        import timm  # noqa: F401  (models are built by timm: imported here, not after the run is handed over)

        line = sys.stdin.readline().strip()
        if not line:  # the worker stopped without a run for us
            return 0
        run_id = int(line)
        log = run_folder(Store(args.db).get_run(run_id)) / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush(), sys.stderr.flush()
        with open(log, "ab") as f:  # from here on, this process writes the run's log
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
    elif run_id is None:
        raise UserError("train-run: give a run id (or --standby)")
    result = train_run(Store(args.db), run_id, progress=False)
    _out(args, result.__dict__, f"run {result.run_id} {result.status}")
    return 1 if result.status == "failed" else 0


COMMANDS = {"resume": cmd_resume, "cancel": cmd_cancel, "worker": cmd_worker, "train-run": cmd_train_run, "demo-data": cmd_demo_data, "dataset": cmd_dataset, "run": cmd_run, "runs": cmd_runs,
            "show": cmd_show, "compare": cmd_compare, "backbones": cmd_backbones, "strategies": cmd_strategies}
