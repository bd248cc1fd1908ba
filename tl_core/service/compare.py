"""Comparisons: what differs between runs, runs grouped by it, and what the numbers say.

A comparison reads every run through one choice, `which`: "best" (each run's best epoch, by val
accuracy) or "last" (its final epoch), so tables, charts and statistics always agree. What it
reads is `score(run, epochs, which, metric, split)`: accuracy, macro-F1 or balanced accuracy, on
the test split (measured once, with the checkpoint chosen on validation) or on validation. Test
is used when every completed run has it (`resolve_split`); choosing (the best epoch, the best LR)
always reads validation, so the test numbers are never used to pick what they report.
Groups: runs that differ only by their seed (and split seed) are one group (a strategy at one
train fraction and one LR, say); its seeds give the spread. Statistics pair the runs of two
groups in the same cell of a grid (everything equal but the strategy) by (split seed, seed), and
test the family of pairs with Holm's correction (stats.py).
"""

from __future__ import annotations

import statistics as pystats
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..analysis import stats
from ..errors import UserError
from ..analysis.metrics import class_metrics
from ..store import ClassMetric, Run, Store

Metrics = dict[int, dict[int, dict[str, float]]]  # {run id: {epoch index: {key: value}}}
WHICH = ("best", "last")
METRICS = {"acc": "accuracy", "macro_f1": "macro-F1", "balanced_acc": "balanced accuracy"}
SPLITS = ("test", "val")
FAMILIES = ("all", "cell")  # Holm over every pair shown, or over each cell's pairs
SEEDS_OFFERED = 20  # "add seeds" offers at most this many seeds (or splits) per group, in all
# Settings that name, file or seed a run: never what a comparison groups by. The split seed is a
# replicate like the seed: statistics pair by (split seed, seed), groups span both.
NOT_COMPARED = ("name", "experiment", "seed", "split_seed", "workers", "device")


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


def score(run: Run, epochs: dict[int, dict[str, float]], which: str = "best", metric: str = "acc",
          split: str = "val") -> float | None:
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
    """"auto": test when every completed run has test metrics, else val; "test" refused without them."""
    if split == "auto":
        return "test" if has_test(runs) else "val"
    if split not in SPLITS:
        raise UserError(f"split {split!r}: choose test, val or auto")
    if split == "test" and not has_test(runs):
        missing = [r.id for r in runs if r.status == "completed" and not r.summary.test]
        raise UserError(f"runs {missing or 'compared'} have no test metrics (trained without a test split, or not "
                        f"completed): compare on validation (--split val), or leave them out")
    return split


def describe(metric: str = "acc", split: str = "val", which: str = "best", short: bool = False) -> str:
    """What a comparison shows, in words: "test accuracy (checkpoint chosen on validation)"."""
    what = f"{split} {METRICS[metric]}"
    if short:
        return what
    if split == "test":
        return what + (" (each run's checkpoint chosen on validation)" if which == "best"
                       else " (each run's last epoch)")
    return what + f" ({which} epoch)"


def split_seed(run: Run) -> int:
    """The seed of a run's train/val split (a run recorded before --split-seed split by its --seed)."""
    return int(run.config.get("split_seed", run.config.get("seed", 0)))


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
    splits = len({split_seed(r) for r in runs}) > 1
    return [{"run": r.name, "seed": r.config.get("seed"), **({"split_seed": split_seed(r)} if splits else {}),
             **{k: r.config.get(k) for k in keys}} for r in runs]


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


def statistics(runs: Sequence[Run], metrics: Metrics, which: str = "best", confidence: float = 0.95, *,
               metric: str = "acc", split: str = "val", family: str = "all", best_lr: bool = False) -> list[dict]:
    """For each cell of the grid (everything equal but strategy, seed and split seed), every pair of
    strategies' paired difference in `metric` on `split`: its t-interval and a plain verdict, Holm-
    corrected over every pair shown (`family="all"`) or over each cell's pairs ("cell").

    `best_lr`: each strategy at its best LR in each cell (chosen on validation, `lr_choices`), the LR
    beside its name. Each dict: the cell, the Difference, the two strategies and their LRs, the ids
    of the runs behind it, what was compared.
    """
    split = resolve_split(runs, split)
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: choose one of {FAMILIES}")
    if best_lr:
        runs = at_best_lr(runs, metrics, which, metric)
    other = [k for k in differing_keys(runs) if k not in ("strategy", "lr") or (k == "lr" and not best_lr)]
    cells: dict[tuple, dict[str, dict[tuple[int, int], float]]] = defaultdict(lambda: defaultdict(dict))
    members: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    where: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: r.id):  # strategies in the order they were launched
        v = score(r, metrics.get(r.id, {}), which, metric, split)
        if v is None or r.status != "completed":
            continue
        cell = tuple(repr(r.config.get(k)) for k in other)
        where[cell] = {k: r.config.get(k) for k in other}
        name = str(r.config.get("strategy", r.name))
        if best_lr:
            name += f" ({lr_text(r.config.get('lr'))})"
        cells[cell][name][(split_seed(r), int(r.config.get("seed", 0)))] = v
        members[cell][name].append(r)
    pairs = [(cell, na, nb) for cell, groups in cells.items()
             for i, na in enumerate(groups) for nb in list(groups)[i + 1:]]
    what = describe(metric, split, which, short=True)
    scopes = [pairs] if family == "all" else [[p for p in pairs if p[0] == cell] for cell in cells]
    out = []
    for scope in scopes:
        diffs = stats.family([(na, cells[c][na], nb, cells[c][nb]) for c, na, nb in scope], confidence=confidence,
                             what=what)
        for (cell, na, nb), d in zip(scope, diffs):
            ra, rb = members[cell][na], members[cell][nb]
            out.append({"cell": where[cell], **d.to_dict(),
                        "strategy_a": ra[0].config.get("strategy"), "strategy_b": rb[0].config.get("strategy"),
                        "lr_a": ra[0].config.get("lr"), "lr_b": rb[0].config.get("lr"),
                        "run_ids": [r.id for r in ra + rb], "metric": metric, "split": split, "which": which,
                        "scope": family, "best_lr": best_lr})
    return out


def lr_text(lr: float | None) -> str:
    return "default LR" if lr is None else f"LR {lr:g}"


def lr_choices(runs: Sequence[Run], metrics: Metrics, which: str = "best", metric: str = "acc") -> list[dict]:
    """Each strategy's best LR in each cell of the grid but the LR: the LR whose mean validation
    `metric` over its completed runs (seeds, split seeds) is highest; ties go to the smaller LR.

    Validation only, whatever a comparison reports: the test split must not choose what it then
    reports. One dict per (cell, strategy): the cell, the strategy, the LR chosen, its mean and
    number of runs, and every LR tried with its mean.
    """
    other = [k for k in differing_keys(runs) if k not in ("strategy", "lr")]
    tried: dict[tuple, dict[str, list]] = defaultdict(dict)  # (cell, strategy) -> {repr(lr): [lr, values]}
    where: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: r.id):
        v = score(r, metrics.get(r.id, {}), which, metric, "val")
        if v is None or r.status != "completed":
            continue
        key = (tuple(repr(r.config.get(k)) for k in other), r.config.get("strategy"))
        where[key] = {k: r.config.get(k) for k in other}
        tried[key].setdefault(repr(r.config.get("lr")), [r.config.get("lr"), []])[1].append(v)
    out = []
    for key, by_lr in tried.items():
        means = sorted(((lr, pystats.fmean(vs), len(vs)) for lr, vs in by_lr.values()),
                       key=lambda t: (t[0] is None, t[0] or 0.0))  # smaller LRs first, the default last
        lr, mean, n = max(means, key=lambda t: t[1])  # the first of equal means: the smaller LR
        out.append({"cell": where[key], "strategy": key[1], "lr": lr, "val_mean": mean, "n": n,
                    "tried": [{"lr": x, "val_mean": m, "n": k} for x, m, k in means]})
    return out


def at_best_lr(runs: Sequence[Run], metrics: Metrics, which: str = "best", metric: str = "acc") -> list[Run]:
    """The runs (of any status) at their strategy's best LR in their cell (`lr_choices`)."""
    other = [k for k in differing_keys(runs) if k not in ("strategy", "lr")]
    chosen = {(tuple(repr(c["cell"].get(k)) for k in other), c["strategy"]): repr(c["lr"])
              for c in lr_choices(runs, metrics, which, metric)}
    return [r for r in runs if chosen.get((tuple(repr(r.config.get(k)) for k in other), r.config.get("strategy")))
            == repr(r.config.get("lr"))]


def settling_plan(runs: Sequence[Run], differences: Iterable[dict]) -> list[tuple[list[Run], str, int]]:
    """What "add seeds" queues for these pairs: (a group's runs, "seed" or "split", how many to add)
    per group of runs equal but for seed and split seed, the most any of its pairs asks (`to_settle`)."""
    by_id = {r.id: r for r in runs}
    plan: dict[tuple, tuple[list[Run], str, int]] = {}
    for d in differences:
        if not (settle := to_settle(d)):
            continue
        for r in (by_id[i] for i in d["run_ids"] if i in by_id):
            key = (repr(sorted((k, v) for k, v in r.config.items() if k not in ("seed", "split_seed", "name"))),
                   settle["unit"])
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
    about = (f"about {needed} {unit}s would tell a difference of the observed size" if needed
             else f"a difference of the observed size would take more than {stats.MOST_UNITS} {unit}s")
    text = about + (f"; {most} {unit}s in all is the most offered" if capped else "")
    return {"unit": unit, "add": add, "needed": needed, "capped": capped, "text": text}


@dataclass
class Point:
    images_per_class: float
    mean: float
    std: float
    n: int


def data_efficiency(runs: Sequence[Run], metrics: Metrics, which: str = "best",
                    keys: Sequence[str] | None = None, metric: str = "acc", split: str = "val") -> dict:
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
    n, classes = run.summary.train_images, run.summary.classes
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
        kept = r.summary.forgetting
        if kept is None:
            continue
        if kept.skipped is not None:
            skipped.append({"id": r.id, "name": r.name, "reason": kept.skipped})
        elif kept.agreement is not None:
            epochs = metrics.get(r.id, {})
            points.append({"id": r.id, "name": r.name, "strategy": r.config.get("strategy"),
                           "knowledge_kept": kept.agreement, "images": kept.images,
                           "val_acc": value(r, epochs, which), "target_acc": value(r, epochs, which, "target_acc")})
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
