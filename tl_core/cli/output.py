"""Printing: one JSON object on stdout with --json, else text (`_out`); tables; a run trained here
(`_ended`). The names keep their leading underscore: they are the cli package's own."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from .. import service
from ..store import Run
from ..store.summary import RunSummary


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


def _test_lines(summary: RunSummary) -> list[str]:
    """A run's held-out test results (summary.test, summary.test_last) as `show` prints them."""
    lines = []
    for t, what in ((summary.test, "the epoch chosen on val"), (summary.test_last, "the last epoch")):
        if t:
            lines.append(
                f"test, {what} ({t.epoch}): acc {t.acc:.4f}, loss {t.loss:.4f}, macro-F1 "
                f"{t.macro_f1:.4f}, balanced acc {t.balanced_acc:.4f} on {t.images} images"
            )
    return lines


def _ended(args, run: Run) -> int:
    """Report a run trained here; exit 1 if it failed."""
    stored = run.summary.to_dict()  # its blocks as JSON prints them
    obj = {
        "run_id": run.id,
        "status": run.status,
        "best_val_acc": run.best_val_acc,
        "test_acc": run.test_acc,
        "best_epoch": run.best_epoch_number,
        "epochs": run.epochs_done,
        "error": run.error,
        "duration_s": run.duration_s,
        "run_dir": run.run_dir,
        "batch_size": stored.get("batch_size"),
        "warnings": run.summary.warnings,
        "skipped": stored.get("skipped"),
        "unreadable": run.summary.unreadable,
    }
    text = (
        f"run {run.id} {run.status}: best val acc {run.best_val_acc or 0:.4f} at epoch "
        f"{run.best_epoch_number} of {run.epochs_done}"
        if run.status == "completed"
        else f"run {run.id} {run.status}: {run.error}"
    )
    if run.test_acc is not None:
        assert run.summary.test is not None  # recorded with the test accuracy
        text += f"; test acc {run.test_acc:.4f} (that epoch, on {run.summary.test.images} held-out images)"
    if skipped := len(service.skipped_files(run.summary)):
        text += f"\n{skipped} files skipped (listed in `python -m tl_core show {run.id}`)"
    _out(args, obj, text)
    if run.status == "failed":
        print(f"error: run {run.id} failed: {run.error}", file=sys.stderr)
        return 1
    return 0
