"""Results: one run in full, runs as table rows (comparisons: compare.py); a run's files (log, checkpoints).

Epochs are counted from 1 in everything returned here (the store keeps the loop's 0-based index).
"""

from __future__ import annotations

import codecs
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..store import FINISHED, STATUSES, Run, RunSummary, Store
from ..store.run_folders import run_folder
from .readings import DRIFT, Metrics, drift_groups

# A reading order for tables: the task's losses and accuracies, the target domain's, the loss's other
# terms (the regulariser's penalty and share, the domain discriminator's), what trained, then speed.
EPOCH_KEYS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_macro_f1",
    "val_balanced_acc",
    "val_top5",
    "target_loss",
    "target_acc",
    "reg_penalty",
    "reg_share",
    "domain_loss",
    "domain_acc",
    "trainable_groups",
    "trainable_params",
    "trainable_share",
    "epoch_seconds",
    "images_per_sec",
    "peak_memory_mb",
    "wall_seconds",
)
LOG_GRACE_S = 1.0  # log_text(follow=True) reads once more this long after the run ended


def run_row(r: Run) -> dict:
    """A run as a line of the runs table: who launched it, and the executor and host that ran it
    (None until a worker took it)."""
    return {
        "id": r.id,
        "experiment": r.experiment,
        "name": r.name,
        "backbone": r.config.get("backbone"),
        "strategy": r.config.get("strategy"),
        "seed": r.config.get("seed"),
        "status": r.status,
        "epochs_done": r.epochs_done,
        "epochs": r.epochs,
        "best_val_acc": r.best_val_acc,
        "test_acc": r.test_acc,
        "duration_s": r.duration_s,
        "launched_by": r.launched_by,
        "executor": r.executor,
        "host": r.host,
    }


def ray_node(run: Run) -> str | None:
    """The Ray node that trained a run, when a Ray executor recorded one."""
    return run.environment.get("ray_node_id")


def run_details(store: Store, run_id: int) -> dict:
    """Everything about one run: its record, every epoch's metrics, each layer group's drift and
    its per-class results."""
    run = store.get_run(run_id)
    epochs = store.epoch_metrics([run.id])[run.id]
    return {
        **run.to_dict(),
        "ray_node_id": ray_node(run),
        "epochs": [{"epoch": e + 1, **m} for e, m in epochs.items()],
        "group_drift": drift_by_group(run, epochs),
        "class_metrics": [c.__dict__ for c in store.class_metrics(run.id)],
    }


def drift_by_group(run: Run, epochs: Mapping[int, Mapping[str, float]]) -> dict[str, list[float | None]]:
    """{group: its drift at each epoch (epoch 1 first; None where not recorded)}; {} if none was."""
    order = sorted(epochs)
    return {g: [epochs[e].get(DRIFT + g) for e in order] for g in drift_groups(run, epochs)}


def group_drift(store: Store, run_id: int) -> dict[str, list[float | None]]:
    """How far each layer group of a run moved from where it started, epoch by epoch: the relative
    change ||w - w0|| / ||w0|| (0.0 for a group that stayed frozen), groups stem first."""
    return drift_by_group(store.get_run(run_id), store.epoch_metrics([run_id])[run_id])


def skipped_files(summary: RunSummary) -> list[dict]:
    """Files a run left out, as rows of a table ({"path", "reason"}): those its scan refused, then
    those that failed to decode."""
    refused = summary.skipped.files if summary.skipped else []
    return [
        *({"path": f.path, "reason": f.reason} for f in refused),
        *({"path": p, "reason": "unreadable when decoded"} for p in summary.unreadable),
    ]


def summarize(run: Run, epochs: Mapping[int, Mapping[str, float]]) -> dict:
    """The comparison row of one run."""
    last = epochs[max(epochs)] if epochs else {}
    ips = [m["images_per_sec"] for m in epochs.values() if "images_per_sec" in m]
    return {
        "id": run.id,
        "name": run.name,
        "strategy": run.config.get("strategy"),
        "backbone": run.config.get("backbone"),
        "status": run.status,
        "best_val_acc": run.best_val_acc,
        "best_epoch": run.best_epoch_number,
        "final_val_acc": last.get("val_acc"),
        "test_acc": run.test_acc,
        "epochs": len(epochs),
        "total_seconds": last.get("wall_seconds"),
        "trainable_params": last.get("trainable_params"),
        "trainable_share": last.get("trainable_share"),
        "images_per_sec": sum(ips) / len(ips) if ips else None,
    }


def time_to_accuracy(epochs: Mapping[int, Mapping[str, float]], target: float) -> float | None:
    """Wall-clock seconds until val_acc first reached `target`; None if it never did."""
    for m in epochs.values():
        if m.get("val_acc", -1) >= target:
            return m.get("wall_seconds")
    return None


def summary_rows(runs: list[Run], metrics: Metrics, target_acc: float) -> list[dict]:
    """Comparison rows with each run's seed and its time to `target_acc`."""
    return [
        {
            **summarize(r, metrics.get(r.id, {})),
            "seed": r.config.get("seed"),
            "time_to_target_s": time_to_accuracy(metrics.get(r.id, {}), target_acc),
        }
        for r in runs
    ]


def metric_rows(runs: list[Run], metrics: Metrics) -> list[dict]:
    """Every epoch of every run as one flat row (epoch 1-based), for tables and CSV.

    Keys come in a reading order: losses and accuracies, the loss's other terms, the strategy's
    trainable groups, then speed, then each layer group's LR, each group's drift (stem first), then
    anything newer.
    """
    rows = []
    for r in runs:
        epochs = metrics.get(r.id, {})
        drift = [DRIFT + g for g in drift_groups(r, epochs)]
        for e, m in epochs.items():
            known = {k: m[k] for k in EPOCH_KEYS if k in m}
            lrs = {k: m[k] for k in sorted(m) if k.startswith("lr/")}
            drifts = {k: m[k] for k in drift if k in m}
            rest = {k: v for k, v in m.items() if k not in known and k not in lrs and k not in drifts}
            rows.append(
                {
                    "run_id": r.id,
                    "name": r.name,
                    "strategy": r.config.get("strategy"),
                    "epoch": e + 1,
                    **known,
                    **lrs,
                    **drifts,
                    **rest,
                }
            )
    return rows


def eta_seconds(run: Run, epochs: int | None = None) -> float | None:
    """Seconds left for a running run, from its pace so far; None when unknown."""
    epochs = epochs or run.epochs
    if run.status != "running" or not run.epochs_done or run.duration_s is None:
        return None
    return run.duration_s / run.epochs_done * max(0, epochs - run.epochs_done)


def status_counts(runs: list[Run]) -> dict[str, int]:
    return {s: sum(r.status == s for r in runs) for s in STATUSES}


def log_tail(run: Run, lines: int = 50) -> str:
    path = run_folder(run) / "train.log"
    if not path.is_file():
        return ""
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def log_text(
    store: Store, run_id: int, follow: bool = False, tail: int | None = None, poll_s: float = 0.5
) -> Iterator[str]:
    """A run's train.log as it is (its last `tail` lines), then, with `follow`, what the run writes
    to it after, until the run ends (completed, failed or cancelled; a run stopped with its worker
    goes back to the queue and is followed on) and its process has had a moment to write its last
    line. Text as it comes, not cut into lines."""
    offset, decode = 0, codecs.getincrementaldecoder("utf-8")(errors="replace")
    ended_at: float | None = None
    while True:
        run = store.get_run(run_id)
        if run.status in FINISHED and ended_at is None:
            ended_at = time.monotonic()
        path = run_folder(run) / "train.log"
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            text = decode.decode(chunk)
            if tail is not None:  # the first read only
                text, tail = "".join(text.splitlines(keepends=True)[-tail:] if tail else []), None
            if text:
                yield text
        # Once ended, one more read a second later: the process logs its end after recording it.
        if not follow or (ended_at is not None and time.monotonic() - ended_at >= LOG_GRACE_S):
            return
        time.sleep(poll_s)


def checkpoint(run: Run, which: str = "best") -> Path | None:
    path = run_folder(run) / f"{which}.pt"
    return path if path.is_file() else None
