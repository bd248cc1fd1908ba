"""One run's keys against epoch: losses and accuracies, each layer group's LR, shares, each group's drift."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from .style import DRIFT_TITLE, PALETTE, key_label, standard_layout
from .timeline import timeline_text


def epoch_lines(
    epochs: dict[int, dict[str, float]],
    keys: Iterable[str],
    title: str,
    y_title: str,
    log_y: bool = False,
    count: bool = False,
) -> go.Figure:
    """Several keys of one run against epoch (1-based): a trace per key that has values.

    log_y suits learning rates; count draws the y axis from zero with k / M ticks.
    """
    fig = go.Figure()
    for i, key in enumerate(keys):
        pts = [(e + 1, m[key], timeline_text(m)) for e, m in sorted(epochs.items()) if key in m]
        if pts:
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=key_label(key.removeprefix("lr/")),
                    line=dict(color=PALETTE[i % len(PALETTE)]),
                    text=[p[2] for p in pts],
                    hovertemplate="epoch %{x}<br>%{y:.4g}<br>%{text}<extra>%{fullData.name}</extra>",
                )
            )
    fig = standard_layout(fig, title, "epoch", y_title)
    if log_y:
        fig.update_yaxes(type="log", tickformat=".0e", dtick=1)  # one labelled tick per decade
    if count:  # a count such as trainable parameters: from zero, in k / M
        fig.update_yaxes(rangemode="tozero", tickformat=".3s")
    return fig


def share_lines(epochs: dict[int, dict[str, float]], keys: Iterable[str], title: str, y_title: str) -> go.Figure:
    """Like `epoch_lines`, for shares and accuracies in 0..1: percent ticks from zero."""
    fig = epoch_lines(epochs, keys, title, y_title)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return fig


def lr_keys(epochs: dict[int, dict[str, float]], group_order: Sequence[str] = ()) -> list[str]:
    """The lr/<group> keys a run logged, stem-side first when the group order is known."""
    keys = {k for m in epochs.values() for k in m if k.startswith("lr/")}
    order = {f"lr/{g}": i for i, g in enumerate(group_order)}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def layer_drift(
    drift: dict[str, Sequence[float | None]], title: str = "Layer drift: how far each group moved from its start"
) -> go.Figure:
    """Each layer group's relative change since training began against epoch (1-based), a line per
    group coloured stem (dark) to head (light); a group that never moved (frozen) is a grey dotted
    line at 0, named so in the legend."""
    fig = go.Figure()
    colours = sample_colorscale("Viridis", [i / max(1, len(drift) - 1) * 0.85 for i in range(len(drift))])
    for colour, (group, values) in zip(colours, drift.items()):
        pts = [(e + 1, v) for e, v in enumerate(values) if v is not None]
        frozen = all(v == 0 for _, v in pts)
        fig.add_trace(
            go.Scatter(
                x=[e for e, _ in pts],
                y=[v for _, v in pts],
                mode="lines+markers",
                name=f"{group} (frozen: 0)" if frozen else group,
                line=dict(color="grey" if frozen else colour, dash="dot" if frozen else "solid"),
                marker=dict(size=5 if frozen else 6),
                hovertemplate=f"<b>{group}</b><br>epoch %{{x}}<br>moved %{{y:.2%}} of its starting norm<extra></extra>",
            )
        )
    fig = standard_layout(fig, title, "epoch", "drift", y_title=DRIFT_TITLE)
    # From zero, and a little below it, so that frozen groups' lines on 0 stay in sight.
    top = max((v for values in drift.values() for v in values if v is not None), default=0) or 0.01
    fig.update_yaxes(tickformat=".1%", range=[-0.04 * top, 1.08 * top])
    fig.update_layout(height=360 + 20 * (len(drift) // 3))  # room for a legend entry per group
    return fig
