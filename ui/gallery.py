"""Images on a page: thumbnails of a run's stored predictions, and what a prediction job returned
(the model's view of an image, its heat maps), each captioned; an image the data check flagged
(a likely label error, a duplicate, an outlier: service.flagged) says so under it."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import streamlit as st

from tl_core import service
from ui import format as fmt

COLUMNS = 6


@st.cache_data(show_spinner=False, max_entries=2048)
def thumbnail(path: str, size: int = 160) -> bytes | None:
    return service.thumbnail(path, size)


def predictions(
    preds: Sequence,
    classes: list[str],
    columns: int = COLUMNS,
    size: int = 160,
    flags: Mapping[str, str] | None = None,
) -> None:
    """A grid of stored predictions in the order given, each captioned with its classes; a file
    that is gone says so in place of its thumbnail; one of `flags` (path: what the check said) is
    marked as flagged by the data check."""
    for start in range(0, len(preds), columns):
        for col, p in zip(st.columns(columns), preds[start : start + columns]):
            caption = fmt.prediction_caption(p, classes)
            if png := thumbnail(p.path, size):
                col.image(png, caption=caption, width="stretch")
            else:
                col.caption(f":material/broken_image: {caption}: the file is gone ({p.path})")
            if flags and (flag := flags.get(p.path)):
                col.caption(f":orange[:material/flag: flagged by the data check: {flag}]")


def some(preds: Sequence, classes: list[str], key: str, step: int = 12, flags: Mapping[str, str] | None = None) -> int:
    """The first `step` of `preds` in a grid (those in `flags` marked as the check flagged them), and a
    button that shows `step` more; how many are shown."""
    shown = min(len(preds), st.session_state.get(key, step))
    predictions(preds[:shown], classes, flags=flags)
    if shown < len(preds):
        if st.button(
            f"Show {min(step, len(preds) - shown)} more (of {len(preds) - shown} left)",
            key=f"{key}_more",
            icon=":material/expand_more:",
        ):
            st.session_state[key] = shown + step
            st.rerun()
    return shown


def png(b64: str) -> bytes:
    """A PNG that a prediction job sent as base64."""
    return base64.b64decode(b64)
