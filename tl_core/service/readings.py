"""Reading a run's numbers: which epoch, which split, which metric; the layer groups it recorded drift for.

A comparison reads every run through one choice, `which`: "best" (each run's best epoch, by val
accuracy) or "last" (its final epoch), so tables, charts and statistics always agree. What it
reads is `score(run, epochs, which, metric, split)`: accuracy, macro-F1 or balanced accuracy, on
the test split (measured once, with the checkpoint chosen on validation) or on validation. Test
is used when every completed run has it (`resolve_split`); choosing (the best epoch, the best LR)
always reads validation, so the test numbers are never used to pick what they report.
Every other service module that reads a run's numbers reads them through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import UserError
from ..store.store import Run

Metrics = dict[int, dict[int, Mapping[str, float]]]  # {run id: {epoch index: {key: value}}}
WHICH = ("best", "last")
METRICS = {"acc": "accuracy", "macro_f1": "macro-F1", "balanced_acc": "balanced accuracy"}
SPLITS = ("test", "val")
DRIFT = "drift/"  # drift/<group>: ||w - w0|| / ||w0|| of the group's parameters since training began


def value(
    run: Run, epochs: Mapping[int, Mapping[str, float]], which: str = "best", key: str = "val_acc"
) -> float | None:
    """A run's `key` at its best epoch (by val accuracy) or its last."""
    if not epochs:
        return run.best_val_acc if which == "best" and key == "val_acc" else None
    if which == "last":
        return epochs[max(epochs)].get(key)
    if key == "val_acc" and run.best_val_acc is not None:
        return run.best_val_acc
    best = max(epochs, key=lambda e: (epochs[e].get("val_acc", -1), -e))
    return epochs[best].get(key)


def score(
    run: Run, epochs: Mapping[int, Mapping[str, float]], which: str = "best", metric: str = "acc", split: str = "val"
) -> float | None:
    """A run's `metric` (acc, macro_f1, balanced_acc) on `split` at its best epoch (chosen on val) or its last.

    Test numbers come from the run's summary: "test" was measured with the best epoch's checkpoint,
    "test_last" with the last epoch's model (absent when the last epoch is the best: then "test",
    if its epoch is the last). None where the run did not measure it.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: choose one of {list(METRICS)}")
    if split == "val":
        return value(run, epochs, which, f"val_{metric}")
    if split != "test":
        raise ValueError(f"split {split!r}: choose one of {SPLITS}")
    test, last = run.summary.test, run.summary.test_last
    if which == "best":
        return getattr(test, metric) if test else None
    if last:
        return getattr(last, metric)
    epochs_done = max(epochs) + 1 if epochs else run.epochs_done
    return getattr(test, metric) if test and test.epoch == epochs_done else None


def has_test(runs: Sequence[Run]) -> bool:
    """Whether every completed run (and at least one) measured the test split."""
    done = [r for r in runs if r.status == "completed"]
    return bool(done) and all(r.summary.test for r in done)


def resolve_split(runs: Sequence[Run], split: str = "auto") -> str:
    """ "auto": test when every completed run has test metrics, else val; "test" refused without them."""
    if split == "auto":
        return "test" if has_test(runs) else "val"
    if split not in SPLITS:
        raise UserError(f"split {split!r}: choose test, val or auto")
    if split == "test" and not has_test(runs):
        missing = [r.id for r in runs if r.status == "completed" and not r.summary.test]
        raise UserError(
            f"runs {missing or 'compared'} have no test metrics (trained without a test split, or not "
            f"completed): compare on validation (--split val), or leave them out"
        )
    return split


def describe(metric: str = "acc", split: str = "val", which: str = "best", short: bool = False) -> str:
    """What a comparison shows, in words: "test accuracy (checkpoint chosen on validation)"."""
    what = f"{split} {METRICS[metric]}"
    if short:
        return what
    if split == "test":
        return what + (
            " (each run's checkpoint chosen on validation)" if which == "best" else " (each run's last epoch)"
        )
    return what + f" ({which} epoch)"


def split_seed(run: Run) -> int:
    """The seed of a run's train/val split (a run recorded before --split-seed split by its --seed)."""
    return int(run.config.get("split_seed", run.config.get("seed", 0)))


def images_per_class(run: Run) -> float | None:
    """Training images per class the run trained on (from its summary)."""
    n, classes = run.summary.train_images, run.summary.classes
    return round(n / len(classes), 1) if n and classes else None


def drift_groups(run: Run, epochs: Mapping[int, Mapping[str, float]]) -> list[str]:
    """The layer groups a run recorded drift for: in the run's order (stem first, head last), then
    any the summary does not name."""
    recorded = {k[len(DRIFT) :] for m in epochs.values() for k in m if k.startswith(DRIFT)}
    ordered = [g for g in run.summary.groups if g in recorded]
    return ordered + sorted(recorded - set(ordered))
