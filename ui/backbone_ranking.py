"""Which backbone for my data: New run's ranking of candidate backbones before training (a job, as the
probe is: tl_core/service/jobs.py), and on Compare, after an experiment over backbones, how well that
ranking predicted what the runs measured (the rank correlation, tl_core/service/measure.py)."""

from __future__ import annotations

import streamlit as st

from tl_core import service
from tl_core.config import default, make_config
from tl_core.errors import UserError
from tl_core.service import jobs

from . import format as fmt
from . import session

HERE = ("offline", "cached")  # weights a candidate can be scored with without a download


def _ranking_config(data_path: str, backbone: str, experiment: str):
    """The settings a ranking reads: the data and its split, as the form has them (as the probe's)."""
    return make_config(
        data=data_path,
        backbone=backbone,
        experiment=experiment,
        val_fraction=st.session_state.get("val_fraction", default("val_fraction")),
        split_seed=int(st.session_state.get("split_seed", default("split_seed"))),
        test_fraction=st.session_state.get("test_fraction", default("test_fraction")),
    )


def candidates(table: list[dict], backbone: str, data_path: str | None) -> list[str]:
    """New run's "Which backbone?": candidates picked, ranked by a job (LogME, LEEP on frozen features),
    the ranking shown with one click to use the best. Returns the backbones the plan spans: the one
    chosen above, or every ranked candidate when asked (an experiment over backbones)."""
    store = session.store()
    by_name = {row["backbone"]: row for row in table}
    here = [n for n, row in by_name.items() if row["weights"] in HERE]
    st.markdown("**Which backbone for this data?**")
    options = list(dict.fromkeys([backbone, *by_name]))  # the one chosen above may be a timm/ model
    picked = st.multiselect(
        "Candidates to rank",
        options,
        default=list(dict.fromkeys([backbone, *here]))[:4],
        key="rank_candidates",
        help="Each scored from its frozen features on up to 50 training images per class (never val or test): "
        "LogME for every backbone, LEEP where its ImageNet head can be read; seconds per backbone. "
        "Weights that need a download fail offline.",
    )
    experiment = (st.session_state.get("experiment") or "").strip() or "default"
    found = session.job_result("rank_job", store)  # shown as it runs, until its result is stored
    waiting = "rank_job" in st.session_state and found is None
    if found is None or found.get("data") != data_path:
        found = jobs.latest(store, experiment, "rank-backbones", data=data_path) if data_path else None
    row = st.columns([2, 5], vertical_alignment="center")
    if row[0].button(
        "Rank the candidates",
        icon=":material/leaderboard:",
        key="rank_backbones",
        disabled=not (data_path and picked) or waiting,
        help="LogME (You et al., 2021) and LEEP (Nguyen et al., 2020): how well each backbone's frozen features "
        "suit these labels, before any training",
    ):
        try:
            cfg = _ranking_config(str(data_path), backbone, experiment)
            st.session_state["rank_job"] = jobs.start(store, "rank-backbones", cfg, ["--backbones", ",".join(picked)])
            st.rerun()
        except UserError as e:
            st.error(fmt.form_message(e), icon=":material/error:")
    if found is None:
        row[1].caption("Rank before training: which of these backbones' features suit the data best.")
        return [backbone]
    best = found["ranked"][0]
    if best["weights"] == "imagenet" and best["backbone"] != backbone:
        row[1].button(
            f"Use {best['backbone']}",
            key="use_ranked",
            icon=":material/input:",
            on_click=lambda: st.session_state.update(backbone=best["backbone"]),
            help="The best LogME of the ranking below",
        )
    _ranking_table(found)
    ranked = [s["backbone"] for s in found["ranked"] if s["weights"] == "imagenet"]
    span = st.toggle(
        f"Run the plan on every ranked backbone ({len(ranked)})",
        key="rank_span",
        disabled=len(ranked) < 2,
        help="An experiment over backbones: Compare then says how well the ranking predicted their accuracy",
    )
    return ranked if span and len(ranked) > 1 else [backbone]


def _ranking_table(found: dict) -> None:
    st.dataframe(
        [
            {
                "rank": s["rank"],
                "candidate": s["candidate"],
                "logme": s["logme"],
                "leep": s["leep"],
                "size": s["image_size"],
                "seconds": s["seconds"],
                "cache": s["feature_cache"],
            }
            for s in found["ranked"]
        ],
        hide_index=True,
        column_config={
            "rank": st.column_config.NumberColumn("Rank", width="small"),
            "candidate": "Backbone",
            "logme": st.column_config.NumberColumn("LogME", format="%.3f", help=found["scores"]["logme"]),
            "leep": st.column_config.NumberColumn("LEEP", format="%.3f", help=found["scores"]["leep"]),
            "size": st.column_config.NumberColumn("Image size", help="Each weights' native size, as the probe's"),
            "seconds": st.column_config.NumberColumn("Time", format="%.1f s"),
            "cache": st.column_config.TextColumn("Features", help="computed, or found in the feature cache"),
        },
    )
    skipped = [f"{s['candidate']} ({s['leep_skipped']})" for s in found["ranked"] if s["leep_skipped"]]
    st.caption(
        f"Scored on {found['images']} training images of {len(found['classes'])} classes in "
        f"{fmt.format_seconds(found['seconds'])}; higher is better for both."
        + (f" No LEEP for {'; '.join(skipped)}." if skipped else "")
    )


def agreement(experiment: str, which: str, metric: str, split: str) -> None:
    """Compare's "Did the ranking pick the backbone?": per strategy, the rank correlation between the
    ranking stored before the experiment and each backbone's measured score; nothing without one."""
    found = service.ranking_agreement(session.store(), experiment, which, metric, split)
    if found is None:
        return
    st.subheader("Did the ranking pick the backbone?")
    st.caption(
        f"Before training, `rank-backbones` scored each backbone from its frozen features. Here its order is set "
        f"against each backbone's {found['measure']} (the mean over its runs): Spearman's rho and Kendall's tau, "
        f"1 when the orders agree, -1 when reversed."
    )
    for row in found["by_strategy"]:
        st.markdown(f":material/leaderboard: {row['text']}")
        cols = st.columns(3)
        cols[0].metric("Spearman (LogME)", _number(row["logme"]["spearman"]), border=True)
        cols[1].metric("Kendall (LogME)", _number(row["logme"]["kendall"]), border=True)
        cols[2].metric("Spearman (LEEP)", _number(row["leep"]["spearman"] if row["leep"] else None), border=True)
        st.dataframe(row["points"], hide_index=True, key=f"ranking_points_{row['strategy']}")
    if found["unranked"]:
        st.caption(f"Not in the ranking: {', '.join(found['unranked'])}.")


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"
