"""Before training: a dataset's images per class and split, the LR finder's curve."""

from __future__ import annotations

import plotly.graph_objects as go

from .style import PALETTE


def lr_finder(result: dict) -> go.Figure:
    """The LR range test: smoothed loss against LR (log x), the suggestion marked with its rule."""
    fig = go.Figure(
        go.Scatter(
            x=result["lrs"],
            y=result["losses"],
            mode="lines",
            name="smoothed loss",
            hovertemplate="LR %{x:.2e}<br>loss %{y:.4f}<extra></extra>",
        )
    )
    i = result["suggestion_index"]
    fig.add_trace(
        go.Scatter(
            x=[result["lrs"][i]],
            y=[result["losses"][i]],
            mode="markers",
            marker=dict(size=14, symbol="star", color="crimson"),
            name=f"suggested {result['suggested_lr']:.1e}",
            hovertemplate=f"suggested LR %{{x:.2e}}<br>{result['rule_description']}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"LR finder: {result.get('strategy', '')} on {result.get('backbone', '')}",
        height=360,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
    )
    fig.update_xaxes(type="log", title="learning rate (log)", exponentformat="e")
    fig.update_yaxes(title="training loss (smoothed)")
    return fig


def split_counts(per_class: dict[str, dict[str, int]]) -> go.Figure:
    """Images per class in the train, val and (where there is one) test splits (stacked bars)."""
    names = list(per_class)
    splits = [s for s in ("train", "val", "test") if any(per_class[n].get(s) for n in names)] or ["train", "val"]
    fig = go.Figure(
        [
            go.Bar(x=names, y=[per_class[n].get(split, 0) for n in names], name=split, marker_color=PALETTE[i])
            for i, split in enumerate(splits)
        ]
    )
    fig.update_layout(
        barmode="stack",
        title="images per class",
        height=300,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
    )
    return fig
