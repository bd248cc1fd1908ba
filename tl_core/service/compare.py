"""Comparisons: what differs between runs, runs grouped by it, and what the numbers say.

A comparison reads every run through one choice, `which`: "best" (each run's best epoch, by val
accuracy) or "last" (its final epoch), so tables, charts and statistics always agree.
Groups: runs that differ only by their seed are one group (a strategy at one train fraction and
one LR, say); its seeds give the spread. Statistics pair the seeds of two groups in the same
cell of a grid (everything equal but the strategy): the experiment's runs share one split, so a
seed-paired difference leaves out the variance both strategies share (stats.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .. import stats
from ..metrics import class_metrics
from ..store import ClassMetric, Run, Store

Metrics = dict[int, dict[int, dict[str, float]]]  # {run id: {epoch index: {key: value}}}
WHICH = ("best", "last")
# Settings that name, file or seed a run: never what a comparison groups by.
NOT_COMPARED = ("name", "experiment", "seed", "workers", "device")


def value(run: Run, epochs: dict[int, dict[str, float]], which: str = "best", key: str = "val_acc") -> float | None:
    """A run's `key` at its best epoch (by val accuracy) or its last."""
    if not epochs:
        return run.best_val_acc if which == "best" and key == "val_acc" else None
    if which == "last":
        return epochs[max(epochs)].get(key)
    if key == "val_acc" and run.best_val_acc is not None:
        return run.best_val_acc
    best = max(epochs, key=lambda e: (epochs[e].get("val_acc", -1), -e))
    return epochs[best].get(key)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config settings that take more than one value across `runs` (in the config's order)."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.config if k not in keys and k not in NOT_COMPARED]
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def config_table(runs: Sequence[Run], differs_only: bool = True) -> list[dict]:
    """One row per run with its settings: all of them, or only those that differ between the runs."""
    keys = differing_keys(runs) if differs_only else [k for k in dict.fromkeys(k for r in runs for k in r.config)
                                                       if k not in NOT_COMPARED]
    return [{"run": r.name, "seed": r.config.get("seed"), **{k: r.config.get(k) for k in keys}} for r in runs]


@dataclass
class Group:
    """Runs equal in every compared setting but their seed."""

    label: str
    settings: dict  # the differing settings' values this group has
    runs: list[Run] = field(default_factory=list)


def group_runs(runs: Sequence[Run], keys: Sequence[str] | None = None) -> list[Group]:
    """Runs grouped by the settings in `keys` (default: those that differ), in first-seen order."""
    keys = list(differing_keys(runs) if keys is None else keys)
    groups: dict[tuple, Group] = {}
    for r in runs:
        settings = {k: r.config.get(k) for k in keys}
        key = tuple(repr(v) for v in settings.values())
        if key not in groups:
            groups[key] = Group(_label(settings) or "all runs", settings)
        groups[key].runs.append(r)
    return list(groups.values())


def _label(settings: dict) -> str:
    parts = []
    for k, v in settings.items():
        if k == "strategy":
            parts.insert(0, str(v))
        elif k == "train_fraction":
            parts.append(f"{v:g} of the data")
        elif k == "lr":
            parts.append("default LR" if v is None else f"LR {v:g}")
        else:
            parts.append(f"{k} {v}")
    return " · ".join(parts)


def statistics(runs: Sequence[Run], metrics: Metrics, which: str = "best", confidence: float = 0.95,
               n_resamples: int = 2000) -> list[dict]:
    """For each cell of the grid (everything equal but strategy and seed), every pair of strategies'
    seed-paired difference in val accuracy, with its bootstrap CI and a plain verdict."""
    cells: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    other = [k for k in differing_keys(runs) if k != "strategy"]
    where: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: r.id):  # strategies in the order they were launched
        v = value(r, metrics.get(r.id, {}), which)
        if v is None or r.status != "completed":
            continue
        cell = tuple(repr(r.config.get(k)) for k in other)
        where[cell] = {k: r.config.get(k) for k in other}
        cells[cell][r.config.get("strategy", r.name)][int(r.config.get("seed", 0))] = v
    out = []
    for cell, groups in cells.items():
        if len(groups) < 2:
            continue
        # 2,000 resamples pin a 95% percentile interval to about a tenth of a point, and keep a
        # grid's hundreds of pairs quick (each pair is its own bootstrap).
        for d in stats.pairwise(groups, confidence=confidence, n_resamples=n_resamples):
            out.append({"cell": where[cell], **d.to_dict()})
    return out


def weakest_pairs(differences: Iterable[dict]) -> list[dict]:
    """The pairs whose difference is not yet told from noise (they need more seeds)."""
    return [d for d in differences if d["verdict"] in ("noise", "too_few")]


@dataclass
class Point:
    images_per_class: float
    mean: float
    std: float
    n: int


def data_efficiency(runs: Sequence[Run], metrics: Metrics, which: str = "best",
                    keys: Sequence[str] | None = None) -> dict:
    """Val accuracy against training images per class, one curve per group of runs equal in `keys`
    (default: every setting that differs but the train fraction), mean and spread over the rest
    (seeds, and settings left out of `keys`) at each point; and where the best curve changes."""
    keys = [k for k in (differing_keys(runs) if keys is None else keys) if k != "train_fraction"]
    curves: dict[str, list[Point]] = {}
    for g in group_runs(runs, keys):
        by_x: dict[float, list[float]] = defaultdict(list)
        for r in g.runs:
            v, x = value(r, metrics.get(r.id, {}), which), images_per_class(r)
            if v is not None and x and r.status == "completed":
                by_x[x].append(v)
        points = []
        for x in sorted(by_x):
            mean, std = stats.mean_std(by_x[x])
            points.append(Point(x, mean, std, len(by_x[x])))
        if points:
            curves[g.label] = points
    return {"curves": {name: [p.__dict__ for p in pts] for name, pts in curves.items()},
            "crossovers": [c.to_dict() for c in leader_changes(curves)]}


def leader_changes(curves: dict[str, list[Point]]) -> list[stats.Crossover]:
    """Where the best group changes as the data grows: the crossings that answer "which strategy
    for how much data" (every pair's crossings would be hundreds in a big grid, most of them
    between curves nobody would pick)."""
    xs = sorted({p.images_per_class for pts in curves.values() for p in pts})
    means = {name: {p.images_per_class: p.mean for p in pts} for name, pts in curves.items()}
    leaders = [max((n for n in means if x in means[n]), key=lambda n: means[n][x]) for x in xs]
    out: list[stats.Crossover] = []
    for (x0, a), (x1, b) in zip(zip(xs, leaders), zip(xs[1:], leaders[1:])):
        if a != b:
            pair = {n: [(x, means[n][x]) for x in (x0, x1) if x in means[n]] for n in (a, b)}
            out += stats.crossovers(pair)
    return out


def images_per_class(run: Run) -> float | None:
    """Training images per class the run trained on (from its summary)."""
    n, classes = run.summary.get("train_images"), run.summary.get("classes")
    return round(n / len(classes), 1) if n and classes else None


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """An exponential moving average (TensorBoard's smoothing, debiased), for noisy curves."""
    if weight <= 0 or not values:
        return list(values)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def drift_profiles(rows: Sequence[tuple[str, Sequence[Run]]], metrics: Metrics, which: str = "best") -> dict:
    """How far each layer group moved, per row of a comparison (a run, or a group of seeds): each
    group's drift at each run's best or last epoch, the mean and spread over the row's runs.

    {"groups": every group in stem-to-head order, "profiles": [{"label", "run_ids", "n",
    "drift": {group: mean}, "std": {group: std}}]}; rows without any drift recorded are left out.
    """
    from .results import drift_groups

    order: list[str] = []
    profiles = []
    for label, members in rows:
        per_group: dict[str, list[float]] = defaultdict(list)
        for r in members:
            epochs = metrics.get(r.id, {})
            for g in drift_groups(r, epochs):
                if (v := value(r, epochs, which, f"drift/{g}")) is not None:
                    per_group[g].append(v)
                    if g not in order:
                        order.append(g)
        if per_group:
            spread = {g: stats.mean_std(vs) for g, vs in per_group.items()}
            profiles.append({"label": label, "run_ids": [r.id for r in members], "n": len(members),
                             "drift": {g: m for g, (m, _) in spread.items()},
                             "std": {g: s for g, (_, s) in spread.items()}})
    if "head" in order:  # runs of several backbones: their groups side by side, the new head last
        order = [g for g in order if g != "head"] + ["head"]
    return {"groups": order, "profiles": profiles}


def forgetting_points(runs: Sequence[Run], metrics: Metrics, which: str = "best") -> dict:
    """Forgetting against accuracy on the new task: per run that measured it, the share of its
    pretrained (ImageNet) predictions the fine-tuned body kept, beside its val accuracy (and the
    target domain's accuracy where recorded) at its best or last epoch; and why the others did not.
    """
    points, skipped = [], []
    for r in runs:
        kept = r.summary.get("forgetting") or {}
        if "skipped" in kept:
            skipped.append({"id": r.id, "name": r.name, "reason": kept["skipped"]})
        elif kept.get("agreement") is not None:
            epochs = metrics.get(r.id, {})
            points.append({"id": r.id, "name": r.name, "strategy": r.config.get("strategy"),
                           "knowledge_kept": kept["agreement"], "images": kept.get("images"),
                           "val_acc": value(r, epochs, which), "target_acc": value(r, epochs, which, "target_acc")})
    return {"points": points, "skipped": skipped}


def class_rows(store: Store, run: Run, which: str = "best") -> list[ClassMetric]:
    """A run's per-class results at its best epoch, or its last (runs recorded before the last
    epoch's confusion was kept give their best)."""
    if which == "last" and (confusion := run.summary.get("last_confusion")) and run.summary.get("classes"):
        return class_metrics(confusion, run.summary["classes"])
    return store.class_metrics(run.id)
