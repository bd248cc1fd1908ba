"""Measurements before training, stored with the experiment: the probe of the data, the LR finder,
the ranking of candidate backbones; and, after the runs, whether the probe was right.

Each runs here (the CLI) or in a job's process (the dashboard, jobs.py) and records its result
as an artifact of the experiment named in its config, with the job id when a job started it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..config import RunConfig
from ..store import Store
from .readings import value
from .runs import check_run

RANKING = "backbone_ranking"  # the artifact a ranking of backbones is stored as
# Run settings `rank-backbones` takes no flag for: it reads --backbones, and --image-size is its own
# (default: each weights' native size, not a run's 96 px).
RANK_NOT_FLAGS = ("backbone", "image_size")


def probe_data(store: Store, cfg: RunConfig, max_per_class: int = 50, job: str | None = None) -> dict:
    """Images per class and how well frozen pretrained features separate the classes; the strategies
    to try first and why (analysis/data_probe.py). Stored as a "probe" artifact of cfg.experiment."""
    from ..analysis.data_probe import probe  # torch: only what measures imports it

    result = {**probe(cfg, max_per_class=max_per_class).to_dict(), "data": cfg.data, "job": job}
    store.add_artifact(cfg.experiment, "probe", result)
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
