"""What runs measured: `show` (one run), `compare` (runs side by side, with statistics), `errors`
(the images a run gets wrong, or fixed and broke against another), `logs` (a run's train.log)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from .. import service
from ..errors import UserError
from ..store.summary import Forgetting, RunSummary
from .commands import command
from .output import _out, _table, _test_lines


@command("show")
def cmd_show(args) -> int:
    run = service.run_details(service.open_store(args.db), args.run_id)
    recorded = {k for e in run["epochs"] for k in e}
    keys = [
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        *(k for k in ("target_acc", "reg_share", "domain_acc") if k in recorded),
        "trainable_groups",
        "epoch_seconds",
    ]
    summary = RunSummary.from_stored(run["summary"])
    forgetting = summary.forgetting or Forgetting()
    drift = ", ".join(f"{g} {vs[-1]:.4f}" for g, vs in run["group_drift"].items() if vs and vs[-1] is not None)
    text = "\n".join(
        [
            f"run {run['id']} {run['name']!r} [{run['experiment']}]: {run['status']}"
            + (f" ({run['error']})" if run["error"] else ""),
            "config: " + ", ".join(f"{k}={v}" for k, v in run["config"].items() if v is not None),
            f"launched by {run['launched_by'] or 'nobody recorded'}; ran on {run['host'] or '(not started)'}"
            + (f" by the {run['executor']} executor" if run["executor"] else "")
            + (f", Ray node {run['ray_node_id']}" if run["ray_node_id"] else ""),
            f"environment: {run['environment']}",
            _table(run["epochs"], ["epoch", *keys]) if run["epochs"] else "no epochs yet",
            *([f"drift at the last epoch (||w - w0|| / ||w0||, stem first): {drift}"] if drift else []),
            *(
                [
                    f"knowledge kept: {forgetting.agreement:.1%} of the pretrained model's ImageNet predictions "
                    f"on {forgetting.images} images"
                ]
                if forgetting.agreement is not None
                else []
            ),
            *([f"knowledge kept: not measured ({forgetting.skipped})"] if forgetting.skipped is not None else []),
            *_test_lines(summary),
            *[f"warning: {w}" for w in summary.warnings],
            *[f"skipped {f['path']} ({f['reason']})" for f in service.skipped_files(summary)],
        ]
    )
    _out(args, run, text)
    return 0


@command("compare")
def cmd_compare(args) -> int:
    report = service.compare_runs(
        service.open_store(args.db),
        args.run_ids,
        which=args.which,
        metric=args.metric,
        split=args.split,
        family=args.family,
        best_lr=args.best_lr,
    )
    cols = [
        "id",
        "strategy",
        "backbone",
        "status",
        "best_val_acc",
        "best_epoch",
        "final_val_acc",
        *(["test_acc"] if report["split"] == "test" else []),
        "epochs",
        "total_seconds",
        "trainable_params",
        "images_per_sec",
    ]
    chosen = [
        f"{c['strategy']}: {service.lr_text(c['lr'])} (val mean {c['val_mean']:.4f})"
        + (f" at {c['cell']}" if c["cell"] else "")
        for c in report.get("lr_choices", [])
    ]
    _out(
        args,
        report,
        "\n".join(
            [
                _table(report["runs"], cols),
                *chosen,
                *([f"compared: {report['measure']}"] if report["statistics"] else []),
                *(d["text"] for d in report["statistics"]),
            ]
        ),
    )
    return 0


@command("errors")
def cmd_errors(args) -> int:
    store = service.open_store(args.db)
    run = store.get_run(args.run_id)
    classes = run.summary.classes
    preds, best_at = service.run_predictions(store, run.id), run.summary.predictions
    if not preds or best_at is None:
        raise UserError(
            f"run {run.id} has no stored predictions: it has not finished an epoch (or was trained "
            f"before they were stored); train or resume it"
        )

    def row(p) -> dict:
        return {
            "path": p.path,
            "true": classes[p.label],
            "predicted": classes[p.pred],
            "prob": p.prob,
            "true_prob": p.true_prob,
            "loss": p.loss,
        }

    wrong = service.errors(preds)
    obj: dict[str, Any] = {
        "run_id": run.id,
        "epoch": best_at.epoch,
        "images": len(preds),
        "wrong": len(wrong),
        "errors": [row(p) for p in wrong[: args.limit]],
    }
    text = [
        f"run {run.id} at its best epoch {obj['epoch']}: {len(wrong)} of {len(preds)} validation images wrong",
        _table(obj["errors"], ["path", "true", "predicted", "prob", "loss"]) if wrong else "",
    ]
    if args.against is not None:
        d = service.diff(store, args.against, run.id)
        obj["against"] = {
            "reference": args.against,
            "fixed": [row(p) for p in d.fixed],
            "broken": [row(p) for p in d.broken],
            "still_wrong": [row(p) for p in d.still_wrong],
            "both_right": d.both_right,
            "shared": d.shared,
            "unmatched": d.unmatched,
            "confusion_delta": d.confusion_delta,
            "class_deltas": d.class_deltas,
        }
        text.append(
            f"against run {args.against} on {d.shared} shared images: {len(d.fixed)} fixed, {len(d.broken)} "
            f"broken, {len(d.still_wrong)} still wrong (net {d.net:+d})"
        )
        text += [
            f"  {c['class']}: {c['reference_acc']:.1%} -> {c['acc']:.1%} ({c['delta']:+.1%})" for c in d.class_deltas
        ]
    _out(args, obj, "\n".join(t for t in text if t))
    return 0


@command("logs")
def cmd_logs(args) -> int:
    if args.tail is not None and args.tail < 0:
        raise UserError("--tail must be 0 or more")
    store = service.open_store(args.db)
    text: list[str] = []
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow
        for chunk in service.log_text(store, args.run_id, args.follow, args.tail):
            text.append(chunk)
            if not args.json:
                sys.stdout.write(chunk)
                sys.stdout.flush()
    run = store.get_run(args.run_id)
    if args.json:
        print(json.dumps({"run_id": run.id, "status": run.status, "log": "".join(text)}))
    elif not (service.run_files_dir(run) / "train.log").is_file():
        print(
            f"run {run.id} has no log: a worker writes one for each run it trains (a run trained in the "
            f"foreground printed to its terminal)",
            file=sys.stderr,
        )
    return 0
