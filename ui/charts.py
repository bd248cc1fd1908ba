"""Charts: pure functions from runs and metric rows to plotly figures (no streamlit here).

A curve figure draws one trace per run, named after the run, so a legend entry is a run; runs of
one strategy share a colour (seeds differ by dash); an epoch where a strategy unfroze more layer
groups is a larger diamond, and hovering any epoch says what trained then. Past a dozen runs the
pages draw groups instead (`group_bands`: a mean line and a band per group of seeds, one legend
entry each), so hundreds of runs stay readable and fast.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Protocol, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

Metrics = dict[int, dict[int, dict[str, float]]]  # {run_id: {epoch (0-based): {key: value}}}
PALETTE = qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
LABELS = {"val_acc": "val accuracy", "val_loss": "val loss", "train_acc": "train accuracy",
          "train_loss": "train loss", "val_top5": "val top-5 accuracy", "epoch": "epoch",
          "wall_seconds": "wall-clock time (s)", "target_acc": "target-domain accuracy",
          "target_loss": "target-domain loss", "reg_share": "regularizer's share of the loss",
          "reg_penalty": "regularizer penalty", "domain_acc": "domain discriminator accuracy",
          "domain_loss": "domain loss"}
DRIFT_TITLE = "drift ||w − w0|| / ||w0||"


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
        last = max((v for trace in fig.data if trace.x is not None for v in trace.x if v is not None and v == v),
                   default=1)
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


def phases(epochs: dict[int, dict[str, float]]) -> list[tuple[int, int, int]]:
    """The fine-tuning timeline: (first epoch, last epoch, trainable groups), 1-based, per phase."""
    out: list[tuple[int, int, int]] = []
    for e, m in sorted(epochs.items()):
        n = int(m.get("trainable_groups", 0))
        if out and out[-1][2] == n and out[-1][1] == e:
            out[-1] = (out[-1][0], e + 1, n)
        else:
            out.append((e + 1, e + 1, n))
    return out


def timeline_text(m: dict[str, float]) -> str:
    """What trains at an epoch: trainable groups and parameters, and each group's LR."""
    lrs = ", ".join(f"{k[3:]} {v:.1e}" for k, v in m.items() if k.startswith("lr/"))
    parts = []
    if "trainable_groups" in m:
        parts.append(f"{int(m['trainable_groups'])} groups train")
    if "trainable_params" in m:
        parts.append(f"{m['trainable_params'] / 1e6:.2f}M trainable parameters")
    return " · ".join(parts) + (f"<br>LR {lrs}" if lrs else "")


def _x(e: int, m: dict[str, float], x: str) -> float | None:
    return e + 1 if x == "epoch" else m.get(x)


def _smoothed(ys: list[float], smoothing: float) -> list[float]:
    from tl_core.service import smooth

    return smooth(ys, smoothing) if smoothing else ys


def curves(runs: Sequence[RunLike], metrics: Metrics, y: str = "val_acc", x: str = "epoch",
           title: str | None = None, smoothing: float = 0.0) -> go.Figure:
    """`y` against epoch (1-based) or wall_seconds: one trace per run, unfreeze steps marked, and on
    hover what trained at that epoch (the fine-tuning timeline). WebGL past a few thousand points."""
    fig = go.Figure()
    styles = _styles(runs)
    many = sum(len(metrics.get(r.id, {})) for r in runs) > 2000
    trace = go.Scattergl if many else go.Scatter
    for r in runs:
        epochs = metrics.get(r.id, {})
        points = [(e, m) for e, m in sorted(epochs.items()) if y in m and _x(e, m, x) is not None]
        steps = unfreeze_epochs(epochs)
        fig.add_trace(trace(
            x=np.array([_x(e, m, x) for e, m in points], dtype=float),
            y=np.array(_smoothed([m[y] for _, m in points], smoothing)), name=r.name,
            mode="lines" if many else "lines+markers", line=dict(color=styles[r.id]["color"], dash=styles[r.id]["dash"]),
            marker=dict(symbol=["diamond" if e in steps else "circle" for e, _ in points],
                        size=[13 if e in steps else 6 for e, _ in points],
                        line=dict(width=[1.5 if e in steps else 0 for e, _ in points], color="black")),
            text=[("<b>unfroze</b> · " if e in steps else "") + timeline_text(m) for e, m in points],
            hovertemplate=f"<b>{r.name}</b><br>{_label(x)} %{{x}}<br>{_label(y)} %{{y:.4f}}<br>%{{text}}<extra></extra>",
        ))
    return _layout(fig, title or f"{_label(y)} by {_label(x)}", x, y)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


Group = tuple[str, Sequence[RunLike]]  # a label and its runs (seeds of one setting)


def _band(fig: go.Figure, name: str, colour: str, xs: list, stats: list[tuple[float, float]], x_title: str,
          y_title: str, dash: str = "solid", showlegend: bool = True) -> None:
    """A mean line with a +/- one standard deviation band, one legend entry."""
    # numpy arrays: plotly takes them whole (lists it validates value by value, slow for big grids)
    x, mean, std = np.asarray(xs, dtype=float), np.array([m for m, _ in stats]), np.array([s for _, s in stats])
    trace = go.Scatter  # SVG: faster than WebGL here for bands (measured; headless Chromium renders WebGL in software)
    fig.add_trace(trace(x=np.concatenate([x, x[::-1]]), y=np.concatenate([mean + std, (mean - std)[::-1]]),
                        fill="toself", fillcolor=_rgba(colour, 0.18), line=dict(width=0), mode="lines",
                        hoverinfo="skip", showlegend=False, legendgroup=name))
    fig.add_trace(trace(x=x, y=mean, name=name, legendgroup=name, mode="lines",
                             line=dict(color=colour, dash=dash), customdata=std,
                             showlegend=showlegend,
                             hovertemplate=f"<b>{name}</b><br>{x_title} %{{x}}<br>{y_title} %{{y:.4f}} "
                                           f"± %{{customdata:.4f}}<extra></extra>"))


def group_bands(groups: Sequence[Group], metrics: Metrics, y: str = "val_acc", title: str | None = None,
                smoothing: float = 0.0, min_runs: int = 1) -> go.Figure:
    """Mean +/- one standard deviation of `y` per epoch, one line and band per group of runs:
    hundreds of runs drawn as a legend entry per group."""
    fig = go.Figure()
    for i, (label, members) in enumerate(groups):
        if len(members) < min_runs:
            continue
        xs, mean, std = _epoch_stats(members, metrics, y, min_runs)
        if not len(xs):
            continue
        mean = np.array(_smoothed(list(mean), smoothing)) if smoothing else mean
        _band(fig, f"{label} (n={len(members)})", PALETTE[i % len(PALETTE)], xs + 1, list(zip(mean, std)), "epoch",
              _label(y))
    return _layout(fig, title or f"{_label(y)}: mean ± std per group", "epoch", y)


def _epoch_stats(members: Sequence[RunLike], metrics: Metrics, y: str, min_runs: int = 1):
    """(epochs, mean, sample std) of `y` over runs, at the epochs with at least `min_runs` values."""
    last = max((e for r in members for e in metrics.get(r.id, {})), default=-1)
    values = np.full((len(members), last + 1), np.nan)
    for row, r in enumerate(members):
        for e, m in metrics.get(r.id, {}).items():
            values[row, e] = m.get(y, np.nan)
    counts = (~np.isnan(values)).sum(0)
    keep = np.flatnonzero(counts >= max(min_runs, 1))
    if not len(keep):
        return keep, keep, keep
    kept = values[:, keep]
    with warnings.catch_warnings():  # an epoch with one value has no spread: 0, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(kept, 0)
        std = np.nan_to_num(np.nanstd(kept, 0, ddof=1)) if len(members) > 1 else np.zeros(len(keep))
    return keep, mean, np.where(counts[keep] > 1, std, 0.0)


def seed_bands(runs: Sequence[RunLike], metrics: Metrics, y: str = "val_acc",
               title: str | None = None) -> go.Figure:
    """Mean +/- one standard deviation of `y` per epoch for each strategy run with several seeds."""
    groups: dict[str, list[RunLike]] = {}
    for r in runs:
        groups.setdefault(str(r.config.get("strategy", r.name)), []).append(r)
    return group_bands(list(groups.items()), metrics, y, title or f"{_label(y)}: mean ± std over seeds", min_runs=2)


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def train_val_gap(runs: Sequence[RunLike], metrics: Metrics, metric: str = "acc",
                  groups: Sequence[Group] | None = None) -> go.Figure:
    """Train (dotted) and val (solid) `metric` per run, or per group's mean: the gap is overfitting."""
    fig = go.Figure()
    what = "accuracy" if metric == "acc" else "loss"
    if groups is not None:
        for i, (label, members) in enumerate(groups):
            for split, dash in (("val", "solid"), ("train", "dot")):
                key = f"{split}_{metric}"
                by_epoch: dict[int, list[float]] = {}
                for r in members:
                    for e, m in metrics.get(r.id, {}).items():
                        if key in m:
                            by_epoch.setdefault(e, []).append(m[key])
                xs = sorted(by_epoch)
                if xs:
                    _band(fig, f"{label} {split}", PALETTE[i % len(PALETTE)], [e + 1 for e in xs],
                          [_mean_std(by_epoch[e]) for e in xs], "epoch", what, dash=dash)
        return _layout(fig, f"train vs val {what}", "epoch", f"val_{metric}", y_title=what)
    styles = _styles(runs)
    for r in runs:
        epochs = sorted(metrics.get(r.id, {}).items())
        for split, dash in (("val", "solid"), ("train", "dot")):
            key = f"{split}_{metric}"
            pts = [(e + 1, m[key]) for e, m in epochs if key in m]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=f"{r.name} {split}",
                                     legendgroup=r.name, mode="lines+markers",
                                     line=dict(color=styles[r.id]["color"], dash=dash)))
    return _layout(fig, f"train vs val {what}", "epoch", f"val_{metric}", y_title=what)


def timeline(rows: Sequence[Group], metrics: Metrics) -> go.Figure:
    """The fine-tuning timeline: per run (or group of seeds, read from its first run) a bar per phase,
    its length the epochs it lasted and its shade the layer groups that trained; hover says what."""
    fig = go.Figure()
    most = max((m.get("trainable_groups", 0) for _, rs in rows for r in rs[:1]
                for m in metrics.get(r.id, {}).values()), default=1) or 1
    for label, members in rows:
        if not members:
            continue
        epochs = metrics.get(members[0].id, {})
        for first, last, n in phases(epochs):
            m = epochs[first - 1]
            fig.add_trace(go.Bar(
                y=[label], x=[last - first + 1], base=[first - 0.5], orientation="h", showlegend=False,
                marker=dict(color=_rgba(PALETTE[0], 0.25 + 0.75 * n / most), line=dict(width=1, color="white")),
                text=[f"{n} group{'s' if n != 1 else ''}"], textposition="inside", insidetextanchor="middle",
                hovertemplate=f"<b>{label}</b><br>epochs {first}-{last}<br>{timeline_text(m)}<extra></extra>"))
    fig.update_layout(title="fine-tuning timeline: what trains, epoch by epoch", barmode="overlay",
                      height=max(200, 60 + 28 * len(rows)), margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="epoch", tick0=1, dtick=1 if max((len(metrics.get(rs[0].id, {})) for _, rs in rows if rs),
                                                           default=1) <= 20 else None)
    fig.update_yaxes(autorange="reversed")
    return fig


def shade_phases(fig: go.Figure, epochs: dict[int, dict[str, float]]) -> go.Figure:
    """Shaded spans for each phase of one run's fine-tuning, labelled with the groups that train."""
    spans = phases(epochs)
    if len(spans) < 2:
        return fig
    for i, (first, last, n) in enumerate(spans):
        fig.add_vrect(x0=first - 0.5, x1=last + 0.5, fillcolor=PALETTE[i % len(PALETTE)], opacity=0.08,
                      line_width=0, annotation_text=f"{n} group{'s' if n != 1 else ''}", annotation_position="top left")
    return fig


def data_efficiency(report: dict, y_title: str = "best val accuracy") -> go.Figure:
    """Val accuracy against training images per class (log x), a line and band per group of runs,
    crossovers marked where one group overtakes another."""
    fig = go.Figure()
    for i, (label, points) in enumerate(report["curves"].items()):
        xs = [p["images_per_class"] for p in points]
        _band(fig, label, PALETTE[i % len(PALETTE)], xs, [(p["mean"], p["std"]) for p in points],
              "images per class", y_title)
        fig.data[-1].update(mode="lines+markers")
    # One layout update for every marker (plotly's add_vline redraws the layout each call); on a
    # log axis, shapes and annotations take log10 coordinates.
    crossings = report.get("crossovers", [])
    fig.update_layout(
        shapes=[dict(type="line", xref="x", yref="paper", x0=math.log10(c["x"]), x1=math.log10(c["x"]), y0=0, y1=1,
                     line=dict(dash="dash", color="grey")) for c in crossings],
        annotations=[dict(x=math.log10(c["x"]), xref="x", yref="paper", y=1, text=f"~{c['x']:g}", showarrow=False,
                          yanchor="bottom") for c in crossings])
    fig.update_layout(title="how much data: accuracy against training images per class", height=380,
                      margin=dict(l=10, r=10, t=50, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))
    fig.update_xaxes(type="log", title="training images per class (log)")
    fig.update_yaxes(title=y_title, tickformat=".0%")
    return fig


def lr_finder(result: dict) -> go.Figure:
    """The LR range test: smoothed loss against LR (log x), the suggestion marked with its rule."""
    fig = go.Figure(go.Scatter(x=result["lrs"], y=result["losses"], mode="lines", name="smoothed loss",
                               hovertemplate="LR %{x:.2e}<br>loss %{y:.4f}<extra></extra>"))
    i = result["suggestion_index"]
    fig.add_trace(go.Scatter(x=[result["lrs"][i]], y=[result["losses"][i]], mode="markers",
                             marker=dict(size=14, symbol="star", color="crimson"),
                             name=f"suggested {result['suggested_lr']:.1e}",
                             hovertemplate=f"suggested LR %{{x:.2e}}<br>{result['rule_description']}<extra></extra>"))
    fig.update_layout(title=f"LR finder: {result.get('strategy', '')} on {result.get('backbone', '')}", height=360,
                      margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))
    fig.update_xaxes(type="log", title="learning rate (log)", exponentformat="e")
    fig.update_yaxes(title="training loss (smoothed)")
    return fig


def split_counts(per_class: dict[str, dict[str, int]]) -> go.Figure:
    """Images per class in the train, val and (where there is one) test splits (stacked bars)."""
    names = list(per_class)
    splits = [s for s in ("train", "val", "test") if any(per_class[n].get(s) for n in names)] or ["train", "val"]
    fig = go.Figure([go.Bar(x=names, y=[per_class[n].get(split, 0) for n in names], name=split,
                            marker_color=PALETTE[i]) for i, split in enumerate(splits)])
    fig.update_layout(barmode="stack", title="images per class", height=300,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig


def per_class_recall(runs: Sequence[RunLike], class_rows: dict[int, Sequence],
                     labels: dict[int, str] | None = None, which: str = "best") -> go.Figure:
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
    fig.update_layout(barmode="group", title=f"per-class accuracy (recall) at the {which} epoch", height=380,
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
        pts = [(e + 1, m[key], timeline_text(m)) for e, m in sorted(epochs.items()) if key in m]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=_label(key.removeprefix("lr/")), line=dict(color=PALETTE[i % len(PALETTE)]),
                                     text=[p[2] for p in pts],
                                     hovertemplate="epoch %{x}<br>%{y:.4g}<br>%{text}<extra>%{fullData.name}</extra>"))
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


def share_lines(epochs: dict[int, dict[str, float]], keys: Iterable[str], title: str, y_title: str) -> go.Figure:
    """Like `epoch_lines`, for shares and accuracies in 0..1: percent ticks from zero."""
    fig = epoch_lines(epochs, keys, title, y_title)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return fig


def layer_drift(drift: dict[str, Sequence[float | None]],
                title: str = "Layer drift: how far each group moved from its start") -> go.Figure:
    """Each layer group's relative change since training began against epoch (1-based), a line per
    group coloured stem (dark) to head (light); a group that never moved (frozen) is a grey dotted
    line at 0, named so in the legend."""
    fig = go.Figure()
    colours = sample_colorscale("Viridis", [i / max(1, len(drift) - 1) * 0.85 for i in range(len(drift))])
    for colour, (group, values) in zip(colours, drift.items()):
        pts = [(e + 1, v) for e, v in enumerate(values) if v is not None]
        frozen = all(v == 0 for _, v in pts)
        fig.add_trace(go.Scatter(
            x=[e for e, _ in pts], y=[v for _, v in pts], mode="lines+markers",
            name=f"{group} (frozen: 0)" if frozen else group,
            line=dict(color="grey" if frozen else colour, dash="dot" if frozen else "solid"),
            marker=dict(size=5 if frozen else 6),
            hovertemplate=f"<b>{group}</b><br>epoch %{{x}}<br>moved %{{y:.2%}} of its starting norm<extra></extra>"))
    fig = _layout(fig, title, "epoch", "drift", y_title=DRIFT_TITLE)
    # From zero, and a little below it, so that frozen groups' lines on 0 stay in sight.
    top = max((v for values in drift.values() for v in values if v is not None), default=0) or 0.01
    fig.update_yaxes(tickformat=".1%", range=[-0.04 * top, 1.08 * top])
    fig.update_layout(height=360 + 20 * (len(drift) // 3))  # room for a legend entry per group
    return fig


def drift_overlay(report: dict, runs: Sequence[RunLike] = (), which: str = "best") -> go.Figure:
    """Each layer group's drift (x: the groups, stem to head) at each run's best or last epoch: a
    line per run, coloured as its curves, or per group of seeds (their mean, ± one std as error
    bars). `report` is `service.drift_profiles`'s answer."""
    fig = go.Figure()
    styles = _styles(runs)
    for i, p in enumerate(report["profiles"]):
        groups = [g for g in report["groups"] if g in p["drift"]]
        style = styles.get(p["run_ids"][0]) if p["n"] == 1 else None
        name = p["label"] if p["n"] == 1 else f"{p['label']} (n={p['n']})"
        fig.add_trace(go.Scatter(
            x=groups, y=[p["drift"][g] for g in groups], name=name, mode="lines+markers",
            line=dict(color=style["color"] if style else PALETTE[i % len(PALETTE)],
                      dash=style["dash"] if style else "solid"),
            error_y=dict(type="data", array=[p["std"][g] for g in groups], visible=p["n"] > 1, thickness=1),
            hovertemplate=f"<b>{name}</b><br>%{{x}}: moved %{{y:.2%}}<extra></extra>"))
    fig.update_layout(title=f"layer drift at the {which} epoch: stem (left) to head (right)", height=380,
                      margin=dict(l=10, r=10, t=50, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))
    fig.update_xaxes(title="layer group", type="category", categoryorder="array", categoryarray=report["groups"])
    fig.update_yaxes(title=DRIFT_TITLE, tickformat=".1%", rangemode="tozero")
    return fig


def forgetting_scatter(points: Sequence[dict], runs: Sequence[RunLike] = (), which: str = "best") -> go.Figure:
    """Forgetting against learning: knowledge kept (x) and val accuracy on the new task (y), a point
    per run (from `service.forgetting_points`), a colour and legend entry per strategy; hover names
    the run. Up and to the right learned the new task and kept the old."""
    fig = go.Figure()
    styles = _styles(runs)
    by_strategy: dict[str, list[dict]] = {}
    for p in points:
        by_strategy.setdefault(str(p.get("strategy") or p["name"]), []).append(p)
    for i, (strategy, members) in enumerate(by_strategy.items()):
        colour = styles[members[0]["id"]]["color"] if members[0]["id"] in styles else PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(
            x=[p["knowledge_kept"] for p in members], y=[p["val_acc"] for p in members], mode="markers",
            name=strategy, marker=dict(size=11, color=colour, line=dict(width=1, color="white")),
            text=[p["name"] for p in members],
            customdata=[[p.get("images") or 0, "–" if p.get("target_acc") is None else f"{p['target_acc']:.1%}"]
                        for p in members],
            hovertemplate="<b>%{text}</b><br>knowledge kept %{x:.1%} (on %{customdata[0]} images)<br>"
                          f"val accuracy ({which} epoch) %{{y:.1%}}<br>target-domain accuracy %{{customdata[1]}}"
                          "<extra></extra>"))
    fig.update_layout(title="forgetting: knowledge kept against accuracy on the new task", height=380,
                      margin=dict(l=10, r=10, t=50, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0))
    fig.update_xaxes(title="knowledge kept after training (ImageNet top-1 agreement)", tickformat=".0%")
    fig.update_yaxes(title=f"val accuracy ({which} epoch)", tickformat=".0%")
    return fig


# --- a run's predictions: its confusion cells, what changed against another run, top-k ----------


def confusion_cells(classes: Sequence[str], matrix: Sequence[Sequence[int]],
                    title: str = "click a cell to see its images (rows: true class, columns: predicted)") -> go.Figure:
    """The confusion matrix as a grid of square markers (rows: true class, columns: predicted), so a
    click on a cell is a selectable point (Plotly reports no point selection on a heatmap). Colour is
    the share of the true class's images, the text the count; customdata is [true, predicted]."""
    n = len(classes)
    cells = [(t, p) for t in range(n) for p in range(n)]
    share = [matrix[t][p] / max(1, sum(matrix[t])) for t, p in cells]
    size = max(10, min(56, 360 // max(1, n)))
    fig = go.Figure(go.Scatter(
        x=[classes[p] for _, p in cells], y=[classes[t] for t, _ in cells], mode="markers+text",
        marker=dict(symbol="square", size=size, color=share, colorscale="Blues", cmin=0, cmax=1,
                    line=dict(width=1, color="rgba(0,0,0,0.15)")),
        text=[str(matrix[t][p]) if matrix[t][p] else "" for t, p in cells], textposition="middle center",
        textfont=dict(color=["white" if s > 0.5 else "black" for s in share]),
        customdata=[[t, p, matrix[t][p]] for t, p in cells],
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[2]} images<extra></extra>"))
    fig.update_layout(title=title, height=max(360, size * n + 160), margin=dict(l=10, r=10, t=50, b=10),
                      clickmode="event+select", plot_bgcolor="white")
    fig.update_xaxes(title="predicted", tickangle=-45, type="category", categoryorder="array",
                     categoryarray=list(classes), showgrid=False)
    fig.update_yaxes(title="true", type="category", categoryorder="array", categoryarray=list(classes)[::-1],
                     showgrid=False)
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
    fig = go.Figure(go.Heatmap(
        z=good, x=list(classes), y=list(classes), colorscale="RdBu", zmid=0, zmin=-top, zmax=top,
        customdata=[list(r) for r in delta], text=[[f"{v:+d}" if v else "" for v in r] for r in delta],
        texttemplate="%{text}", showscale=False,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata:+d} images against the reference<extra></extra>"))
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="predicted", tickangle=-45)
    fig.update_yaxes(title="true", autorange="reversed")
    return fig


def class_deltas(rows: Sequence[dict], title: str) -> go.Figure:
    """Per-class accuracy change against the reference (rows from `service.diff(...).class_deltas`)."""
    fig = go.Figure(go.Bar(
        x=[r["class"] for r in rows], y=[r["delta"] for r in rows],
        marker_color=["#2166ac" if r["delta"] > 0 else "#b2182b" if r["delta"] < 0 else "#999999" for r in rows],
        customdata=[[r["reference_acc"], r["acc"], r["images"]] for r in rows],
        hovertemplate="%{x}: %{customdata[0]:.1%} → %{customdata[1]:.1%} (%{y:+.1%}) on %{customdata[2]} images"
                      "<extra></extra>"))
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="true class", tickangle=-45)
    fig.update_yaxes(title="accuracy change (points)", tickformat="+.0%", zeroline=True)
    return fig


def top_k(top: Sequence[dict], title: str = "top classes") -> go.Figure:
    """The top-k classes of one image as horizontal bars, most probable on top."""
    fig = go.Figure(go.Bar(
        x=[t["prob"] for t in top], y=[t["class"] for t in top], orientation="h", marker_color=PALETTE[0],
        text=[f"{t['prob']:.1%}" for t in top], textposition="auto",
        hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(title=title, height=max(180, 60 + 34 * len(top)), margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    fig.update_yaxes(autorange="reversed", type="category")
    return fig
