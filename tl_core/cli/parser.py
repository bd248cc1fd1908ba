"""The argument parser: every command's flags (`build_parser`), and a run's flags made from RunConfig's
fields, with their types, choices and defaults (`_add_config_flags`), read back into a RunConfig
(`_config`)."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from typing import Any

from ..config import RunConfig, choices, make_config
from ..data.demo import DATASETS  # numpy and PIL only, loaded by the service already
from ..service.exclusions import EXCLUDE_FILE_HELP
from ..service.measure import CHECK_NOT_FLAGS, NEAR_AT, PIXEL_AT, RANK_NOT_FLAGS
from ..store.store import default_db_url

# Short help for the run flags; the rest read well from their names or their field's description.
_HELP = {
    "data": "dataset folder: <class>/* images, or train/<class>/* + val/<class>/* (+ test/<class>/*)",
    "backbone": "a registered backbone, or any timm model as timm/<name>[.<tag>] (see `python -m tl_core backbones`)",
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
    """One --flag per RunConfig field (but `skip`, and `exclude`: a list, given as a file by
    `_add_exclude_flag`), with its type, choices and default."""
    for name, field in RunConfig.model_fields.items():
        if name in skip or name == "exclude":
            continue
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        args = typing.get_args(ann)
        kw: dict[str, Any] = {"dest": name, "help": _HELP.get(name, field.description)}
        if options := choices(name):  # a Literal's values, or a registry's (--regularizer, --adapt)
            kw["choices"] = options
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


def _add_exclude_flag(p: argparse.ArgumentParser) -> None:
    """--exclude FILE: the run's exclusions from a file, instead of the dataset's list in the store."""
    p.add_argument("--exclude", dest="exclude_file", metavar="FILE", default=None, help=EXCLUDE_FILE_HELP)


def build_parser() -> argparse.ArgumentParser:
    """`python -m tl_core`'s parser: one subcommand per command, each with --json and --db."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--db", default=None, help=f"database URL (default: $DATABASE_URL or {default_db_url()})")

    parser = argparse.ArgumentParser(
        prog="python -m tl_core", description="TransferLab: measure transfer-learning strategies."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", parents=[common], help="write the bundled demo datasets as image folders")
    p.add_argument("out", help="folder to write <dataset>/<class>/*.png into")
    p.add_argument("--per-class", type=int, default=150, help="images per class; 0 writes all (default 150)")
    p.add_argument("--size", type=int, default=96, help="side of the written PNGs in px (default 96)")
    p.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        choices=DATASETS,
        help="digits and digits_target are a domain pair: the same digits, recoloured on textures",
    )

    p = sub.add_parser("dataset", parents=[common], help="report on a dataset folder")
    p.add_argument("path")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument(
        "--split-seed",
        "--seed",
        dest="split_seed",
        type=int,
        default=0,
        help="seed of the train/val split (default 0, as runs use)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="hold out this share of every class as the test split, as runs do (default 0)",
    )

    p = sub.add_parser("run", parents=[common], help="train one run in the foreground (or queue it with --detach)")
    _add_config_flags(p)
    _add_exclude_flag(p)
    p.add_argument("--detach", action="store_true", help="queue the run for the worker and print its id")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "experiment",
        parents=[common],
        help="a grid of runs as one experiment: backbones x strategies x "
        "train fractions x LRs x seeds (trained here one after another, or queued with --detach)",
    )
    _add_config_flags(p, skip=("strategy", "seed", "train_fraction", "lr"))
    _add_exclude_flag(p)
    p.add_argument("--strategies", type=_names, required=True, help="comma-separated, e.g. feature_extraction,full")
    p.add_argument(
        "--backbones",
        type=_names,
        default=None,
        help="comma-separated: every cell on each backbone, e.g. efficientnet_lite0,efficientnet_lite1 "
        "(instead of --backbone); rank them first with `rank-backbones`",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell, from --first-seed on (default 1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument(
        "--train-fractions",
        type=_floats,
        default=None,
        help="comma-separated, e.g. 0.1,0.3,1 (nested: a smaller subset lies inside a larger one)",
    )
    p.add_argument("--lrs", type=_floats, default=None, help="comma-separated base LRs (default: each strategy's own)")
    p.add_argument(
        "--split-seeds",
        type=_ints,
        default=None,
        help="comma-separated split seeds, e.g. 0,1,2: every "
        "cell on each split, so verdicts hold across splits, not for one (default: --split-seed)",
    )
    p.add_argument("--detach", action="store_true", help="queue the runs for the worker and print their ids")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "probe",
        parents=[common],
        help="before training: images per class, how well frozen "
        "pretrained features separate the classes (linear probe, k-NN), which strategy to try first",
    )
    _add_config_flags(p)
    p.add_argument("--max-per-class", type=int, default=50, help="images per class probed (default 50)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # set by the dashboard, which waits for this result

    p = sub.add_parser(
        "check-data",
        parents=[common],
        help="before training: likely label errors (k-fold linear model on frozen features, ranked by "
        "cleanlab), exact and near duplicates (leaks across train/val/test first), class counts and "
        "imbalance, unreadable files, outliers; over every split, the test split only read",
    )
    _add_config_flags(p, skip=CHECK_NOT_FLAGS)
    p.add_argument(
        "--image-size",
        dest="check_image_size",
        type=int,
        default=None,
        help="the size the images are seen at (default: the weights' native size, as the probe)",
    )
    p.add_argument("--folds", type=int, default=5, help="folds of the out-of-sample label model (default 5)")
    p.add_argument(
        "--near-threshold",
        type=float,
        default=NEAR_AT,
        help=f"cosine similarity of two images' embeddings from which they are near copies (default {NEAR_AT}, "
        "calibrated on the demo data: most re-encoded and brightened copies above, distinct images below)",
    )
    p.add_argument(
        "--pixel-threshold",
        type=float,
        default=PIXEL_AT,
        help=f"cosine similarity of two images' pixel descriptors (their grey image's lowest DCT frequencies) from "
        f"which they are near copies (default {PIXEL_AT}, calibrated on the demo data: every re-encoded, resized, "
        "brightened copy above, distinct images below)",
    )
    p.add_argument("--job", help=argparse.SUPPRESS)

    p = sub.add_parser(
        "rank-backbones",
        parents=[common],
        help="before training: which backbone for this data? Candidates ranked by LogME (and LEEP where they "
        "have an ImageNet head) from their frozen features on the training images, with the seconds each took",
    )
    _add_config_flags(p, skip=RANK_NOT_FLAGS)
    p.add_argument(
        "--backbones",
        type=_names,
        required=True,
        help="comma-separated candidates, each a registered backbone with --weights, or its own after an @: "
        "efficientnet_lite0,efficientnet_lite1,efficientnet_lite0@none",
    )
    p.add_argument(
        "--image-size",
        dest="rank_image_size",
        type=int,
        default=None,
        help="the size every candidate sees the images at (default: each weights' native size, as the probe)",
    )
    p.add_argument("--max-per-class", type=int, default=50, help="training images per class scored (default 50)")
    p.add_argument("--job", help=argparse.SUPPRESS)

    p = sub.add_parser(
        "lr-find",
        parents=[common],
        help="the LR range test under the strategy's freezing and "
        "per-group LR ratios: loss against LR, and a suggested LR",
    )
    _add_config_flags(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--num-iter", type=int, default=100, help="batches at most (default 100)")
    p.add_argument(
        "--rule",
        choices=["steepest", "valley"],
        default="steepest",
        help="steepest: where the smoothed loss falls fastest (PyTorch Lightning); valley: fastai's",
    )
    p.add_argument("--job", help=argparse.SUPPRESS)

    p = sub.add_parser("runs", parents=[common], help="table of runs")
    p.add_argument("--experiment", default=None)
    p.add_argument("--status", default=None)
    p.add_argument(
        "--launched-by",
        action="append",
        default=None,
        metavar="NAME",
        help="only runs this person launched (their sign-in email, or the OS user for runs launched "
        "here); repeat for several",
    )

    p = sub.add_parser("show", parents=[common], help="one run: config, status, per-epoch metrics")
    p.add_argument("run_id", type=int)

    p = sub.add_parser(
        "compare",
        parents=[common],
        help="side-by-side summary of runs, and whether their "
        "differences are real (paired t-intervals, Holm-corrected over the pairs)",
    )
    p.add_argument("run_ids", type=int, nargs="+")
    p.add_argument(
        "--which",
        choices=["best", "last"],
        default="best",
        help="each run's best epoch (by val accuracy) or its last, everywhere (default best)",
    )
    p.add_argument(
        "--metric",
        choices=["acc", "macro_f1", "balanced_acc"],
        default="acc",
        help="what the statistics compare (default acc)",
    )
    p.add_argument(
        "--split",
        choices=["auto", "test", "val"],
        default="auto",
        help="auto (default): test when every run measured it, else validation",
    )
    p.add_argument(
        "--best-lr",
        action="store_true",
        help="each strategy at its best LR (chosen on validation) in each cell of a grid over LRs",
    )
    p.add_argument(
        "--family",
        choices=["all", "cell"],
        default="all",
        help="Holm's correction over every pair (default) or over each cell's pairs",
    )

    p = sub.add_parser(
        "errors",
        parents=[common],
        help="the validation images a run's best checkpoint gets wrong, "
        "worst loss first; with --against REF, what it fixed and broke against run REF",
    )
    p.add_argument("run_id", type=int)
    p.add_argument("--against", type=int, default=None, metavar="REF", help="a reference run on the same images")
    p.add_argument("--limit", type=int, default=20, help="images listed (default 20)")

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="top-k classes of images (and Grad-CAM heat maps) with a "
        "run's best checkpoint, or with a bundle written by `export`",
    )
    p.add_argument("source", help="a run id, or the path of an exported bundle (.pt TorchScript, .onnx)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    p.add_argument(
        "--cam", action="store_true", help="Grad-CAM heat maps of the top-k classes (PNG, base64, in --json)"
    )
    p.add_argument("--cam-class", action="append", default=[], metavar="CLASS", help="also a heat map for CLASS")
    p.add_argument("--cam-dir", default=None, help="write each heat map as <image>.<class>.png into this folder")
    p.add_argument("--job", help=argparse.SUPPRESS)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="the run's best checkpoint as one TorchScript or ONNX file "
        "with its classes and preprocessing, checked against the PyTorch model on the validation images",
    )
    p.add_argument("run_id", type=int)
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument(
        "--out", default=None, help="the bundle's path (default: <run folder>/export/run<ID>-<backbone>.pt|.onnx)"
    )
    p.add_argument(
        "--tolerance", type=float, default=None, help="largest probability difference allowed (default 1e-3)"
    )
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
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="runs at once (default $TL_MAX_CONCURRENT, "
        "else as many as the GPUs' memory holds, placed by placement.py; one on CPU)",
    )
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the queue")
    p.add_argument(
        "--stop",
        action="store_true",
        help="stop this database's workers on this machine instead: "
        "their runs stop at their next batch and continue from their checkpoints on the next start",
    )
    p.add_argument(
        "--health",
        action="store_true",
        help="exit 1 unless a worker of this database on this machine "
        "heartbeated within TL_WORKER_TIMEOUT_S (a container's health check)",
    )

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="the dashboard and its worker (what `make start` runs): the "
        "worker restarted if it dies, both stopped by Ctrl-C",
    )
    p.add_argument("--host", default="127.0.0.1", help="the dashboard's address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8501, help="the dashboard's port (default 8501)")
    p.add_argument("--no-dashboard", action="store_true", help="the worker only, restarted if it dies")
    p.add_argument("--max-concurrent", type=int, default=None, help="the worker's runs at once")

    p = sub.add_parser("train-run", parents=[common], help=argparse.SUPPRESS)  # what the worker starts
    p.add_argument("run_id", type=int, nargs="?")
    p.add_argument(
        "--standby",
        action="store_true",
        help="import everything, then read the run id (and the GPU the run is placed on) from stdin",
    )

    p = sub.add_parser(
        "backbones",
        parents=[common],
        help="registered backbones, sizes and weight availability; timm's pretrained models (--backbone timm/<name>)",
    )
    p.add_argument(
        "--search",
        default="",
        metavar="TEXT",
        help="list the timm models whose name holds every word of TEXT, with their parameters",
    )
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


def _config(args) -> RunConfig:
    return make_config(**{k: v for k, v in vars(args).items() if k in RunConfig.model_fields})
