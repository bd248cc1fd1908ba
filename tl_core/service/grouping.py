"""Runs grouped: which settings differ between them, runs equal but for their seeds, each strategy's best LR.

Runs that differ only by their seed (and split seed) are one group (a strategy at one train
fraction and one LR, say); its seeds give the spread. A grid's cell is everything equal but the
strategy (and the LR, where each strategy is compared at its best LR: `lr_choices`, chosen on
validation only).
"""

from __future__ import annotations

import statistics as pystats
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import ADDED_LATER, default
from ..store.store import Run
from .readings import Metrics, score, split_seed

# Settings that name, file or seed a run: never what a comparison groups by. The split seed is a
# replicate like the seed: statistics pair by (split seed, seed), groups span both.
NOT_COMPARED = ("name", "experiment", "seed", "split_seed", "workers", "device")


def _setting(run: Run, key: str) -> object:
    """A run's setting; one added after the run was recorded is its default (what the run did, and
    what its fingerprint takes it to be), so runs recorded before and after it was added compare equal."""
    if key not in run.config and key in ADDED_LATER:
        return default(key)
    return run.config.get(key)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config settings that take more than one value across `runs` (in the config's order)."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.config if k not in keys and k not in NOT_COMPARED]
    return [k for k in keys if len({repr(_setting(r, k)) for r in runs}) > 1]


def config_table(runs: Sequence[Run], differs_only: bool = True) -> list[dict]:
    """One row per run with its settings: all of them, or only those that differ between the runs."""
    keys = (
        differing_keys(runs)
        if differs_only
        else [k for k in dict.fromkeys(k for r in runs for k in r.config) if k not in NOT_COMPARED]
    )
    splits = len({split_seed(r) for r in runs}) > 1
    return [
        {
            "run": r.name,
            "seed": r.config.get("seed"),
            **({"split_seed": split_seed(r)} if splits else {}),
            **{k: r.config.get(k) for k in keys},
        }
        for r in runs
    ]


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
        settings = {k: _setting(r, k) for k in keys}
        key = tuple(repr(v) for v in settings.values())
        if key not in groups:
            groups[key] = Group(_label(settings) or "all runs", settings)
        groups[key].runs.append(r)
    return list(groups.values())


def _label(settings: dict) -> str:
    parts: list[str] = []
    for k, v in settings.items():
        if k == "strategy":
            parts.insert(0, str(v))
        elif k == "train_fraction":
            parts.append(f"{v:g} of the data")
        elif k == "lr":
            parts.append("default LR" if v is None else f"LR {v:g}")
        elif k == "exclude":
            parts.append(f"{len(v)} images excluded or moved" if v else "no exclusions")
        else:
            parts.append(f"{k} {v}")
    return " · ".join(parts)


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
        means = sorted(
            ((lr, pystats.fmean(vs), len(vs)) for lr, vs in by_lr.values()), key=lambda t: (t[0] is None, t[0] or 0.0)
        )  # smaller LRs first, the default last
        lr, mean, n = max(means, key=lambda t: t[1])  # the first of equal means: the smaller LR
        out.append(
            {
                "cell": where[key],
                "strategy": key[1],
                "lr": lr,
                "val_mean": mean,
                "n": n,
                "tried": [{"lr": x, "val_mean": m, "n": k} for x, m, k in means],
            }
        )
    return out


def at_best_lr(runs: Sequence[Run], metrics: Metrics, which: str = "best", metric: str = "acc") -> list[Run]:
    """The runs (of any status) at their strategy's best LR in their cell (`lr_choices`)."""
    other = [k for k in differing_keys(runs) if k not in ("strategy", "lr")]
    chosen = {
        (tuple(repr(c["cell"].get(k)) for k in other), c["strategy"]): repr(c["lr"])
        for c in lr_choices(runs, metrics, which, metric)
    }
    return [
        r
        for r in runs
        if chosen.get((tuple(repr(r.config.get(k)) for k in other), r.config.get("strategy")))
        == repr(r.config.get("lr"))
    ]
