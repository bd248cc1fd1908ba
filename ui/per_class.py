"""Per class: recall by class and confusion matrices for the runs picked, at first the best of each group.

A section of the compare page; the numbers are `service.class_rows` (validation, or test where the
comparison reports on test), read at each run's best or last epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from tl_core import service
from tl_core.service.grouping import Group
from tl_core.store.store import Run, Store

from . import charts


def per_class(
    store: Store,
    runs: Sequence[Run],
    groups: Sequence[Group],
    values: dict[int, float | None],
    label: dict[int, str],
    which: str,
    split: str,
) -> None:
    """The section: runs to pick (at first the best by `values`, the compared score), their classes' recall and
    confusion matrices."""
    finished = [r for r in runs if r.status == "completed"]
    st.subheader("Per class")
    if not finished:
        st.caption("Per-class results appear when a run completes.")
        return
    best_per_group = sorted(
        (max(g.runs, key=lambda r: values[r.id] or -1) for g in groups if any(r.status == "completed" for r in g.runs)),
        key=lambda r: -(values[r.id] or -1),
    )
    st.session_state.setdefault("compare_class_runs", [r.id for r in best_per_group[:1]])
    st.session_state["compare_class_runs"] = [
        i for i in st.session_state["compare_class_runs"] if i in {r.id for r in finished}
    ]
    picked = st.multiselect(
        "Runs to show per class",
        [r.id for r in finished],
        key="compare_class_runs",
        format_func=lambda i: label[i],
        help="At first the best run; add others to compare their classes",
    )
    class_rows = {i: rows for i in picked if (rows := service.class_rows(store, store.get_run(i), which, split))}
    if not class_rows:
        st.caption("Pick runs above to see their per-class accuracy and confusion matrices.")
        return
    shown = [r for r in runs if r.id in class_rows]
    st.plotly_chart(charts.per_class_recall(shown, class_rows, label, which), key="per_class")
    st.markdown(
        f"**Confusion matrices** on {'test' if split == 'test' else 'validation'}, at each run's {which} epoch "
        f"(rows: true class, columns: predicted)"
    )
    items = list(class_rows.items())
    for start in range(0, len(items), 3):
        for col, (run_id, rows) in zip(st.columns(3), items[start : start + 3]):
            col.plotly_chart(
                charts.confusion_heatmap(
                    [c.class_name for c in rows], [c.confusion for c in rows], title=label[run_id]
                ),
                key=f"confusion_{run_id}",
            )
