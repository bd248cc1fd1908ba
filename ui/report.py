"""A comparison's downloads: a one-file HTML report (its charts, tables, statistics and settings), CSV tables.

Plotly's JavaScript is embedded once, so the file opens anywhere, offline, and can be mailed.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence

import plotly.graph_objects as go
import plotly.io as pio

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}h1{margin-bottom:0}.caption{color:#666}li{margin:.3em 0}"""


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape("" if v is None else str(v))


def table(rows: Sequence[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def build(title: str, caption: str, sections: Sequence[tuple[str, list]]) -> str:
    """`sections`: (heading, parts) where a part is a figure, a list of row dicts, or a sentence."""
    out, plotly_js = [], True
    for heading, parts in sections:
        out.append(f"<h2>{html.escape(heading)}</h2>")
        for part in parts:
            if isinstance(part, go.Figure):
                out.append(pio.to_html(part, full_html=False, include_plotlyjs=plotly_js))
                plotly_js = False  # the library once, at the first chart
            elif isinstance(part, list):
                out.append(table(part) if part else "<p class=caption>none</p>")
            else:
                out.append(f"<p>{html.escape(str(part))}</p>")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class=caption>{html.escape(caption)}</p>{''.join(out)}</body></html>"
    )


def csv_text(rows: list[dict]) -> str:
    """Rows as CSV, every key any row has as a column (in the order first seen)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
