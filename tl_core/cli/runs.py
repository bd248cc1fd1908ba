"""Runs: `run` and `experiment` (trained here, or queued with --detach; with the dataset's exclusion
list as it is, or --exclude FILE), `resume`, `cancel`, and the table of runs (`runs`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import service
from ..config import RunConfig, make_config
from ..errors import UserError
from ..service import auth
from .commands import command
from .output import _ended, _out, _table


def _settings(args) -> dict:
    """The run settings given as flags (the rest take RunConfig's defaults)."""
    return {k: v for k, v in vars(args).items() if k in RunConfig.model_fields}


@command("run")
def cmd_run(args) -> int:
    store = service.open_store(args.db)
    cfg = make_config(**service.with_exclusions(store, _settings(args), args.exclude_file))
    service.check_run(cfg)
    for warning in cfg.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if args.detach:
        run = service.queue_run(store, cfg, auth.os_user())
        _out(args, {"run_id": run.id, "status": run.status}, f"queued run {run.id}")
        return 0
    run = service.start_here(store, cfg, auth.os_user())
    return _ended(args, service.train_here(store, run.id, progress=not args.no_progress))


@command("experiment")
def cmd_experiment(args) -> int:
    store = service.open_store(args.db)
    base = service.with_exclusions(store, _settings(args), args.exclude_file)
    if args.backbones and "backbone" in base:
        raise UserError("give --backbone (one) or --backbones (several, comma-separated), not both")
    if "experiment" not in base:  # a grid is its own experiment: named after its data and the time
        base["experiment"] = f"{Path(args.data).name}-{time.strftime('%m%d-%H%M%S')}"
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    configs = service.plan_runs(
        base, args.strategies, seeds, args.train_fractions, args.lrs, args.split_seeds, args.backbones
    )
    estimate = service.estimate_seconds(store, configs)
    for warning in dict.fromkeys(w for c in configs for w in c.warnings()):
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{len(configs)} runs in experiment {base['experiment']}; "
        + (
            f"about {estimate['seconds'] / 60:.1f} min ({estimate['basis']})"
            if estimate["seconds"]
            else f"no time estimate ({estimate['basis']})"
        ),
        file=sys.stderr,
    )
    if args.detach:
        runs = [service.queue_run(store, c, auth.os_user()) for c in configs]
        _out(
            args,
            {"experiment": base["experiment"], "run_ids": [r.id for r in runs], "estimate": estimate},
            f"queued runs {', '.join(str(r.id) for r in runs)} in experiment {base['experiment']}",
        )
        return 0
    ids, failed = [], 0
    for cfg in configs:
        run = service.train_here(
            store, service.start_here(store, cfg, auth.os_user()).id, progress=not args.no_progress
        )
        ids.append(run.id)
        failed += run.status == "failed"
    report = service.experiment_report(store, base["experiment"])
    _out(args, report, _experiment_text(report))
    return 1 if failed else 0


def _experiment_text(report: dict) -> str:
    backbones = ["backbone"] if len({r["backbone"] for r in report["runs"]}) > 1 else []  # an experiment over backbones
    cols = ["id", *backbones, "strategy", "status", "best_val_acc", "best_epoch", "final_val_acc", "total_seconds"]
    lines = [_table(report["runs"], cols)]
    lines += [f"compared: {report['measure']}"] if report["statistics"] else []
    lines += [d["text"] for d in report["statistics"]]
    lines += [c["text"] for c in report["data_efficiency"]["crossovers"]]
    lines += [f"the probe's recommendation: {report['probe']}"] if report.get("probe") else []
    if ranking := report.get("ranking"):
        lines += [f"the ranking before training: {row['text']}" for row in ranking["by_strategy"]]
    return "\n".join(lines)


@command("resume")
def cmd_resume(args) -> int:
    store = service.open_store(args.db)
    run = service.resume_run(store, args.run_id, here=not args.detach)
    if args.detach:
        _out(args, {"run_id": run.id, "status": run.status}, f"queued run {run.id} to resume")
        return 0
    return _ended(args, service.train_here(store, run.id, progress=not args.no_progress))


@command("cancel")
def cmd_cancel(args) -> int:
    run = service.cancel_run(service.open_store(args.db), args.run_id)
    _out(
        args,
        {"run_id": run.id, "status": run.status, "cancel_requested": True},
        f"run {run.id}: " + ("cancelled" if run.status == "cancelled" else "will stop at its next batch"),
    )
    return 0


@command("runs")
def cmd_runs(args) -> int:
    runs = service.open_store(args.db).list_runs(
        args.experiment, [args.status] if args.status else None, launched_by=args.launched_by
    )
    rows = [service.run_row(r) for r in runs]
    cols = [
        "id",
        "experiment",
        "name",
        "backbone",
        "strategy",
        "status",
        "epochs_done",
        "epochs",
        "best_val_acc",
        "test_acc",
        "duration_s",
        "launched_by",
    ]
    none = f"no runs launched by {' or '.join(args.launched_by)}" if args.launched_by else "no runs yet"
    _out(args, {"runs": rows}, _table(rows, cols) if rows else none)
    return 0
