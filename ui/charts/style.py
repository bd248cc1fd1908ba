"""What every chart shares: colours per strategy and dashes per seed, axis labels, the layout, a mean-and-band trace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

Metrics = dict[int, dict[int, dict[str, float]]]  # {run_id: {epoch (0-based): {key: value}}}
PALETTE = qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
LABELS = {
    "val_acc": "val accuracy",
    "val_loss": "val loss",
    "train_acc": "train accuracy",
    "train_loss": "train loss",
    "val_top5": "val top-5 accuracy",
    "epoch": "epoch",
    "wall_seconds": "wall-clock time (s)",
    "target_acc": "target-domain accuracy",
    "target_loss": "target-domain loss",
    "reg_share": "regularizer's share of the loss",
    "reg_penalty": "regularizer penalty",
    "domain_acc": "domain discriminator accuracy",
    "domain_loss": "domain loss",
}
DRIFT_TITLE = "drift ||w − w0|| / ||w0||"


class RunLike(Protocol):
    id: int
    name: str
    config: dict


Group = tuple[str, Sequence[RunLike]]  # a label and its runs (seeds of one setting)


def key_label(key: str) -> str:
    """A metric's key as an axis says it: "val_acc" -> "val accuracy"."""
    return LABELS.get(key, key.replace("_", " "))


def standard_layout(
    fig: go.Figure, title: str, x: str, y: str, height: int = 360, y_title: str | None = None
) -> go.Figure:
    """The curves' common layout: the legend below, axes titled from the keys, whole epochs, accuracies in %."""
    fig.update_layout(
        title=title,
        height=height,
        hovermode="closest",
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
    )
    fig.update_xaxes(title=key_label(x))
    if x == "epoch":  # whole epochs only, about ten ticks at most
        last = max(
            (v for trace in fig.data if trace.x is not None for v in trace.x if v is not None and v == v), default=1
        )
        fig.update_xaxes(tick0=1, dtick=max(1, math.ceil(last / 10)))
    fig.update_yaxes(title=y_title or key_label(y), tickformat=".0%" if "acc" in y or "_top" in y else None)
    return fig


def run_styles(runs: Sequence[RunLike]) -> dict[int, dict]:
    """Colour per strategy, dash per run within a strategy (its seeds)."""
    colours: dict[str, str] = {}
    seen: dict[str, int] = {}
    out = {}
    for r in runs:
        key = str(r.config.get("strategy", r.name))
        colours.setdefault(key, PALETTE[len(colours) % len(PALETTE)])
        out[r.id] = {"color": colours[key], "dash": DASHES[seen.get(key, 0) % len(DASHES)]}
        seen[key] = seen.get(key, 0) + 1
    return out


def rgba(hex_colour: str, alpha: float) -> str:
    """ "#rrggbb" with an alpha, as Plotly's rgba() colour string."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def band(
    fig: go.Figure,
    name: str,
    colour: str,
    xs: list,
    stats: list[tuple[float, float]],
    x_title: str,
    y_title: str,
    dash: str = "solid",
    showlegend: bool = True,
) -> None:
    """A mean line with a +/- one standard deviation band, one legend entry."""
    # numpy arrays: plotly takes them whole (lists it validates value by value, slow for big grids)
    x, mean, std = np.asarray(xs, dtype=float), np.array([m for m, _ in stats]), np.array([s for _, s in stats])
    trace = go.Scatter  # SVG: faster than WebGL here for bands (measured; headless Chromium renders WebGL in software)
    fig.add_trace(
        trace(
            x=np.concatenate([x, x[::-1]]),
            y=np.concatenate([mean + std, (mean - std)[::-1]]),
            fill="toself",
            fillcolor=rgba(colour, 0.18),
            line=dict(width=0),
            mode="lines",
            hoverinfo="skip",
            showlegend=False,
            legendgroup=name,
        )
    )
    fig.add_trace(
        trace(
            x=x,
            y=mean,
            name=name,
            legendgroup=name,
            mode="lines",
            line=dict(color=colour, dash=dash),
            customdata=std,
            showlegend=showlegend,
            hovertemplate=f"<b>{name}</b><br>{x_title} %{{x}}<br>{y_title} %{{y:.4f}} "
            f"± %{{customdata:.4f}}<extra></extra>",
        )
    )
