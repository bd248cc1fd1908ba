"""Measurements before training, stored with the experiment: the probe of the data, the LR finder,
the ranking of candidate backbones; and, after the runs, whether the probe and the ranking were right.

Each runs here (the CLI) or in a job's process (the dashboard, jobs.py) and records its result
as an artifact of the experiment named in its config, with the job id when a job started it.
"""

from __future__ import annotations

import math
import statistics as pystats
import warnings
from collections import defaultdict
from collections.abc import Sequence

from scipy import stats as scistats

from ..analysis.duplicates import NEAR_AT, PIXEL_AT  # numpy only: the thresholds the CLI's help states
from ..config import RunConfig
from ..store import Run, Store
from ..training.strategies import get_strategy
from .readings import describe, resolve_split, score, value
from .runs import check_run

RANKING = "backbone_ranking"  # the artifact a ranking of backbones is stored as
# Run settings `rank-backbones` takes no flag for: it reads --backbones, and --image-size is its own
# (default: each weights' native size, not a run's 96 px).
RANK_NOT_FLAGS = ("backbone", "image_size")
DATA_CHECK = "data_check"  # the artifact a check of the data is stored as
# `check-data`'s --image-size is its own (default: the weights' native size, as the probe's).
CHECK_NOT_FLAGS = ("image_size",)


def probe_data(store: Store, cfg: RunConfig, max_per_class: int = 50, job: str | None = None) -> dict:
    """Images per class and how well frozen pretrained features separate the classes; the strategies
    to try first and why (analysis/data_probe.py). Stored as a "probe" artifact of cfg.experiment."""
    from ..analysis.data_probe import probe  # torch: only what measures imports it

    result = {**probe(cfg, max_per_class=max_per_class).to_dict(), "data": cfg.data, "job": job}
    store.add_artifact(cfg.experiment, "probe", result)
    return result


def check_data(
    store: Store,
    cfg: RunConfig,
    image_size: int | None = None,
    folds: int = 5,
    near_threshold: float = NEAR_AT,
    job: str | None = None,
    pixel_threshold: float = PIXEL_AT,
) -> dict:
    """Likely label errors, duplicates and leaks across splits, class counts and imbalance,
    unreadable files and outliers of every image of cfg.data, train, val and test
    (analysis/data_check.py). Stored as a "data_check" artifact of cfg.experiment."""
    from ..analysis.data_check import check_data as check  # torch: only what measures imports it

    found = check(
        cfg, image_size=image_size, folds=folds, near_threshold=near_threshold, pixel_threshold=pixel_threshold
    )
    result = {**found.to_dict(), "job": job}
    store.add_artifact(cfg.experiment, DATA_CHECK, result)
    return result


def find_lr(
    store: Store,
    cfg: RunConfig,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    rule: str = "steepest",
    job: str | None = None,
) -> dict:
    """The LR range test under cfg's strategy (lr_finder.py). Stored as an "lr_find" artifact."""
    from ..analysis.lr_finder import lr_find  # torch: only what measures imports it

    check_run(cfg)
    found = lr_find(cfg, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, rule=rule)
    result = {**found.to_dict(), "data": cfg.data, "image_size": cfg.image_size, "job": job}
    store.add_artifact(cfg.experiment, "lr_find", result)
    return result


def probe_verdict(store: Store, experiment: str, which: str = "best") -> str | None:
    """After a comparison, whether the experiment's probe recommended the strategy that won (the
    mean over seeds of each strategy's val accuracy, read at `which` epoch)."""
    from ..analysis.data_probe import judge  # its module imports torch

    found = store.artifacts(experiment, "probe")
    runs = [r for r in store.list_runs(experiment) if r.status == "completed"]
    if not found or not runs:
        return None
    metrics = store.epoch_metrics([r.id for r in runs])
    by_strategy: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if (v := value(r, metrics[r.id], which)) is not None:
            by_strategy[r.config["strategy"]].append(v)  # every run config names its strategy
    results = {s: sum(v) / len(v) for s, v in by_strategy.items()}
    return judge(found[0].data["recommendation"]["strategies"], results) if results else None


def rank_backbones(
    store: Store,
    cfg: RunConfig,
    backbones: Sequence[str],
    image_size: int | None = None,
    max_per_class: int = 50,
    job: str | None = None,
) -> dict:
    """Candidate backbones ranked by LogME (and LEEP where they have an ImageNet head) from their frozen
    features on cfg's training images (analysis/backbone_ranking.py); `backbones`: names, each with
    `@weights` where not cfg's. Stored as a "backbone_ranking" artifact of cfg.experiment."""
    from ..analysis.backbone_ranking import parse_candidates, rank  # torch: only what measures imports it

    candidates = parse_candidates(backbones, cfg.weights)
    ranking = rank(cfg, candidates, image_size=image_size, max_per_class=max_per_class)
    result = {**ranking.to_dict(), "data": cfg.data, "job": job}
    store.add_artifact(cfg.experiment, RANKING, result)
    return result


def _candidate(run: Run) -> tuple[str, str]:
    """(backbone, weights) a run trained from, as a ranking names its candidates: a strategy
    without pretrained weights (scratch) starts from none."""
    pretrained = get_strategy(str(run.config.get("strategy"))).pretrained
    return str(run.config.get("backbone")), (str(run.config.get("weights", "imagenet")) if pretrained else "none")


def _correlation(predicted: list[float], measured: list[float]) -> dict:
    """Spearman's rho and Kendall's tau (scipy.stats) with their p-values; None where undefined (a
    constant side, as tied accuracies make it) or, for the p-value, too few points to have one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: the coefficient is undefined, said by None
        rho = scistats.spearmanr(predicted, measured)
        tau = scistats.kendalltau(predicted, measured)

    def number(x) -> float | None:
        return None if x is None or math.isnan(float(x)) else float(x)

    return {
        "spearman": number(rho.statistic),
        "spearman_p": number(rho.pvalue) if len(predicted) > 2 else None,
        "kendall": number(tau.statistic),
        "kendall_p": number(tau.pvalue) if len(predicted) > 2 else None,
    }


def _agreement_text(strategy: str, points: list[dict], logme: dict, measure: str) -> str:
    predicted = max(points, key=lambda p: p["logme"])
    best = max(points, key=lambda p: p["measured"])
    order = (
        f"Spearman {logme['spearman']:+.2f}, Kendall {logme['kendall']:+.2f}"
        if logme["spearman"] is not None and logme["kendall"] is not None
        else "no correlation defined (tied scores)"
    )
    first = (
        f"it put {predicted['candidate']} first, which measured best ({best['measured']:.1%})"
        if predicted is best
        else f"it put {predicted['candidate']} first ({predicted['measured']:.1%}), but "
        f"{best['candidate']} measured best ({best['measured']:.1%})"
    )
    few = "; with two backbones the order is only right or wrong" if len(points) == 2 else ""
    return f"{strategy}: LogME's ranking of {len(points)} backbones against {measure}: {order}; {first}{few}"


def ranking_agreement(
    store: Store, experiment: str, which: str = "best", metric: str = "acc", split: str = "auto"
) -> dict | None:
    """After an experiment over backbones: the rank correlation (Spearman, Kendall) between its
    stored ranking's prediction (LogME; LEEP where at least two had one) and each backbone's
    measured `metric` (mean over its completed runs: seeds, splits), per strategy. None without a
    ranking of the experiment's data, or fewer than two of its candidates measured."""
    runs = [r for r in store.list_runs(experiment) if r.status == "completed"]
    rankings = [a.data for a in store.artifacts(experiment, RANKING)]  # newest first
    data = {r.config.get("data") for r in runs}
    ranking = next((d for d in rankings if d.get("data") in data), None)
    if ranking is None or not runs:
        return None
    split = resolve_split(runs, split)
    metrics = store.epoch_metrics([r.id for r in runs])
    ranked = {(s["backbone"], s["weights"]): s for s in ranking["ranked"]}
    measured: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if (v := score(r, metrics.get(r.id, {}), which, metric, split)) is not None:
            measured[str(r.config.get("strategy"))][_candidate(r)].append(v)
    measure = describe(metric, split, which, short=True) + f" ({which} epoch)"
    rows = []
    for strategy, by_candidate in measured.items():
        points = [
            {
                "candidate": ranked[c]["candidate"],
                "logme": ranked[c]["logme"],
                "leep": ranked[c]["leep"],
                "rank": ranked[c]["rank"],
                "measured": pystats.fmean(vs),
                "runs": len(vs),
            }
            for c, vs in by_candidate.items()
            if c in ranked
        ]
        if len(points) < 2:
            continue
        logme = _correlation([p["logme"] for p in points], [p["measured"] for p in points])
        with_leep = [p for p in points if p["leep"] is not None]
        leep = (
            _correlation([p["leep"] for p in with_leep], [p["measured"] for p in with_leep])
            if len(with_leep) >= 2
            else None
        )
        points.sort(key=lambda p: p["rank"])
        text = _agreement_text(strategy, points, logme, measure)
        rows.append({"strategy": strategy, "points": points, "logme": logme, "leep": leep, "text": text})
    unranked = sorted({f"{b}@{w}" for by in measured.values() for (b, w) in by if (b, w) not in ranked})
    if not rows:
        return None
    return {"job": ranking.get("job"), "measure": measure, "split": split, "by_strategy": rows, "unranked": unranked}
