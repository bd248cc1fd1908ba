"""The fine-tuning timeline: what trains, epoch by epoch (phases from tl_core/service/curves.py).

A bar per phase, darker as more layer groups train; shaded spans on a run's curves; the hover text
that says what trained at an epoch (trainable groups and parameters, each group's LR).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from tl_core import service

from .style import PALETTE, Group, Metrics, rgba


def timeline_text(m: dict[str, float]) -> str:
    """What trains at an epoch: trainable groups and parameters, and each group's LR."""
    lrs = ", ".join(f"{k[3:]} {v:.1e}" for k, v in m.items() if k.startswith("lr/"))
    parts = []
    if "trainable_groups" in m:
        parts.append(f"{int(m['trainable_groups'])} groups train")
    if "trainable_params" in m:
        share = f" ({m['trainable_share']:.2%} of the model)" if "trainable_share" in m else ""
        parts.append(f"{m['trainable_params'] / 1e6:.2f}M trainable parameters{share}")
    return " · ".join(parts) + (f"<br>LR {lrs}" if lrs else "")


def timeline(rows: Sequence[Group], metrics: Metrics) -> go.Figure:
    """The fine-tuning timeline: per run (or group of seeds, read from its first run) a bar per phase,
    its length the epochs it lasted and its shade the layer groups that trained; hover says what."""
    fig = go.Figure()
    most = (
        max(
            (m.get("trainable_groups", 0) for _, rs in rows for r in rs[:1] for m in metrics.get(r.id, {}).values()),
            default=1,
        )
        or 1
    )
    for label, members in rows:
        if not members:
            continue
        epochs = metrics.get(members[0].id, {})
        for first, last, n in service.phases(epochs):
            m = epochs[first - 1]
            fig.add_trace(
                go.Bar(
                    y=[label],
                    x=[last - first + 1],
                    base=[first - 0.5],
                    orientation="h",
                    showlegend=False,
                    marker=dict(color=rgba(PALETTE[0], 0.25 + 0.75 * n / most), line=dict(width=1, color="white")),
                    text=[f"{n} group{'s' if n != 1 else ''}"],
                    textposition="inside",
                    insidetextanchor="middle",
                    hovertemplate=f"<b>{label}</b><br>epochs {first}-{last}<br>{timeline_text(m)}<extra></extra>",
                )
            )
    fig.update_layout(
        title="fine-tuning timeline: what trains, epoch by epoch",
        barmode="overlay",
        height=max(200, 60 + 28 * len(rows)),
        margin=dict(l=10, r=10, t=50, b=10),
    )
    fig.update_xaxes(
        title="epoch",
        tick0=1,
        dtick=1 if max((len(metrics.get(rs[0].id, {})) for _, rs in rows if rs), default=1) <= 20 else None,
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def shade_phases(fig: go.Figure, epochs: dict[int, dict[str, float]]) -> go.Figure:
    """Shaded spans for each phase of one run's fine-tuning, labelled with the groups that train."""
    spans = service.phases(epochs)
    if len(spans) < 2:
        return fig
    for i, (first, last, n) in enumerate(spans):
        fig.add_vrect(
            x0=first - 0.5,
            x1=last + 0.5,
            fillcolor=PALETTE[i % len(PALETTE)],
            opacity=0.08,
            line_width=0,
            annotation_text=f"{n} group{'s' if n != 1 else ''}",
            annotation_position="top left",
        )
    return fig
