"""Comparisons: whether the differences between runs are real, and what else sets them apart.

Statistics pair the runs of two groups in the same cell of a grid (everything equal but the
strategy, grouping.py) by (split seed, seed), and test the family of pairs with Holm's correction
(analysis/stats.py); `to_settle` says how many more seeds would tell a pair apart. Beside them:
data efficiency (the score against training images per class, and where the leader changes), each
layer group's drift and the knowledge kept (forgetting) side by side, per-class results, and
`compare_runs` / `experiment_report`, the whole comparison in one answer (the CLI's; with, after an
experiment over backbones, how well the ranking before it predicted them: measure.ranking_agreement). Each run is
read as readings.py says (`which` epoch, `metric`, `split`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..analysis import crossovers, stats
from ..analysis.metrics import class_metrics
from ..store import ClassMetric, Run, Store
from .grouping import at_best_lr, differing_keys, group_runs, lr_choices, lr_text
from .measure import probe_verdict, ranking_agreement
from .readings import Metrics, describe, drift_groups, images_per_class, resolve_split, score, split_seed, value
from .results import summarize

FAMILIES = ("all", "cell")  # Holm over every pair shown, or over each cell's pairs
SEEDS_OFFERED = 20  # "add seeds" offers at most this many seeds (or splits) per group, in all


def statistics(
    runs: Sequence[Run],
    metrics: Metrics,
    which: str = "best",
    confidence: float = 0.95,
    *,
    metric: str = "acc",
    split: str = "val",
    family: str = "all",
    best_lr: bool = False,
) -> list[dict]:
    """For each cell of the grid (everything equal but strategy, seed and split seed), every pair of
    strategies' paired difference in `metric` on `split`: its t-interval and a plain verdict, Holm-
    corrected over every pair shown (`family="all"`) or over each cell's pairs ("cell"). Runs of one
    strategy on several backbones (an experiment over backbones) pair their backbones instead
    (`compared_axis`).

    `best_lr`: each strategy at its best LR in each cell (chosen on validation, `lr_choices`), the LR
    beside its name. Each dict: the cell, the Difference, the two strategies and their LRs, the ids
    of the runs behind it, what was compared.
    """
    split = resolve_split(runs, split)
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: choose one of {FAMILIES}")
    if best_lr:
        runs = at_best_lr(runs, metrics, which, metric)
    axis = compared_axis(differing_keys(runs))
    other = [k for k in differing_keys(runs) if k not in (axis, "lr") or (k == "lr" and not best_lr)]
    cells: dict[tuple, dict[str, dict[tuple[int, int], float]]] = defaultdict(lambda: defaultdict(dict))
    members: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    where: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: r.id):  # strategies in the order they were launched
        v = score(r, metrics.get(r.id, {}), which, metric, split)
        if v is None or r.status != "completed":
            continue
        cell = tuple(repr(r.config.get(k)) for k in other)
        where[cell] = {k: r.config.get(k) for k in other}
        name = str(r.config.get(axis, r.name))
        if best_lr:
            name += f" ({lr_text(r.config.get('lr'))})"
        cells[cell][name][(split_seed(r), int(r.config.get("seed", 0)))] = v
        members[cell][name].append(r)
    pairs = [
        (cell, na, nb) for cell, groups in cells.items() for i, na in enumerate(groups) for nb in list(groups)[i + 1 :]
    ]
    what = describe(metric, split, which, short=True)
    scopes = [pairs] if family == "all" else [[p for p in pairs if p[0] == cell] for cell in cells]
    out = []
    for scope in scopes:
        diffs = stats.family(
            [(na, cells[c][na], nb, cells[c][nb]) for c, na, nb in scope], confidence=confidence, what=what
        )
        for (cell, na, nb), d in zip(scope, diffs):
            ra, rb = members[cell][na], members[cell][nb]
            out.append(
                {
                    "cell": where[cell],
                    **d.to_dict(),
                    "compared": axis,
                    "strategy_a": ra[0].config.get("strategy"),
                    "strategy_b": rb[0].config.get("strategy"),
                    "lr_a": ra[0].config.get("lr"),
                    "lr_b": rb[0].config.get("lr"),
                    "run_ids": [r.id for r in ra + rb],
                    "metric": metric,
                    "split": split,
                    "which": which,
                    "scope": family,
                    "best_lr": best_lr,
                }
            )
    return out


def compared_axis(differing: Sequence[str]) -> str:
    """What a comparison's pairs differ in: the strategy, or where every run has one strategy and the
    backbones differ (an experiment over backbones), the backbone."""
    return "backbone" if "strategy" not in differing and "backbone" in differing else "strategy"


def settling_plan(runs: Sequence[Run], differences: Iterable[dict]) -> list[tuple[list[Run], str, int]]:
    """What "add seeds" queues for these pairs: (a group's runs, "seed" or "split", how many to add)
    per group of runs equal but for seed and split seed, the most any of its pairs asks (`to_settle`)."""
    by_id = {r.id: r for r in runs}
    plan: dict[tuple, tuple[list[Run], str, int]] = {}
    for d in differences:
        if not (settle := to_settle(d)):
            continue
        for r in (by_id[i] for i in d["run_ids"] if i in by_id):
            key = (
                repr(sorted((k, v) for k, v in r.config.items() if k not in ("seed", "split_seed", "name"))),
                settle["unit"],
            )
            members, unit, add = plan.get(key, ([], settle["unit"], 0))
            plan[key] = (members + [r] if r not in members else members, unit, max(add, settle["add"]))
    return list(plan.values())


def weakest_pairs(differences: Iterable[dict]) -> list[dict]:
    """The pairs whose difference is not yet told from noise (they need more seeds)."""
    return [d for d in differences if d["verdict"] in ("noise", "too_few")]


def to_settle(d: dict, most: int = SEEDS_OFFERED) -> dict | None:
    """What would settle a pair not yet told apart: how many more seeds (or splits, when the split is
    the unit) to add to each of its groups, at most up to `most` in all, and why. None when nothing
    can: a verdict already, identical runs, or `most` already reached.

    {"unit": "seed"|"split", "add": n, "needed": units for 80% power or None, "capped": bool, "text"}
    """
    if d["verdict"] not in ("noise", "too_few") or d["test"] == "identical":
        return None
    have, needed = d["n_units"], d["units_needed"]
    if d["test"] == "none":  # fewer than 2 paired runs: no spread to plan from, 2 pairs at least
        add = max(1, 2 - d["n_pairs"])
        text = f"add {add} seed{'s' * (add != 1)}: a test needs 2 paired seeds"
        return {"unit": "seed", "add": add, "needed": None, "capped": False, "text": text}
    if needed is not None and needed <= most:
        add, capped = needed - have, False
    else:
        add, capped = most - have, True
    if add < 1:
        return None
    unit = d["unit"]
    about = (
        f"about {needed} {unit}s would tell a difference of the observed size"
        if needed
        else f"a difference of the observed size would take more than {stats.MOST_UNITS} {unit}s"
    )
    text = about + (f"; {most} {unit}s in all is the most offered" if capped else "")
    return {"unit": unit, "add": add, "needed": needed, "capped": capped, "text": text}


@dataclass
class Point:
    images_per_class: float
    mean: float
    std: float
    n: int


def data_efficiency(
    runs: Sequence[Run],
    metrics: Metrics,
    which: str = "best",
    keys: Sequence[str] | None = None,
    metric: str = "acc",
    split: str = "val",
) -> dict:
    """`metric` on `split` against training images per class, one curve per group of runs equal in `keys`
    (default: every setting that differs but the train fraction), mean and spread over the rest
    (seeds, and settings left out of `keys`) at each point; and where the best curve changes."""
    keys = [k for k in (differing_keys(runs) if keys is None else keys) if k != "train_fraction"]
    curves: dict[str, list[Point]] = {}
    for g in group_runs(runs, keys):
        by_x: dict[float, list[float]] = defaultdict(list)
        for r in g.runs:
            v, x = score(r, metrics.get(r.id, {}), which, metric, split), images_per_class(r)
            if v is not None and x and r.status == "completed":
                by_x[x].append(v)
        points = []
        for x in sorted(by_x):
            mean, std = crossovers.mean_std(by_x[x])
            points.append(Point(x, mean, std, len(by_x[x])))
        if points:
            curves[g.label] = points
    return {
        "curves": {name: [p.__dict__ for p in pts] for name, pts in curves.items()},
        "crossovers": [c.to_dict() for c in leader_changes(curves)],
    }


def leader_changes(curves: dict[str, list[Point]]) -> list[crossovers.Crossover]:
    """Where the best group changes as the data grows: the crossings that answer "which strategy
    for how much data" (every pair's crossings would be hundreds in a big grid, most of them
    between curves nobody would pick)."""
    xs = sorted({p.images_per_class for pts in curves.values() for p in pts})
    means = {name: {p.images_per_class: p.mean for p in pts} for name, pts in curves.items()}
    leaders = [max((n for n in means if x in means[n]), key=lambda n: means[n][x]) for x in xs]
    out: list[crossovers.Crossover] = []
    for (x0, a), (x1, b) in zip(zip(xs, leaders), zip(xs[1:], leaders[1:])):
        if a != b:
            pair = {n: [(x, means[n][x]) for x in (x0, x1) if x in means[n]] for n in (a, b)}
            out += crossovers.crossovers(pair)
    return out


def drift_profiles(rows: Sequence[tuple[str, Sequence[Run]]], metrics: Metrics, which: str = "best") -> dict:
    """How far each layer group moved, per row of a comparison (a run, or a group of seeds): each
    group's drift at each run's best or last epoch, the mean and spread over the row's runs.

    {"groups": every group in stem-to-head order, "profiles": [{"label", "run_ids", "n",
    "drift": {group: mean}, "std": {group: std}}]}; rows without any drift recorded are left out.
    """
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
            spread = {g: crossovers.mean_std(vs) for g, vs in per_group.items()}
            profiles.append(
                {
                    "label": label,
                    "run_ids": [r.id for r in members],
                    "n": len(members),
                    "drift": {g: m for g, (m, _) in spread.items()},
                    "std": {g: s for g, (_, s) in spread.items()},
                }
            )
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
        kept = r.summary.forgetting
        if kept is None:
            continue
        if kept.skipped is not None:
            skipped.append({"id": r.id, "name": r.name, "reason": kept.skipped})
        elif kept.agreement is not None:
            epochs = metrics.get(r.id, {})
            points.append(
                {
                    "id": r.id,
                    "name": r.name,
                    "strategy": r.config.get("strategy"),
                    "knowledge_kept": kept.agreement,
                    "images": kept.images,
                    "val_acc": value(r, epochs, which),
                    "target_acc": value(r, epochs, which, "target_acc"),
                }
            )
    return {"points": points, "skipped": skipped}


def class_rows(store: Store, run: Run, which: str = "best", split: str = "val") -> list[ClassMetric]:
    """A run's per-class results at its best epoch, or its last (runs recorded before the last
    epoch's confusion was kept give their best), on validation or, where the run was scored on a
    test split, on test (the checkpoint chosen on validation, or the last epoch's model)."""
    if split == "test":
        test = (run.summary.test_last if which == "last" else None) or run.summary.test
        return list(test.classes) if test else []
    if which == "last" and (confusion := run.summary.last_confusion) and run.summary.classes:
        return class_metrics(confusion, run.summary.classes)
    return store.class_metrics(run.id)


def compare_runs(
    store: Store,
    run_ids: list[int],
    which: str = "best",
    metric: str = "acc",
    split: str = "auto",
    family: str = "all",
    best_lr: bool = False,
) -> dict:
    """These runs side by side (in the order given) and, where strategies were run with several
    seeds, whether their differences are real: each run read at its best epoch or its last, on
    test when every completed run measured it (`split="auto"`), else validation."""
    runs = [store.get_run(i) for i in run_ids]
    metrics = store.epoch_metrics(run_ids)
    split = resolve_split(runs, split)
    return {
        "which": which,
        "metric": metric,
        "split": split,
        "measure": describe(metric, split, which),
        "runs": [summarize(r, metrics[r.id]) for r in runs],
        "statistics": statistics(runs, metrics, which, metric=metric, split=split, family=family, best_lr=best_lr),
        **({"lr_choices": lr_choices(runs, metrics, which, metric)} if best_lr else {}),
    }


def experiment_report(
    store: Store,
    experiment: str,
    which: str = "best",
    metric: str = "acc",
    split: str = "auto",
    family: str = "all",
    best_lr: bool = False,
) -> dict:
    """An experiment's runs side by side, its statistics and its data-efficiency curves (on test when
    every completed run measured it, else validation)."""
    runs = sorted(store.list_runs(experiment), key=lambda r: r.id)
    metrics = store.epoch_metrics([r.id for r in runs])
    split = resolve_split(runs, split)
    curves = at_best_lr(runs, metrics, which, metric) if best_lr else runs
    keys = [k for k in differing_keys(curves) if not (best_lr and k == "lr")]
    return {
        "experiment": experiment,
        "which": which,
        "metric": metric,
        "split": split,
        "measure": describe(metric, split, which),
        "runs": [summarize(r, metrics[r.id]) for r in runs],
        "statistics": statistics(runs, metrics, which, metric=metric, split=split, family=family, best_lr=best_lr),
        "data_efficiency": data_efficiency(curves, metrics, which, keys, metric, split),
        **({"lr_choices": lr_choices(runs, metrics, which, metric)} if best_lr else {}),
        "probe": probe_verdict(store, experiment, which),
        "ranking": ranking_agreement(store, experiment, which, metric, split),
    }
