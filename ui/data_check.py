"""New run's data check: the check started as a job (as the probe is), its findings in galleries
(likely label errors, duplicates with leaks across splits first, outliers), and the dataset's
exclusion list, acted on image by image without touching the user's files.

Each image of a finding has buttons: "Exclude" (left out of the runs queued from now on) and, for
a likely label error, "Move to <suggested class>"; an image already on the list says so and offers
"Undo". The list itself, with an undo per entry, closes the section. Runs record the list as it is
when they are queued (service/exclusions.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import streamlit as st

from tl_core import service
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.service import findings, jobs
from tl_core.store import ExcludedImage, Store
from ui import format as fmt
from ui import gallery, session

JOB = "check_job"  # session_state: the check this page started
COLUMNS = 4
STEP = 8  # images of a gallery shown at first, and more per click


def section(store: Store, data_path: str, settings: dict) -> None:
    """The check's button, its findings for `data_path` and the dataset's exclusion list; `settings`:
    the run settings the check takes (backbone, image size, experiment, split)."""
    st.subheader("Check the data")
    st.caption(
        "Likely label errors, duplicates (copies across train, val and test first: a leak inflates every "
        "strategy's accuracy) and outliers, from the backbone's frozen features. Exclude an image, or move it "
        "to another class, for the runs you queue from now on: the files stay as they are, and each run "
        "records the list it used."
    )
    session.job_result(JOB, store)
    check = service.latest_check(store, data_path, settings.get("experiment"))
    started = st.session_state.get(JOB)
    if st.button(
        "Check the data",
        icon=":material/fact_check:",
        key="check_data",
        disabled=findings.CHECK not in jobs.KINDS or (started is not None and jobs.result(store, started) is None),
        help="A job: a k-fold linear model on cached frozen features ranks likely label errors (cleanlab), "
        "content hashes find exact copies, pixels and embeddings near ones, distance to every class finds outliers",
    ):
        try:
            st.session_state[JOB] = jobs.start(store, findings.CHECK, make_config(data=data_path, **settings))
            st.rerun()
        except UserError as e:
            st.error(fmt.form_message(e), icon=":material/error:")
    excluded = {e.path: e for e in service.list_exclusions(store, data_path)}
    if check is not None:
        _findings(store, data_path, check, excluded)
    else:
        st.caption("No check of this folder yet: *Check the data* runs one (seconds to a minute).")
    _excluded_list(store, data_path, excluded)


def _findings(store: Store, data_path: str, check: dict, excluded: dict[str, ExcludedImage]) -> None:
    issues, groups, outliers = check.get("label_issues", []), check.get("duplicates", []), check.get("outliers", [])
    leaks = sum(bool(g.get("cross_split")) for g in groups)
    tabs = st.tabs(
        [
            f"Likely label errors ({len(issues)})",
            f"Duplicates ({len(groups)} groups, {leaks} across splits)",
            f"Outliers ({len(outliers)})",
        ]
    )
    act = _Actions(store, data_path, excluded)
    with tabs[0]:
        if left_out := check.get("label_classes_left_out"):
            st.caption(
                "Not checked for label errors (fewer train and val images than the "
                f"{check.get('folds', 5)} folds of the model): "
                + ", ".join(f"{o['class']} ({o['images']})" for o in left_out)
                + ". Add images to them, or check with a smaller `--folds` from the CLI."
            )
        _grid(
            issues,
            "issues",
            act,
            lambda i: f"in **{i['label']}**, looks like **{i['suggested']}** · {i['score']:.2f}",
            "a likely label error",
        )
    with tabs[1]:
        if not check.get("look_alikes_shown", True):
            st.caption(
                f"Look-alikes by embeddings alone are left out: {check['look_alike_share']:.0%} of the images have "
                f"one at cosine ≥ {check['near_threshold']:g}, so the backbone's embeddings cannot tell these images "
                "apart there. Every copy by its bytes or pixels is listed."
            )
        shown = _shown("dup_groups", len(groups))
        for n, group in enumerate(groups[:shown]):
            alike = group.get("by") == ["embeddings"]  # not a copy by its bytes or pixels
            leak = (
                (" · :orange[across splits: a leak if one picture]" if alike else " · :red[across splits: a leak]")
                if group.get("cross_split")
                else ""
            )
            what = "look-alikes (embeddings alone)" if alike else f"{group.get('kind', 'near')} copies"
            st.markdown(f"**{what}** · {_similarity(group)}{leak}")
            _row(group["images"], f"dup{n}", act, lambda i: f"{i['split']} · {i['label']}", "a duplicate")
        _more("dup_groups", shown, len(groups))
    with tabs[2]:
        _grid(outliers, "outliers", act, lambda i: f"{i['split']} · {i['label']} · {i['score']:.2f}", "an outlier")


def _similarity(group: dict) -> str:
    if group.get("kind") == "exact":
        return "the same bytes"
    pixels = group.get("pixel_similarity")  # checks stored before the pixel descriptors have none
    return (f"pixels {pixels:.3f}, " if pixels is not None else "") + f"embeddings {group.get('similarity', 1.0):.3f}"


class _Actions:
    """Each image's buttons, acting on the dataset's exclusion list."""

    def __init__(self, store: Store, data_path: str, excluded: dict[str, ExcludedImage]):
        self.store, self.data, self.excluded = store, data_path, excluded

    def buttons(self, image: dict, where: str, col, kind: str) -> None:
        name = service.image_name(self.data, image["path"])
        key = f"{where}_{_digest(name)}"
        if (entry := self.excluded.get(name)) is not None:
            col.caption(_entry_text(entry))
            if col.button("Undo", key=f"undo_{key}", icon=":material/undo:"):
                self._do(lambda: service.undo_exclusion(self.store, self.data, name))
            return
        who, note = session.launched_by(), f"the check: {kind}"
        if col.button("Exclude", key=f"exclude_{key}", icon=":material/block:"):
            self._do(lambda: service.exclude_image(self.store, self.data, name, who, note))
        if (to := image.get("suggested")) and to != image.get("label"):
            if col.button(f"Move to {to}", key=f"move_{key}", icon=":material/drive_file_move:"):
                self._do(lambda: service.relabel_image(self.store, self.data, name, to, who, note))

    @staticmethod
    def _do(change: Callable[[], object]) -> None:
        try:
            change()
        except UserError as e:
            st.error(fmt.form_message(e), icon=":material/error:")
            return
        st.rerun()


def _grid(images: Sequence[dict], where: str, act: _Actions, caption: Callable[[dict], str], kind: str) -> None:
    if not images:
        st.caption("None found.")
        return
    shown = _shown(where, len(images))
    _row(images[:shown], where, act, caption, kind)
    _more(where, shown, len(images))


def _row(images: Sequence[dict], where: str, act: _Actions, caption: Callable[[dict], str], kind: str) -> None:
    for start in range(0, len(images), COLUMNS):
        for col, image in zip(st.columns(COLUMNS), images[start : start + COLUMNS]):
            name, path = Path(image["path"]).name, Path(act.data) / image["path"]  # a relative path: in the folder
            if png := gallery.thumbnail(str(path), 160):
                col.image(png, caption=name, width="stretch")
            else:
                col.caption(f":material/broken_image: {name}: the file is gone")
            col.markdown(caption(image))
            act.buttons(image, where, col, kind)


def _shown(where: str, total: int) -> int:
    return min(total, st.session_state.get(f"check_shown_{where}", STEP))


def _more(where: str, shown: int, total: int) -> None:
    if shown < total and st.button(f"Show more ({total - shown} left)", key=f"check_more_{where}"):
        st.session_state[f"check_shown_{where}"] = shown + STEP
        st.rerun()


def _excluded_list(store: Store, data_path: str, excluded: dict[str, ExcludedImage]) -> None:
    with st.expander(f"Excluded images ({len(excluded)})", expanded=bool(excluded)):
        if not excluded:
            st.caption("None: runs train on every image of the folder, under its folder's class.")
            return
        st.caption(
            "Runs queued from now on leave these out or read them as the class named; undo an entry to restore it."
        )
        for name, entry in excluded.items():
            left, right = st.columns([5, 1], vertical_alignment="center")
            left.markdown(f"`{name}` · {_entry_text(entry)}" + (f" · :gray[{entry.note}]" if entry.note else ""))
            if right.button("Undo", key=f"undo_list_{_digest(name)}", icon=":material/undo:"):
                service.undo_exclusion(store, data_path, name)
                st.rerun()


def _entry_text(entry: ExcludedImage) -> str:
    return "excluded" if entry.action == "exclude" else f"moved to **{entry.to}**"


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:12]
