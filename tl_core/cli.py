"""Command line: `python -m tl_core COMMAND`. Argument parsing and printing only: every command
asks the service layer (service/) and prints what it answers.

Exit status: 0 done, 2 bad input (one line on stderr), 1 training failed (recorded as failed), or
(`worker --health`) this machine's worker is not heartbeating.
Every command takes --json (one JSON object on stdout) and --db URL. The processes whose output is
read later (worker, serve, train-run) write it through logging, each line with its time (logs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy.exc import DBAPIError

from . import auth, logs, service, settings
from .config import RunConfig, make_config
from .errors import UserError
from .service import jobs
from .store import Run, UnknownRun, default_db_url

# Short help for the run flags; the rest read well from their names or their field's description.
_HELP = {
    "data": "dataset folder: <class>/* images, or train/<class>/* + val/<class>/* (+ test/<class>/*)",
    "backbone": "a registered backbone (see `python -m tl_core backbones`)",
    "strategy": "a registered strategy (see `python -m tl_core strategies`)",
    "weights": "imagenet (pretrained), none (random init), or a path to a state_dict",
    "lr": "base learning rate (default: the strategy's own)",
    "unfreeze": "partial: layer groups trained below the head",
    "lr_decay": "partial/discriminative/progressive: lr_k = lr / decay^(L-k), the head at --lr",
    "head_lr_factor": "full: the new head's LR as a multiple of --lr (the pretrained layers')",
    "head_epochs": "two_phase: epochs that train the head alone",
    "phase2_lr_factor": "two_phase: LR of the second phase as a multiple of --lr",
    "unfreeze_every": "progressive: epochs between unfreezing steps",
    "unfreeze_on": "progressive: unfreeze on a schedule or when val loss plateaus",
    "stage_lr_factor": "progressive: every group's LR x this at each unfreezing step (1: unchanged)",
    "train_fraction": "keep this share of every class's training images",
    "test_fraction": "hold out this share of every class as the test split (carved first, by --split-seed; "
                     "0: none, or the folder's test/): chosen on val, scored once on test",
    "workers": "DataLoader worker processes (default: by CPU count)",
}


def _add_config_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One --flag per RunConfig field (but `skip`), with its type, choices and default."""
    for name, field in RunConfig.model_fields.items():
        if name in skip:
            continue
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

    from .demo_data import DATASETS  # numpy and PIL only, loaded by the service already

    p = sub.add_parser("demo-data", parents=[common], help="write the bundled demo datasets as image folders")
    p.add_argument("out", help="folder to write <dataset>/<class>/*.png into")
    p.add_argument("--per-class", type=int, default=150, help="images per class; 0 writes all (default 150)")
    p.add_argument("--size", type=int, default=96, help="side of the written PNGs in px (default 96)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS,
                   help="digits and digits_target are a domain pair: the same digits, recoloured on textures")

    p = sub.add_parser("dataset", parents=[common], help="report on a dataset folder")
    p.add_argument("path")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", "--seed", dest="split_seed", type=int, default=0,
                   help="seed of the train/val split (default 0, as runs use)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="hold out this share of every class as the test split, as runs do (default 0)")

    p = sub.add_parser("run", parents=[common], help="train one run in the foreground (or queue it with --detach)")
    _add_config_flags(p)
    p.add_argument("--detach", action="store_true", help="queue the run for the worker and print its id")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("experiment", parents=[common], help="a grid of runs as one experiment: strategies x "
                       "train fractions x LRs x seeds (trained here one after another, or queued with --detach)")
    _add_config_flags(p, skip=("strategy", "seed", "train_fraction", "lr"))
    p.add_argument("--strategies", type=_names, required=True, help="comma-separated, e.g. feature_extraction,full")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell, from --first-seed on (default 1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--train-fractions", type=_floats, default=None, help="comma-separated, e.g. 0.1,0.3,1 "
                   "(nested: a smaller subset lies inside a larger one)")
    p.add_argument("--lrs", type=_floats, default=None, help="comma-separated base LRs (default: each strategy's own)")
    p.add_argument("--split-seeds", type=_ints, default=None, help="comma-separated split seeds, e.g. 0,1,2: every "
                   "cell on each split, so verdicts hold across splits, not for one (default: --split-seed)")
    p.add_argument("--detach", action="store_true", help="queue the runs for the worker and print their ids")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("probe", parents=[common], help="before training: images per class, how well frozen "
                       "pretrained features separate the classes (linear probe, k-NN), which strategy to try first")
    _add_config_flags(p)
    p.add_argument("--max-per-class", type=int, default=50, help="images per class probed (default 50)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # set by the dashboard, which waits for this result

    p = sub.add_parser("lr-find", parents=[common], help="the LR range test under the strategy's freezing and "
                       "per-group LR ratios: loss against LR, and a suggested LR")
    _add_config_flags(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--num-iter", type=int, default=100, help="batches at most (default 100)")
    p.add_argument("--rule", choices=["steepest", "valley"], default="steepest",
                   help="steepest: where the smoothed loss falls fastest (PyTorch Lightning); valley: fastai's")
    p.add_argument("--job", help=argparse.SUPPRESS)

    p = sub.add_parser("runs", parents=[common], help="table of runs")
    p.add_argument("--experiment", default=None)
    p.add_argument("--status", default=None)
    p.add_argument("--launched-by", action="append", default=None, metavar="NAME",
                   help="only runs this person launched (their sign-in email, or the OS user for runs launched "
                        "here); repeat for several")

    p = sub.add_parser("show", parents=[common], help="one run: config, status, per-epoch metrics")
    p.add_argument("run_id", type=int)

    p = sub.add_parser("compare", parents=[common], help="side-by-side summary of runs, and whether their "
                       "differences are real (paired t-intervals, Holm-corrected over the pairs)")
    p.add_argument("run_ids", type=int, nargs="+")
    p.add_argument("--which", choices=["best", "last"], default="best",
                   help="each run's best epoch (by val accuracy) or its last, everywhere (default best)")
    p.add_argument("--metric", choices=["acc", "macro_f1", "balanced_acc"], default="acc",
                   help="what the statistics compare (default acc)")
    p.add_argument("--split", choices=["auto", "test", "val"], default="auto",
                   help="auto (default): test when every run measured it, else validation")
    p.add_argument("--best-lr", action="store_true", help="each strategy at its best LR (chosen on validation) "
                   "in each cell of a grid over LRs")
    p.add_argument("--family", choices=["all", "cell"], default="all",
                   help="Holm's correction over every pair (default) or over each cell's pairs")

    p = sub.add_parser("errors", parents=[common], help="the validation images a run's best checkpoint gets wrong, "
                       "worst loss first; with --against REF, what it fixed and broke against run REF")
    p.add_argument("run_id", type=int)
    p.add_argument("--against", type=int, default=None, metavar="REF", help="a reference run on the same images")
    p.add_argument("--limit", type=int, default=20, help="images listed (default 20)")

    p = sub.add_parser("predict", parents=[common], help="top-k classes of images (and Grad-CAM heat maps) with a "
                       "run's best checkpoint, or with a bundle written by `export`")
    p.add_argument("source", help="a run id, or the path of an exported bundle (.pt TorchScript, .onnx)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    p.add_argument("--cam", action="store_true", help="Grad-CAM heat maps of the top-k classes (PNG, base64, in --json)")
    p.add_argument("--cam-class", action="append", default=[], metavar="CLASS", help="also a heat map for CLASS")
    p.add_argument("--cam-dir", default=None, help="write each heat map as <image>.<class>.png into this folder")
    p.add_argument("--job", help=argparse.SUPPRESS)

    p = sub.add_parser("export", parents=[common], help="the run's best checkpoint as one TorchScript or ONNX file "
                       "with its classes and preprocessing, checked against the PyTorch model on the validation images")
    p.add_argument("run_id", type=int)
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument("--out", default=None, help="the bundle's path (default: <run folder>/export/run<ID>-<backbone>.pt|.onnx)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest probability difference allowed (default 1e-3)")
    p.add_argument("--job", help=argparse.SUPPRESS)

    p = sub.add_parser("logs", parents=[common], help="a run's log (its train.log: each line with its time and level)")
    p.add_argument("run_id", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="go on printing what the run writes until it ends")
    p.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines (then follow)")

    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run (stops within one batch)")
    p.add_argument("run_id", type=int)

    p = sub.add_parser("resume", parents=[common], help="continue a failed or cancelled run from its last checkpoint")
    p.add_argument("run_id", type=int)
    p.add_argument("--detach", action="store_true", help="queue it for the worker instead of training here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("worker", parents=[common], help="take queued runs from the database and train them")
    p.add_argument("--max-concurrent", type=int, default=None, help="runs at once (default $TL_MAX_CONCURRENT, "
                   "else as many as the GPUs' memory holds, placed by placement.py; one on CPU)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the queue")
    p.add_argument("--stop", action="store_true", help="stop this database's workers on this machine instead: "
                   "their runs stop at their next batch and continue from their checkpoints on the next start")
    p.add_argument("--health", action="store_true", help="exit 1 unless a worker of this database on this machine "
                   "heartbeated within TL_WORKER_TIMEOUT_S (a container's health check)")

    p = sub.add_parser("serve", parents=[common], help="the dashboard and its worker (what `make start` runs): the "
                       "worker restarted if it dies, both stopped by Ctrl-C")
    p.add_argument("--host", default="127.0.0.1", help="the dashboard's address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8501, help="the dashboard's port (default 8501)")
    p.add_argument("--no-dashboard", action="store_true", help="the worker only, restarted if it dies")
    p.add_argument("--max-concurrent", type=int, default=None, help="the worker's runs at once")

    p = sub.add_parser("train-run", parents=[common], help=argparse.SUPPRESS)  # what the worker starts
    p.add_argument("run_id", type=int, nargs="?")
    p.add_argument("--standby", action="store_true", help="import everything, then read the run id (and the GPU "
                   "the run is placed on) from stdin")

    sub.add_parser("backbones", parents=[common], help="registered backbones, sizes and weight availability")
    sub.add_parser("strategies", parents=[common], help="registered strategies")
    return parser


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, comma-separated")
    return names


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. 0.1,0.3,1") from None


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "job", None):  # a page's job (service/jobs.py): its end is recorded in the store too
            return jobs.recorded(service.open_store(args.db), args.job, lambda: COMMANDS[args.command](args))
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


# --- printing ---------------------------------------------------------------------------


def _out(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, default=_jsonable) if args.json else text)


def _jsonable(obj):
    """What json cannot write itself: mappings (an epoch's metrics, read from the store) as
    objects, anything else (paths, dates) as its text."""
    return dict(obj) if isinstance(obj, Mapping) else str(obj)


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _test_lines(summary: dict) -> list[str]:
    """A run's held-out test results (summary "test", "test_last") as `show` prints them."""
    lines = []
    for key, what in (("test", "the epoch chosen on val"), ("test_last", "the last epoch")):
        if t := summary.get(key):
            lines.append(f"test, {what} ({t['epoch']}): acc {t['acc']:.4f}, loss {t['loss']:.4f}, macro-F1 "
                         f"{t['macro_f1']:.4f}, balanced acc {t['balanced_acc']:.4f} on {t['images']} images")
    return lines


def _ended(args, run: Run) -> int:
    """Report a run trained here; exit 1 if it failed."""
    obj = {"run_id": run.id, "status": run.status, "best_val_acc": run.best_val_acc, "test_acc": run.test_acc,
           "best_epoch": run.best_epoch_number, "epochs": run.epochs_done, "error": run.error,
           "duration_s": run.duration_s, "run_dir": run.run_dir, "batch_size": run.summary.get("batch_size"),
           "warnings": run.summary.get("warnings", []), "skipped": run.summary.get("skipped"),
           "unreadable": run.summary.get("unreadable", [])}
    text = (f"run {run.id} {run.status}: best val acc {run.best_val_acc or 0:.4f} at epoch "
            f"{run.best_epoch_number} of {run.epochs_done}" if run.status == "completed"
            else f"run {run.id} {run.status}: {run.error}")
    if run.test_acc is not None:
        text += f"; test acc {run.test_acc:.4f} (that epoch, on {run.summary['test']['images']} held-out images)"
    if skipped := len(service.skipped_files(run.summary)):
        text += f"\n{skipped} files skipped (listed in `python -m tl_core show {run.id}`)"
    _out(args, obj, text)
    if run.status == "failed":
        print(f"error: run {run.id} failed: {run.error}", file=sys.stderr)
        return 1
    return 0


# --- commands ---------------------------------------------------------------------------


@command("demo-data")
def cmd_demo_data(args) -> int:
    from .demo_data import write_demo_data

    if args.per_class < 0 or args.size < 8:
        raise UserError("--per-class must be >= 0 and --size at least 8")
    written = write_demo_data(args.out, tuple(args.datasets), args.per_class, args.size)
    lines = [f"{name}: {sum(c.values())} images in {len(c)} classes -> {args.out}/{name}" for name, c in written.items()]
    _out(args, {"out": args.out, "datasets": written}, "\n".join(lines))
    return 0


@command("dataset")
def cmd_dataset(args) -> int:
    rep = service.dataset_report(args.path, args.val_fraction, args.split_seed, args.test_fraction)
    lines = [f"{rep['root']} ({rep['layout']}): {rep['num_classes']} classes, "
             f"{rep['train_images']} train / {rep['val_images']} val / {rep['test_images']} test images "
             f"(test split: {rep['test_split']})",
             f"image sizes: min {rep['image_size']['min']}, median {rep['image_size']['median']}, max {rep['image_size']['max']}"]
    lines += [f"  {c:<20} train {n['train']:>6}  val {n['val']:>6}  test {n['test']:>6}"
              for c, n in rep["per_class"].items()]
    lines += [f"skipped: {s['path']} ({s['reason']})" for s in rep["skipped"]]
    lines += [f"warning: {w}" for w in rep["warnings"]]
    _out(args, rep, "\n".join(lines))
    return 0


@command("run")
def cmd_run(args) -> int:
    cfg = _config(args)
    service.check_run(cfg)
    for warning in cfg.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    store = service.open_store(args.db)
    if args.detach:
        run = service.queue_run(store, cfg, auth.os_user())
        _out(args, {"run_id": run.id, "status": run.status}, f"queued run {run.id}")
        return 0
    run = service.start_here(store, cfg, auth.os_user())
    return _ended(args, service.train_here(store, run.id, progress=not args.no_progress))


@command("experiment")
def cmd_experiment(args) -> int:
    base = {k: v for k, v in vars(args).items() if k in RunConfig.model_fields}
    if "experiment" not in base:  # a grid is its own experiment: named after its data and the time
        base["experiment"] = f"{Path(args.data).name}-{time.strftime('%m%d-%H%M%S')}"
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    configs = service.plan_runs(base, args.strategies, seeds, args.train_fractions, args.lrs, args.split_seeds)
    store = service.open_store(args.db)
    estimate = service.estimate_seconds(store, configs)
    for warning in dict.fromkeys(w for c in configs for w in c.warnings()):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{len(configs)} runs in experiment {base['experiment']}; "
          + (f"about {estimate['seconds'] / 60:.1f} min ({estimate['basis']})" if estimate["seconds"]
             else f"no time estimate ({estimate['basis']})"), file=sys.stderr)
    if args.detach:
        runs = [service.queue_run(store, c, auth.os_user()) for c in configs]
        _out(args, {"experiment": base["experiment"], "run_ids": [r.id for r in runs], "estimate": estimate},
             f"queued runs {', '.join(str(r.id) for r in runs)} in experiment {base['experiment']}")
        return 0
    ids, failed = [], 0
    for cfg in configs:
        run = service.train_here(store, service.start_here(store, cfg, auth.os_user()).id,
                                 progress=not args.no_progress)
        ids.append(run.id)
        failed += run.status == "failed"
    report = service.experiment_report(store, base["experiment"])
    _out(args, report, _experiment_text(report))
    return 1 if failed else 0


def _experiment_text(report: dict) -> str:
    lines = [_table(report["runs"], ["id", "strategy", "status", "best_val_acc", "best_epoch", "final_val_acc",
                                     "total_seconds"])]
    lines += [f"compared: {report['measure']}"] if report["statistics"] else []
    lines += [d["text"] for d in report["statistics"]]
    lines += [c["text"] for c in report["data_efficiency"]["crossovers"]]
    lines += [f"the probe's recommendation: {report['probe']}"] if report.get("probe") else []
    return "\n".join(lines)


def _config(args) -> RunConfig:
    return make_config(**{k: v for k, v in vars(args).items() if k in RunConfig.model_fields})


@command("probe")
def cmd_probe(args) -> int:
    p = service.probe_data(service.open_store(args.db), _config(args), args.max_per_class, args.job)
    rec = p["recommendation"]
    _out(args, p, f"{p['images_per_class']:.0f} training images per class ({p['size']}); linear probe "
                  f"{p['linear_probe_acc']:.1%}, k-NN {p['knn_acc']:.1%}, chance {p['chance']:.1%} "
                  f"(separability {p['separability']:.2f}: {p['similarity']} to ImageNet)\n"
                  f"try first: {', '.join(rec['strategies'])}: {rec['why']}")
    return 0


@command("lr-find")
def cmd_lr_find(args) -> int:
    found = service.find_lr(service.open_store(args.db), _config(args), args.start_lr, args.end_lr, args.num_iter,
                            args.rule, args.job)
    _out(args, found, f"suggested LR {found['suggested_lr']:.2e} ({found['rule_description']}); {found['stopped']}")
    return 0


@command("resume")
def cmd_resume(args) -> int:
    store = service.open_store(args.db)
    run = service.resume_run(store, args.run_id, here=not args.detach)
    if args.detach:
        _out(args, {"run_id": run.id, "status": run.status}, f"queued run {run.id} to resume")
        return 0
    return _ended(args, service.train_here(store, run.id, progress=not args.no_progress))


@command("runs")
def cmd_runs(args) -> int:
    runs = service.open_store(args.db).list_runs(args.experiment, [args.status] if args.status else None,
                                                 launched_by=args.launched_by)
    rows = [service.run_row(r) for r in runs]
    cols = ["id", "experiment", "name", "backbone", "strategy", "status", "epochs_done", "epochs",
            "best_val_acc", "test_acc", "duration_s", "launched_by"]
    none = f"no runs launched by {' or '.join(args.launched_by)}" if args.launched_by else "no runs yet"
    _out(args, {"runs": rows}, _table(rows, cols) if rows else none)
    return 0


@command("show")
def cmd_show(args) -> int:
    run = service.run_details(service.open_store(args.db), args.run_id)
    recorded = {k for e in run["epochs"] for k in e}
    keys = ["train_loss", "train_acc", "val_loss", "val_acc",
            *(k for k in ("target_acc", "reg_share", "domain_acc") if k in recorded), "trainable_groups", "epoch_seconds"]
    summary, forgetting = run["summary"], run["summary"].get("forgetting") or {}
    drift = ", ".join(f"{g} {vs[-1]:.4f}" for g, vs in run["group_drift"].items() if vs and vs[-1] is not None)
    text = "\n".join([
        f"run {run['id']} {run['name']!r} [{run['experiment']}]: {run['status']}" + (
            f" ({run['error']})" if run["error"] else ""),
        "config: " + ", ".join(f"{k}={v}" for k, v in run["config"].items() if v is not None),
        f"launched by {run['launched_by'] or 'nobody recorded'}; ran on {run['host'] or '(not started)'}"
        + (f" by the {run['executor']} executor" if run["executor"] else "")
        + (f", Ray node {run['ray_node_id']}" if run["ray_node_id"] else ""),
        f"environment: {run['environment']}",
        _table(run["epochs"], ["epoch", *keys]) if run["epochs"] else "no epochs yet",
        *([f"drift at the last epoch (||w - w0|| / ||w0||, stem first): {drift}"] if drift else []),
        *([f"knowledge kept: {forgetting['agreement']:.1%} of the pretrained model's ImageNet predictions "
           f"on {forgetting.get('images')} images"] if forgetting.get("agreement") is not None else []),
        *([f"knowledge kept: not measured ({forgetting['skipped']})"] if "skipped" in forgetting else []),
        *_test_lines(summary),
        *[f"warning: {w}" for w in summary.get("warnings", [])],
        *[f"skipped {f['path']} ({f['reason']})" for f in service.skipped_files(summary)],
    ])
    _out(args, run, text)
    return 0


@command("compare")
def cmd_compare(args) -> int:
    report = service.compare(service.open_store(args.db), args.run_ids, which=args.which, metric=args.metric,
                             split=args.split, family=args.family, best_lr=args.best_lr)
    cols = ["id", "strategy", "backbone", "status", "best_val_acc", "best_epoch", "final_val_acc",
            *(["test_acc"] if report["split"] == "test" else []), "epochs", "total_seconds", "trainable_params",
            "images_per_sec"]
    chosen = [f"{c['strategy']}: {service.lr_text(c['lr'])} (val mean {c['val_mean']:.4f})"
              + (f" at {c['cell']}" if c["cell"] else "") for c in report.get("lr_choices", [])]
    _out(args, report, "\n".join([_table(report["runs"], cols), *chosen,
                                  *([f"compared: {report['measure']}"] if report["statistics"] else []),
                                  *(d["text"] for d in report["statistics"])]))
    return 0


@command("errors")
def cmd_errors(args) -> int:
    store = service.open_store(args.db)
    run = store.get_run(args.run_id)
    classes = run.summary.get("classes") or []
    preds = service.run_predictions(store, run.id)
    if not preds:
        raise UserError(f"run {run.id} has no stored predictions: it has not finished an epoch (or was trained "
                        f"before they were stored); train or resume it")

    def row(p) -> dict:
        return {"path": p.path, "true": classes[p.label], "predicted": classes[p.pred], "prob": p.prob,
                "true_prob": p.true_prob, "loss": p.loss}

    wrong = service.errors(preds)
    obj = {"run_id": run.id, "epoch": run.summary["predictions"]["epoch"], "images": len(preds),
           "wrong": len(wrong), "errors": [row(p) for p in wrong[:args.limit]]}
    text = [f"run {run.id} at its best epoch {obj['epoch']}: {len(wrong)} of {len(preds)} validation images wrong",
            _table(obj["errors"], ["path", "true", "predicted", "prob", "loss"]) if wrong else ""]
    if args.against is not None:
        d = service.diff(store, args.against, run.id)
        obj["against"] = {"reference": args.against, "fixed": [row(p) for p in d.fixed], "broken": [row(p) for p in d.broken],
                          "still_wrong": [row(p) for p in d.still_wrong], "both_right": d.both_right,
                          "shared": d.shared, "unmatched": d.unmatched, "confusion_delta": d.confusion_delta,
                          "class_deltas": d.class_deltas}
        text.append(f"against run {args.against} on {d.shared} shared images: {len(d.fixed)} fixed, {len(d.broken)} "
                    f"broken, {len(d.still_wrong)} still wrong (net {d.net:+d})")
        text += [f"  {c['class']}: {c['reference_acc']:.1%} -> {c['acc']:.1%} ({c['delta']:+.1%})" for c in d.class_deltas]
    _out(args, obj, "\n".join(t for t in text if t))
    return 0


@command("predict")
def cmd_predict(args) -> int:
    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    cam = args.cam or bool(args.cam_class) or bool(args.cam_dir)
    found = service.predict_images(service.open_store(args.db), args.source, args.images, args.top_k, cam,
                                   args.cam_class, args.job)
    val = (f"; its validation numbers at epoch {found['val_epoch']}: {found['val_precision']}"
           if found["val_precision"] else "")
    lines = [f"{found['source']}, computed in {found['precision']}{val}"]
    for r in found["results"]:
        if "error" in r:
            lines.append(f"{r['path']}: error: {r['error']}")
            continue
        lines.append(f"{r['path']}: " + ", ".join(f"{t['class']} {t['prob']:.1%}" for t in r["top"]))
        if args.cam_dir:
            import base64

            folder = Path(args.cam_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for name, png in r["cams"].items():
                target = folder / f"{Path(r['path']).stem}.{name}.png"
                target.write_bytes(base64.b64decode(png))
                lines.append(f"  heat map for {name}: {target}")
    _out(args, found, "\n".join(lines))
    failed = [r for r in found["results"] if "error" in r]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


@command("export")
def cmd_export(args) -> int:
    r = service.export_run(service.open_store(args.db), args.run_id, args.format, args.out, args.tolerance, args.job)
    _out(args, r, f"exported run {args.run_id} as {r['format']} to {r['path']} ({r['bytes'] / 1e6:.1f} MB)\n"
                  f"parity on {r['images']} validation images: top-1 agreement {r['top1_agreement']:.2%}, largest "
                  f"probability difference {r['max_prob_diff']:.2e} (tolerance {r['tolerance']:.0e})")
    return 0


@command("backbones")
def cmd_backbones(args) -> int:
    rows = service.backbone_table()
    _out(args, {"backbones": rows}, _table(rows, ["backbone", "params", "layer_groups", "imagenet_top1", "weights"]))
    return 0


@command("strategies")
def cmd_strategies(args) -> int:
    rows = service.strategy_table()
    _out(args, {"strategies": rows}, _table(rows, ["strategy", "default_lr", "summary"]))
    return 0


@command("cancel")
def cmd_cancel(args) -> int:
    run = service.cancel_run(service.open_store(args.db), args.run_id)
    _out(args, {"run_id": run.id, "status": run.status, "cancel_requested": True},
         f"run {run.id}: " + ("cancelled" if run.status == "cancelled" else "will stop at its next batch"))
    return 0


@command("logs")
def cmd_logs(args) -> int:
    if args.tail is not None and args.tail < 0:
        raise UserError("--tail must be 0 or more")
    store = service.open_store(args.db)
    text: list[str] = []
    try:
        for chunk in service.log_text(store, args.run_id, args.follow, args.tail):
            text.append(chunk)
            if not args.json:
                sys.stdout.write(chunk)
                sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C ends --follow
        pass
    run = store.get_run(args.run_id)
    if args.json:
        print(json.dumps({"run_id": run.id, "status": run.status, "log": "".join(text)}))
    elif not (service.run_files_dir(run) / "train.log").is_file():
        print(f"run {run.id} has no log: a worker writes one for each run it trains (a run trained in the "
              f"foreground printed to its terminal)", file=sys.stderr)
    return 0


@command("worker")
def cmd_worker(args) -> int:
    from .worker import Worker

    if args.health:
        h = service.worker_health(service.open_store(args.db))
        seen = (f"worker {h['worker_id']} (pid {h['pid']}) heartbeated {h['heartbeat_age_s']:.0f} s ago"
                + (", then stopped" if h["stopped"] else "") if h["worker_id"] else "no worker of this database")
        _out(args, h, f"{'healthy' if h['healthy'] else 'unhealthy'}: {seen} on {h['host']} "
                      f"(TL_WORKER_TIMEOUT_S {h['timeout_s']:g} s)")
        return 0 if h["healthy"] else 1
    if args.stop:
        store = service.open_store(args.db)
        stopped = service.stop_worker(store)
        where = f"{service.display_db_url(store.url)} on this machine"
        _out(args, {"stopped": stopped}, f"stopped worker{'s' * (len(stopped) > 1)} {', '.join(map(str, stopped))} of {where}" if stopped
             else f"no worker of {where} is running; nothing to stop")
        return 0
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError("--max-concurrent must be at least 1")
    from . import settings

    logs.timed()  # read later: worker.log, the service's output, a container's log
    executor = settings.current().executor
    if executor == "ray":  # the runs train on a Ray cluster (tl_core/ray_executor.py)
        from .ray_executor import RayExecutor

        RayExecutor(args.db or default_db_url(), args.max_concurrent, args.poll).serve()
        return 0
    if executor != "local":
        raise UserError(f"TL_EXECUTOR={executor!r} is not an executor: set TL_EXECUTOR to local (a worker "
                        f"process on this machine) or ray (a Ray cluster at RAY_ADDRESS), or unset it")
    Worker(args.db or default_db_url(), args.max_concurrent, args.poll).serve()
    return 0


@command("serve")
def cmd_serve(args) -> int:
    from .supervisor import serve

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError("--max-concurrent must be at least 1")
    logs.timed()
    return serve(args.db or default_db_url(), args.host, args.port, not args.no_dashboard, args.max_concurrent)


@command("train-run")
def cmd_train_run(args) -> int:
    from .runfiles import run_folder
    from .train import train_run, warm_cuda  # torch, torchvision and timm: the seconds a standby saves

    logs.timed()  # its standby.log, then the run's train.log
    logger = logs.logger(__name__)
    store = service.open_store(args.db)
    run_id = args.run_id
    if args.standby:  # the worker's process kept ready ahead of need (worker.py)
        import timm  # noqa: F401  (models are built by timm: imported here, not after the run is handed over)

        warmed = warm_cuda()  # on its one GPU: CUDA started before the run comes
        logger.info(f"standby {os.getpid()}: imports done, waiting for a run")
        line = sys.stdin.readline().split()  # "<run id>", or "<run id> <gpu>" for a run placed on a GPU
        if not line:  # the worker stopped without a run for us
            return 0
        run_id = int(line[0])
        if len(line) > 1 and not warmed:  # nothing here has asked CUDA for a device yet: it still reads which
            settings.pin_gpu(line[1])
        log = run_folder(store.get_run(run_id)) / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush(), sys.stderr.flush()
        with open(log, "ab") as f:  # from here on, this process writes the run's log
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
    elif run_id is None:
        raise UserError("train-run: give a run id (or --standby)")
    if (visible := settings.current().cuda_visible_devices) is not None:
        logger.info(f"run {run_id}: the GPUs it may use are CUDA_VISIBLE_DEVICES={visible}")
    result = train_run(store, run_id, progress=False)
    if args.json:
        _out(args, result.__dict__, "")
    else:
        logger.info(f"run {result.run_id} {result.status}")
    return 1 if result.status == "failed" else 0
