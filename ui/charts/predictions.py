"""A run's predictions: its confusion cells to click, what changed against another run, one image's top-k."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from .style import PALETTE


def confusion_cells(
    classes: Sequence[str],
    matrix: Sequence[Sequence[int]],
    title: str = "click a cell to see its images (rows: true class, columns: predicted)",
) -> go.Figure:
    """The confusion matrix as a grid of square markers (rows: true class, columns: predicted), so a
    click on a cell is a selectable point (Plotly reports no point selection on a heatmap). Colour is
    the share of the true class's images, the text the count; customdata is [true, predicted]."""
    n = len(classes)
    cells = [(t, p) for t in range(n) for p in range(n)]
    share = [matrix[t][p] / max(1, sum(matrix[t])) for t, p in cells]
    size = max(10, min(56, 360 // max(1, n)))
    fig = go.Figure(
        go.Scatter(
            x=[classes[p] for _, p in cells],
            y=[classes[t] for t, _ in cells],
            mode="markers+text",
            marker=dict(
                symbol="square",
                size=size,
                color=share,
                colorscale="Blues",
                cmin=0,
                cmax=1,
                line=dict(width=1, color="rgba(0,0,0,0.15)"),
            ),
            text=[str(matrix[t][p]) if matrix[t][p] else "" for t, p in cells],
            textposition="middle center",
            textfont=dict(color=["white" if s > 0.5 else "black" for s in share]),
            customdata=[[t, p, matrix[t][p]] for t, p in cells],
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[2]} images<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        height=max(360, size * n + 160),
        margin=dict(l=10, r=10, t=50, b=10),
        clickmode="event+select",
        plot_bgcolor="white",
    )
    fig.update_xaxes(
        title="predicted",
        tickangle=-45,
        type="category",
        categoryorder="array",
        categoryarray=list(classes),
        showgrid=False,
    )
    fig.update_yaxes(
        title="true", type="category", categoryorder="array", categoryarray=list(classes)[::-1], showgrid=False
    )
    return fig


def clicked_cell(points: Sequence[dict], num_classes: int) -> tuple[int, int] | None:
    """(true, predicted) of the cell clicked on `confusion_cells`, from a selection's points."""
    for point in points:
        if isinstance(data := point.get("customdata"), (list, tuple)) and len(data) >= 2:
            return int(data[0]), int(data[1])
        if (i := point.get("point_index", point.get("point_number"))) is not None:
            return divmod(int(i), num_classes)
    return None


def confusion_delta(classes: Sequence[str], delta: Sequence[Sequence[int]], title: str) -> go.Figure:
    """Another run's confusion matrix minus the reference's: a diverging heatmap, centred on zero.
    More images on the diagonal (blue) is better; more off it (red) is worse."""
    n = len(classes)
    # Colour by how the change helps: on the diagonal a gain is good, off it a gain is bad.
    good = [[delta[t][p] if t == p else -delta[t][p] for p in range(n)] for t in range(n)]
    top = max((abs(v) for row in good for v in row), default=0) or 1
    fig = go.Figure(
        go.Heatmap(
            z=good,
            x=list(classes),
            y=list(classes),
            colorscale="RdBu",
            zmid=0,
            zmin=-top,
            zmax=top,
            customdata=[list(r) for r in delta],
            text=[[f"{v:+d}" if v else "" for v in r] for r in delta],
            texttemplate="%{text}",
            showscale=False,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata:+d} images against the reference<extra></extra>",
        )
    )
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="predicted", tickangle=-45)
    fig.update_yaxes(title="true", autorange="reversed")
    return fig


def class_deltas(rows: Sequence[dict], title: str) -> go.Figure:
    """Per-class accuracy change against the reference (rows from `service.diff(...).class_deltas`)."""
    fig = go.Figure(
        go.Bar(
            x=[r["class"] for r in rows],
            y=[r["delta"] for r in rows],
            marker_color=["#2166ac" if r["delta"] > 0 else "#b2182b" if r["delta"] < 0 else "#999999" for r in rows],
            customdata=[[r["reference_acc"], r["acc"], r["images"]] for r in rows],
            hovertemplate="%{x}: %{customdata[0]:.1%} → %{customdata[1]:.1%} (%{y:+.1%}) on %{customdata[2]} images"
            "<extra></extra>",
        )
    )
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="true class", tickangle=-45)
    fig.update_yaxes(title="accuracy change (points)", tickformat="+.0%", zeroline=True)
    return fig


def top_k(top: Sequence[dict], title: str = "top classes") -> go.Figure:
    """The top-k classes of one image as horizontal bars, most probable on top."""
    fig = go.Figure(
        go.Bar(
            x=[t["prob"] for t in top],
            y=[t["class"] for t in top],
            orientation="h",
            marker_color=PALETTE[0],
            text=[f"{t['prob']:.1%}" for t in top],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    fig.update_layout(title=title, height=max(180, 60 + 34 * len(top)), margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(autorange="reversed", type="category")
    return fig
