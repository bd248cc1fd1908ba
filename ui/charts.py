"""Charts: pure functions from runs and metric rows to plotly figures (no streamlit here).

Every curve figure draws exactly one trace per run, named after the run, so a legend entry is
a run. Runs of one strategy share a colour (seeds differ by dash); an epoch where a strategy
unfroze more layer groups is drawn as a larger diamond on that run's own trace.
"""

from __future__ import annotations

import math
from typing import Iterable, Protocol, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative

Metrics = dict[int, dict[int, dict[str, float]]]  # {run_id: {epoch (0-based): {key: value}}}
PALETTE = qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
LABELS = {"val_acc": "val accuracy", "val_loss": "val loss", "train_acc": "train accuracy",
          "train_loss": "train loss", "val_top5": "val top-5 accuracy", "epoch": "epoch",
          "wall_seconds": "wall-clock time (s)"}


class RunLike(Protocol):
    id: int
    name: str
    config: dict


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 360, y_title: str | None = None) -> go.Figure:
    fig.update_layout(title=title, height=height, hovermode="closest", margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))
    fig.update_xaxes(title=_label(x))
    if x == "epoch":  # whole epochs only, about ten ticks at most
        last = max((v for trace in fig.data for v in (trace.x or ()) if v is not None), default=1)
        fig.update_xaxes(tick0=1, dtick=max(1, math.ceil(last / 10)))
    fig.update_yaxes(title=y_title or _label(y), tickformat=".0%" if "acc" in y or "_top" in y else None)
    return fig


def _styles(runs: Sequence[RunLike]) -> dict[int, dict]:
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


def unfreeze_epochs(epochs: dict[int, dict[str, float]]) -> dict[int, int]:
    """{epoch: trainable groups} for each epoch where more groups train than the epoch before."""
    out, before = {}, None
    for e, m in sorted(epochs.items()):
        n = m.get("trainable_groups")
        if n is not None and before is not None and n != before:
            out[e] = int(n)
        before = n if n is not None else before
    return out


def _x(e: int, m: dict[str, float], x: str) -> float | None:
    return e + 1 if x == "epoch" else m.get(x)


def curves(runs: Sequence[RunLike], metrics: Metrics, y: str = "val_acc", x: str = "epoch",
           title: str | None = None) -> go.Figure:
    """`y` against epoch (1-based) or wall_seconds: one trace per run, unfreeze steps marked."""
    fig = go.Figure()
    styles = _styles(runs)
    for r in runs:
        epochs = metrics.get(r.id, {})
        points = [(e, m) for e, m in sorted(epochs.items()) if y in m and _x(e, m, x) is not None]
        steps = unfreeze_epochs(epochs)
        fig.add_trace(go.Scatter(
            x=[_x(e, m, x) for e, m in points], y=[m[y] for _, m in points], name=r.name,
            mode="lines+markers", line=dict(color=styles[r.id]["color"], dash=styles[r.id]["dash"]),
            marker=dict(symbol=["diamond" if e in steps else "circle" for e, _ in points],
                        size=[13 if e in steps else 6 for e, _ in points],
                        line=dict(width=[1.5 if e in steps else 0 for e, _ in points], color="black")),
            text=[f"unfroze: {steps[e]} groups train" if e in steps else "" for e, _ in points],
            hovertemplate=f"<b>{r.name}</b><br>{_label(x)} %{{x}}<br>{_label(y)} %{{y:.4f}}<br>%{{text}}<extra></extra>",
        ))
    return _layout(fig, title or f"{_label(y)} by {_label(x)}", x, y)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def seed_bands(runs: Sequence[RunLike], metrics: Metrics, y: str = "val_acc",
               title: str | None = None) -> go.Figure:
    """Mean +/- one standard deviation of `y` per epoch for each strategy run with several seeds."""
    fig = go.Figure()
    groups: dict[str, list[RunLike]] = {}
    for r in runs:
        groups.setdefault(str(r.config.get("strategy", r.name)), []).append(r)
    styles = _styles(runs)
    for strategy, members in groups.items():
        if len(members) < 2:
            continue
        colour = styles[members[0].id]["color"]
        by_epoch: dict[int, list[float]] = {}
        for r in members:
            for e, m in metrics.get(r.id, {}).items():
                if y in m:
                    by_epoch.setdefault(e, []).append(m[y])
        xs = sorted(e for e, v in by_epoch.items() if len(v) >= 2)
        stats = [_mean_std(by_epoch[e]) for e in xs]
        upper = [m + s for m, s in stats]
        lower = [m - s for m, s in stats]
        name = f"{strategy} (n={len(members)})"
        fig.add_trace(go.Scatter(x=[e + 1 for e in xs] + [e + 1 for e in reversed(xs)], y=upper + lower[::-1],
                                 fill="toself", fillcolor=_rgba(colour, 0.18), line=dict(width=0), mode="lines",
                                 hoverinfo="skip", showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=[e + 1 for e in xs], y=[m for m, _ in stats], name=name, legendgroup=name,
                                 mode="lines+markers", line=dict(color=colour),
                                 customdata=[s for _, s in stats],
                                 hovertemplate=f"<b>{name}</b><br>epoch %{{x}}<br>mean %{{y:.4f}} "
                                               f"± %{{customdata:.4f}}<extra></extra>"))
    return _layout(fig, title or f"{_label(y)}: mean ± std over seeds", "epoch", y)


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def train_val_gap(runs: Sequence[RunLike], metrics: Metrics, metric: str = "acc") -> go.Figure:
    """Train (dotted) and val (solid) `metric` per run: the gap between them is overfitting."""
    fig = go.Figure()
    styles = _styles(runs)
    for r in runs:
        epochs = sorted(metrics.get(r.id, {}).items())
        for split, dash in (("val", "solid"), ("train", "dot")):
            key = f"{split}_{metric}"
            pts = [(e + 1, m[key]) for e, m in epochs if key in m]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=f"{r.name} {split}",
                                     legendgroup=r.name, mode="lines+markers",
                                     line=dict(color=styles[r.id]["color"], dash=dash)))
    what = "accuracy" if metric == "acc" else "loss"
    return _layout(fig, f"train vs val {what}", "epoch", f"val_{metric}", y_title=what)


def split_counts(per_class: dict[str, dict[str, int]]) -> go.Figure:
    """Images per class in the train and val splits (stacked bars)."""
    names = list(per_class)
    fig = go.Figure([go.Bar(x=names, y=[per_class[n][split] for n in names], name=split,
                            marker_color=PALETTE[i]) for i, split in enumerate(("train", "val"))])
    fig.update_layout(barmode="stack", title="images per class", height=300,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig


def per_class_recall(runs: Sequence[RunLike], class_rows: dict[int, Sequence],
                     labels: dict[int, str] | None = None) -> go.Figure:
    """Per-class accuracy (recall) grouped by run; class_rows is {run id: [ClassMetric-like rows]}.

    Colours match the curves (one per strategy); a strategy's further seeds are hatched.
    """
    fig = go.Figure()
    styles = _styles(runs)
    for r in runs:
        rows = class_rows.get(r.id)
        if not rows:
            continue
        name = (labels or {}).get(r.id, r.name)
        hatch = "" if styles[r.id]["dash"] == "solid" else "/"
        fig.add_trace(go.Bar(x=[c.class_name for c in rows], y=[c.recall for c in rows], name=name,
                             marker=dict(color=styles[r.id]["color"], pattern_shape=hatch),
                             hovertemplate=f"<b>{name}</b><br>%{{x}}: %{{y:.1%}}<extra></extra>"))
    fig.update_layout(barmode="group", title="per-class accuracy (recall) at the best epoch", height=380,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.15))
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    return fig


def confusion_heatmap(classes: Sequence[str], matrix: Sequence[Sequence[int]], title: str = "confusion matrix",
                      normalize: bool = True) -> go.Figure:
    """Rows are true classes, columns predictions; normalized rows show each class's recall."""
    z = [[v / max(1, sum(row)) for v in row] for row in matrix] if normalize else [list(r) for r in matrix]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(classes), y=list(classes), colorscale="Blues", zmin=0, zmax=1 if normalize else None,
        customdata=[list(r) for r in matrix], text=[[str(v) for v in r] for r in matrix], texttemplate="%{text}",
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} images (%{z:.0%})<extra></extra>",
        showscale=False))
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="predicted", tickangle=-45)
    fig.update_yaxes(title="true", autorange="reversed")
    return fig


def epoch_lines(epochs: dict[int, dict[str, float]], keys: Iterable[str], title: str, y_title: str,
                log_y: bool = False, count: bool = False) -> go.Figure:
    """Several keys of one run against epoch (1-based): a trace per key that has values.

    log_y suits learning rates; count draws the y axis from zero with k / M ticks.
    """
    fig = go.Figure()
    for i, key in enumerate(keys):
        pts = [(e + 1, m[key]) for e, m in sorted(epochs.items()) if key in m]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=_label(key.removeprefix("lr/")), line=dict(color=PALETTE[i % len(PALETTE)])))
    fig = _layout(fig, title, "epoch", y_title)
    if log_y:
        fig.update_yaxes(type="log", tickformat=".0e", dtick=1)  # one labelled tick per decade
    if count:  # a count such as trainable parameters: from zero, in k / M
        fig.update_yaxes(rangemode="tozero", tickformat=".3s")
    return fig


def lr_keys(epochs: dict[int, dict[str, float]], group_order: Sequence[str] = ()) -> list[str]:
    """The lr/<group> keys a run logged, stem-side first when the group order is known."""
    keys = {k for m in epochs.values() for k in m if k.startswith("lr/")}
    order = {f"lr/{g}": i for i, g in enumerate(group_order)}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))
