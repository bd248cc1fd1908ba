"""Runs' curves against epoch or wall-clock time: a trace per run, or a mean and band per group of seeds; train vs val.

A curve figure draws one trace per run, named after the run, so a legend entry is a run; runs of
one strategy share a colour (seeds differ by dash); an epoch where a strategy unfroze more layer
groups is a larger diamond, and hovering any epoch says what trained then. Past a dozen runs the
pages draw groups instead (`group_bands`: a mean line and a band per group of seeds, one legend
entry each), so hundreds of runs stay readable and fast. The numbers (the mean and spread per
epoch, smoothing, where a strategy unfroze) are the service's (tl_core/service/curves.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from tl_core import service

from .style import PALETTE, Group, Metrics, RunLike, band, key_label, run_styles, standard_layout
from .timeline import timeline_text


def _x(e: int, m: dict[str, float], x: str) -> float | None:
    return e + 1 if x == "epoch" else m.get(x)


def _smoothed(ys: list[float], smoothing: float) -> list[float]:
    return service.smooth(ys, smoothing) if smoothing else ys


def curves(
    runs: Sequence[RunLike],
    metrics: Metrics,
    y: str = "val_acc",
    x: str = "epoch",
    title: str | None = None,
    smoothing: float = 0.0,
) -> go.Figure:
    """`y` against epoch (1-based) or wall_seconds: one trace per run, unfreeze steps marked, and on
    hover what trained at that epoch (the fine-tuning timeline). WebGL past a few thousand points."""
    fig = go.Figure()
    styles = run_styles(runs)
    many = sum(len(metrics.get(r.id, {})) for r in runs) > 2000
    trace = go.Scattergl if many else go.Scatter
    for r in runs:
        epochs = metrics.get(r.id, {})
        points = [(e, m) for e, m in sorted(epochs.items()) if y in m and _x(e, m, x) is not None]
        steps = service.unfreeze_epochs(epochs)  # 1-based epochs
        fig.add_trace(
            trace(
                x=np.array([_x(e, m, x) for e, m in points], dtype=float),
                y=np.array(_smoothed([m[y] for _, m in points], smoothing)),
                name=r.name,
                mode="lines" if many else "lines+markers",
                line=dict(color=styles[r.id]["color"], dash=styles[r.id]["dash"]),
                marker=dict(
                    symbol=["diamond" if e + 1 in steps else "circle" for e, _ in points],
                    size=[13 if e + 1 in steps else 6 for e, _ in points],
                    line=dict(width=[1.5 if e + 1 in steps else 0 for e, _ in points], color="black"),
                ),
                text=[("<b>unfroze</b> · " if e + 1 in steps else "") + timeline_text(m) for e, m in points],
                hovertemplate=f"<b>{r.name}</b><br>{key_label(x)} %{{x}}<br>{key_label(y)} %{{y:.4f}}<br>%{{text}}"
                "<extra></extra>",
            )
        )
    return standard_layout(fig, title or f"{key_label(y)} by {key_label(x)}", x, y)


def group_bands(
    groups: Sequence[Group],
    metrics: Metrics,
    y: str = "val_acc",
    title: str | None = None,
    smoothing: float = 0.0,
    min_runs: int = 1,
) -> go.Figure:
    """Mean +/- one standard deviation of `y` per epoch, one line and band per group of runs:
    hundreds of runs drawn as a legend entry per group."""
    fig = go.Figure()
    for i, (label, members) in enumerate(groups):
        if len(members) < min_runs:
            continue
        spread = service.epoch_spread(members, metrics, y, min_runs)
        if not len(spread.epochs):
            continue
        mean = np.array(_smoothed(list(spread.mean), smoothing)) if smoothing else spread.mean
        band(
            fig,
            f"{label} (n={len(members)})",
            PALETTE[i % len(PALETTE)],
            spread.epochs,
            list(zip(mean, spread.std)),
            "epoch",
            key_label(y),
        )
    return standard_layout(fig, title or f"{key_label(y)}: mean ± std per group", "epoch", y)


def seed_bands(runs: Sequence[RunLike], metrics: Metrics, y: str = "val_acc", title: str | None = None) -> go.Figure:
    """Mean +/- one standard deviation of `y` per epoch for each strategy run with several seeds."""
    groups: dict[str, list[RunLike]] = {}
    for r in runs:
        groups.setdefault(str(r.config.get("strategy", r.name)), []).append(r)
    return group_bands(list(groups.items()), metrics, y, title or f"{key_label(y)}: mean ± std over seeds", min_runs=2)


def train_val_gap(
    runs: Sequence[RunLike], metrics: Metrics, metric: str = "acc", groups: Sequence[Group] | None = None
) -> go.Figure:
    """Train (dotted) and val (solid) `metric` per run, or per group's mean: the gap is overfitting."""
    fig = go.Figure()
    what = "accuracy" if metric == "acc" else "loss"
    if groups is not None:
        for i, (label, members) in enumerate(groups):
            for split, dash in (("val", "solid"), ("train", "dot")):
                spread = service.epoch_spread(members, metrics, f"{split}_{metric}")
                if len(spread.epochs):
                    band(
                        fig,
                        f"{label} {split}",
                        PALETTE[i % len(PALETTE)],
                        spread.epochs,
                        list(zip(spread.mean, spread.std)),
                        "epoch",
                        what,
                        dash=dash,
                    )
        return standard_layout(fig, f"train vs val {what}", "epoch", f"val_{metric}", y_title=what)
    styles = run_styles(runs)
    for r in runs:
        epochs = sorted(metrics.get(r.id, {}).items())
        for split, dash in (("val", "solid"), ("train", "dot")):
            key = f"{split}_{metric}"
            pts = [(e + 1, m[key]) for e, m in epochs if key in m]
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    name=f"{r.name} {split}",
                    legendgroup=r.name,
                    mode="lines+markers",
                    line=dict(color=styles[r.id]["color"], dash=dash),
                )
            )
    return standard_layout(fig, f"train vs val {what}", "epoch", f"val_{metric}", y_title=what)
