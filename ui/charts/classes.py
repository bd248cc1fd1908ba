"""Per-class results: recall bars grouped by run, confusion matrices as heatmaps."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from .style import RunLike, run_styles


def per_class_recall(
    runs: Sequence[RunLike], class_rows: dict[int, Sequence], labels: dict[int, str] | None = None, which: str = "best"
) -> go.Figure:
    """Per-class accuracy (recall) grouped by run; class_rows is {run id: [ClassMetric-like rows]}.

    Colours match the curves (one per strategy); a strategy's further seeds are hatched.
    """
    fig = go.Figure()
    styles = run_styles(runs)
    for r in runs:
        rows = class_rows.get(r.id)
        if not rows:
            continue
        name = (labels or {}).get(r.id, r.name)
        hatch = "" if styles[r.id]["dash"] == "solid" else "/"
        fig.add_trace(
            go.Bar(
                x=[c.class_name for c in rows],
                y=[c.recall for c in rows],
                name=name,
                marker=dict(color=styles[r.id]["color"], pattern_shape=hatch),
                hovertemplate=f"<b>{name}</b><br>%{{x}}: %{{y:.1%}}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        title=f"per-class accuracy (recall) at the {which} epoch",
        height=380,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", y=-0.15),
    )
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    return fig


def confusion_heatmap(
    classes: Sequence[str], matrix: Sequence[Sequence[int]], title: str = "confusion matrix", normalize: bool = True
) -> go.Figure:
    """Rows are true classes, columns predictions; normalized rows show each class's recall."""
    z = [[v / max(1, sum(row)) for v in row] for row in matrix] if normalize else [list(r) for r in matrix]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(classes),
            y=list(classes),
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalize else None,
            customdata=[list(r) for r in matrix],
            text=[[str(v) for v in r] for r in matrix],
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} images (%{z:.0%})<extra></extra>",
            showscale=False,
        )
    )
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="predicted", tickangle=-45)
    fig.update_yaxes(title="true", autorange="reversed")
    return fig
