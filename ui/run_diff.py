"""Image by image: what one run fixed and broke against a reference run validated on the same images.

A section of the compare page: the runs that stored their validation predictions, a reference and
another run to pick, the counts (fixed, broken, still wrong), the change in the confusion matrix
and per class, and the images of each kind (service.diff); and the images every run gets wrong
(service.wrong_in_every_run). An image the data check flagged is marked so (service.flagged).
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from tl_core import service
from tl_core.errors import UserError
from tl_core.store import Run, Store

from . import charts, gallery


def image_by_image(store: Store, runs: Sequence[Run], label: dict[int, str]) -> None:
    """The section, for `runs` (labelled as `label` names them); nothing where no two runs can be compared."""
    comparable = {r.id: service.references(store, r, runs) for r in runs if r.summary.predictions}
    comparable = {i: others for i, others in comparable.items() if others}
    if not comparable:
        return
    st.subheader("Image by image")
    st.caption(
        "Each run's predictions at its best epoch, image by image against a reference run validated on the "
        "same images: what the other run fixed (wrong in the reference, right in it), broke, and still gets "
        "wrong."
    )
    choose = st.columns(2)
    by_id = {r.id: r for r in runs}
    if st.session_state.get("compare_reference") not in comparable:  # another experiment or selection
        st.session_state.pop("compare_reference", None)
    reference_id = choose[0].selectbox(
        "Reference run", list(comparable), key="compare_reference", format_func=lambda i: label[i]
    )
    others = [o.id for o in comparable[reference_id]]
    if st.session_state.get("compare_against") not in others:
        st.session_state.pop("compare_against", None)
    other_id = choose[1].selectbox("Against", others, key="compare_against", format_func=lambda i: label[i])
    try:
        d = service.diff(store, reference_id, other_id)
    except UserError as e:
        st.info(str(e), icon=":material/info:")
    else:
        classes = list(by_id[reference_id].summary.classes)
        m = st.columns(5)
        m[0].metric("Fixed", len(d.fixed), border=True, help="Wrong in the reference, right in this run")
        m[1].metric("Broken", len(d.broken), border=True, help="Right in the reference, wrong in this run")
        m[2].metric("Still wrong", len(d.still_wrong), border=True, help="Wrong in both")
        m[3].metric("Both right", d.both_right, border=True)
        m[4].metric("Net", f"{d.net:+d}", border=True, help=f"Fixed minus broken, on {d.shared} shared images")
        if d.unmatched:
            st.caption(f"{d.unmatched} validation images were seen by only one of the two runs and are left out.")
        a, b = st.columns(2)
        a.plotly_chart(
            charts.confusion_delta(
                classes, d.confusion_delta, f"confusion matrix: {label[other_id]} minus {label[reference_id]}"
            ),
            key="confusion_delta",
        )
        b.plotly_chart(
            charts.class_deltas(d.class_deltas, f"per-class accuracy: {label[other_id]} against {label[reference_id]}"),
            key="class_deltas",
        )
        every = service.wrong_in_every_run(store, list(runs))
        data, experiment = str(by_id[reference_id].config.get("data", "")), by_id[reference_id].experiment
        flags = service.flagged(store, data, [p.path for p in [*d.still_wrong, *every]], experiment)
        for tab, (kind, images) in zip(
            st.tabs([f"Fixed ({len(d.fixed)})", f"Broken ({len(d.broken)})", f"Still wrong ({len(d.still_wrong)})"]),
            [("fixed", d.fixed), ("broken", d.broken), ("still_wrong", d.still_wrong)],
        ):
            with tab:
                if not images:
                    st.caption("None.")
                else:
                    gallery.some(images, classes, key=f"compare_{kind}_{reference_id}_{other_id}", flags=flags)
        _wrong_in_every_run(every, classes, flags)


def _wrong_in_every_run(every: list, classes: list[str], flags: dict[str, str]) -> None:
    """The images every run compared gets wrong, those the data check flagged marked as such."""
    with st.expander(f"Wrong in every run ({len(every)})", expanded=any(p.path in flags for p in every)):
        st.caption(
            "The validation images every run compared here with stored predictions gets wrong, worst first; "
            "those the data check flagged say what it found (New run: Check the data), so that a label error "
            "is not read as every strategy's failure."
        )
        if every:
            gallery.some(every, classes, key="compare_every_wrong", flags=flags)
