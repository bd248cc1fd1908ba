"""A comparison's own charts: data efficiency with its crossovers, layer drift side by side, forgetting.

Each draws an answer of the service (`data_efficiency`, `drift_profiles`, `forgetting_points`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from .style import DRIFT_TITLE, PALETTE, RunLike, band, run_styles


def data_efficiency(report: dict, y_title: str = "best val accuracy") -> go.Figure:
    """Val accuracy against training images per class (log x), a line and band per group of runs,
    crossovers marked where one group overtakes another."""
    fig = go.Figure()
    for i, (label, points) in enumerate(report["curves"].items()):
        xs = [p["images_per_class"] for p in points]
        band(
            fig,
            label,
            PALETTE[i % len(PALETTE)],
            xs,
            [(p["mean"], p["std"]) for p in points],
            "images per class",
            y_title,
        )
        fig.data[-1].update(mode="lines+markers")
    # One layout update for every marker (plotly's add_vline redraws the layout each call); on a
    # log axis, shapes and annotations take log10 coordinates.
    crossings = report.get("crossovers", [])
    fig.update_layout(
        shapes=[
            dict(
                type="line",
                xref="x",
                yref="paper",
                x0=math.log10(c["x"]),
                x1=math.log10(c["x"]),
                y0=0,
                y1=1,
                line=dict(dash="dash", color="grey"),
            )
            for c in crossings
        ],
        annotations=[
            dict(
                x=math.log10(c["x"]),
                xref="x",
                yref="paper",
                y=1,
                text=f"~{c['x']:g}",
                showarrow=False,
                yanchor="bottom",
            )
            for c in crossings
        ],
    )
    fig.update_layout(
        title="how much data: accuracy against training images per class",
        height=380,
        margin=dict(l=10, r=10, t=50, b=10),
        hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
    )
    fig.update_xaxes(type="log", title="training images per class (log)")
    fig.update_yaxes(title=y_title, tickformat=".0%")
    return fig


def drift_overlay(report: dict, runs: Sequence[RunLike] = (), which: str = "best") -> go.Figure:
    """Each layer group's drift (x: the groups, stem to head) at each run's best or last epoch: a
    line per run, coloured as its curves, or per group of seeds (their mean, ± one std as error
    bars). `report` is `service.drift_profiles`'s answer."""
    fig = go.Figure()
    styles = run_styles(runs)
    for i, p in enumerate(report["profiles"]):
        groups = [g for g in report["groups"] if g in p["drift"]]
        style = styles.get(p["run_ids"][0]) if p["n"] == 1 else None
        name = p["label"] if p["n"] == 1 else f"{p['label']} (n={p['n']})"
        fig.add_trace(
            go.Scatter(
                x=groups,
                y=[p["drift"][g] for g in groups],
                name=name,
                mode="lines+markers",
                line=dict(
                    color=style["color"] if style else PALETTE[i % len(PALETTE)],
                    dash=style["dash"] if style else "solid",
                ),
                error_y=dict(type="data", array=[p["std"][g] for g in groups], visible=p["n"] > 1, thickness=1),
                hovertemplate=f"<b>{name}</b><br>%{{x}}: moved %{{y:.2%}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"layer drift at the {which} epoch: stem (left) to head (right)",
        height=380,
        margin=dict(l=10, r=10, t=50, b=10),
        hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
    )
    fig.update_xaxes(title="layer group", type="category", categoryorder="array", categoryarray=report["groups"])
    fig.update_yaxes(title=DRIFT_TITLE, tickformat=".1%", rangemode="tozero")
    return fig


def forgetting_scatter(points: Sequence[dict], runs: Sequence[RunLike] = (), which: str = "best") -> go.Figure:
    """Forgetting against learning: knowledge kept (x) and val accuracy on the new task (y), a point
    per run (from `service.forgetting_points`), a colour and legend entry per strategy; hover names
    the run. Up and to the right learned the new task and kept the old."""
    fig = go.Figure()
    styles = run_styles(runs)
    by_strategy: dict[str, list[dict]] = {}
    for p in points:
        by_strategy.setdefault(str(p.get("strategy") or p["name"]), []).append(p)
    for i, (strategy, members) in enumerate(by_strategy.items()):
        colour = styles[members[0]["id"]]["color"] if members[0]["id"] in styles else PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=[p["knowledge_kept"] for p in members],
                y=[p["val_acc"] for p in members],
                mode="markers",
                name=strategy,
                marker=dict(size=11, color=colour, line=dict(width=1, color="white")),
                text=[p["name"] for p in members],
                customdata=[
                    [p.get("images") or 0, "–" if p.get("target_acc") is None else f"{p['target_acc']:.1%}"]
                    for p in members
                ],
                hovertemplate="<b>%{text}</b><br>knowledge kept %{x:.1%} (on %{customdata[0]} images)<br>"
                f"val accuracy ({which} epoch) %{{y:.1%}}<br>target-domain accuracy %{{customdata[1]}}"
                "<extra></extra>",
            )
        )
    fig.update_layout(
        title="forgetting: knowledge kept against accuracy on the new task",
        height=380,
        margin=dict(l=10, r=10, t=50, b=10),
        hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
    )
    fig.update_xaxes(title="knowledge kept after training (ImageNet top-1 agreement)", tickformat=".0%")
    fig.update_yaxes(title=f"val accuracy ({which} epoch)", tickformat=".0%")
    return fig
