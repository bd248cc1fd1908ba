"""Is the difference real? The compare page's verdicts: a paired t-interval per pair of strategies
(Holm-corrected over the family chosen), each strategy at its best LR where the runs span several,
and the seeds (or splits) that would settle the pairs not yet told apart, queued in one click.

The numbers are the service's (`service.statistics`, `service.to_settle`, `service.settling_plan`);
this draws them and queues what the user asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import streamlit as st

from tl_core import service
from tl_core.store import Run, Store

from . import format as fmt
from . import session

GROUP_AT = 12  # more pairs than this: one table and one button, not a line each


@dataclass
class Verdicts:
    """What the section showed, for the rest of the page and its report."""

    best_lr: bool  # each strategy compared at its best LR (chosen on validation)
    differences: list[dict]  # service.statistics' pairs
    choices: list[dict] = field(default_factory=list)  # each strategy's best LR per cell, where best_lr


@st.cache_data(show_spinner="Testing the differences…", max_entries=32)
def statistics(
    run_ids: tuple[int, ...], progress: tuple, which: str, metric: str, split: str, family: str, best_lr: bool
) -> list[dict]:
    store = session.store()
    runs = store.list_runs(run_ids=run_ids)
    return service.statistics(
        runs, store.epoch_metrics(run_ids), which, metric=metric, split=split, family=family, best_lr=best_lr
    )


def queue_more(store: Store, members: list, unit: str, add: int) -> list:
    """`add` more seeds (or splits, where the split is the unit) of exactly these runs' settings."""
    adder = service.more_splits if unit == "split" else service.more_seeds
    return adder(store, members, add, launched_by=session.launched_by())


def is_the_difference_real(
    store: Store,
    runs: Sequence[Run],
    metrics: dict,
    differing: list[str],
    which: str,
    metric: str,
    split: str,
) -> Verdicts:
    """The section, for `runs` read at `which` epoch on `metric` and `split`: its pairs, and whether
    the user chose to compare each strategy at its best LR (the data-efficiency chart then does too)."""
    measure = service.describe(metric, split, which)
    measure_short = service.describe(metric, split, which, short=True)
    progress = tuple((r.id, r.epochs_done, r.status) for r in runs)
    st.subheader("Is the difference real?")
    over_lrs = "lr" in differing and "strategy" in differing
    options = st.columns([3, 3])
    best_lr = over_lrs and options[0].toggle(
        "Each strategy at its best LR (chosen on validation)",
        key="compare_best_lr",
        help="Strategies have different best LRs: compare each at the LR whose mean validation score over seeds is "
        "highest in each cell, not all at one LR. The verdicts then read " + measure_short,
    )
    axis = service.compare.compared_axis(differing)  # the strategy, or for one strategy over backbones, the backbone
    apart = [k for k in differing if k != axis and not (best_lr and k == "lr")]  # what makes a cell
    cells = {tuple(repr(r.config.get(k)) for k in apart) for r in runs}
    family = "all"
    if len(cells) > 1:
        family = {"every pair shown": "all", "each cell's pairs": "cell"}[
            options[1].segmented_control(
                "Correct for",
                ["every pair shown", "each cell's pairs"],
                default="every pair shown",
                key="compare_family",
                help="Holm's correction keeps the chance of any false verdict at 5% over this family of pairs: every pair "
                "on the page (what you can pick from), or each cell of the grid on its own (a question per cell)",
            )
            or "every pair shown"
        ]
    differences = statistics(tuple(r.id for r in runs), progress, which, metric, split, family, best_lr)
    if best_lr:
        choices = service.lr_choices(runs, metrics, which, metric)
        st.dataframe(
            [
                {
                    **c["cell"],
                    "strategy": c["strategy"],
                    "best LR": service.lr_text(c["lr"]),
                    "val mean": c["val_mean"],
                    "runs": c["n"],
                    "LRs tried": ", ".join(f"{service.lr_text(t['lr'])}: {t['val_mean']:.1%}" for t in c["tried"]),
                }
                for c in choices
            ],
            hide_index=True,
            column_config={
                "val mean": st.column_config.NumberColumn(f"Val {service.METRICS[metric]} (mean)", format="percent")
            },
        )
        if split == "val":
            st.caption(
                ":material/warning: Without a test split these verdicts read the same validation numbers the "
                "LRs were chosen on, which flatters each strategy's best LR."
            )
    if not differences:
        st.caption(
            "With two or more strategies run on the same settings and seeds, each pair gets a paired t-interval "
            f"of the difference in {measure_short} here (more seeds, narrower intervals)."
        )
    else:
        st.caption(
            fmt.verdict_method(measure, differences, best_lr) + " A verdict holds for the split(s) it names; "
            "vary the split (`--split-seeds`) to claim more. **Add N seeds** offers the seeds that would find a "
            f"difference of the observed size 80% of the time (at most {service.SEEDS_OFFERED} in all)."
        )

    unsure = [d for d in differences if service.to_settle(d)]
    if len(differences) <= GROUP_AT:  # a few pairs: each with its own button
        for i, d in enumerate(differences):
            where = " · ".join(f"{k} {v}" for k, v in d["cell"].items())
            line = st.columns([6, 1], vertical_alignment="center")
            icon = ":material/check_circle:" if d["verdict"] in ("a", "b") else ":material/help:"
            line[0].markdown(f"{icon} {d['text']}" + (f"  \n:gray[{where}]" if where else ""))
            if (plan := service.to_settle(d)) and line[1].button(
                f"Add {plan['add']} {plan['unit']}{'s' * (plan['add'] != 1)}",
                key=f"more_seeds_{i}",
                help=f"{plan['text'][0].upper()}{plan['text'][1:]}. Queues them for exactly these two strategies on "
                f"these settings",
            ):
                queued = queue_more(store, [r for r in runs if r.id in set(d["run_ids"])], plan["unit"], plan["add"])
                st.toast(
                    f"Queued {len(queued)} runs: {d['a']} and {d['b']} with {plan['add']} more "
                    f"{plan['unit']}{'s' * (plan['add'] != 1)} each",
                    icon=":material/add_circle:",
                )
    else:  # a grid's hundreds of pairs: one table, one button
        st.dataframe(
            [
                {
                    "where": " · ".join(f"{k} {v}" for k, v in d["cell"].items()),
                    "verdict": d["text"],
                    "p (Holm)": d["p_adjusted"],
                }
                for d in differences
            ],
            hide_index=True,
            column_config={
                "verdict": st.column_config.TextColumn("Verdict", width="large"),
                "p (Holm)": st.column_config.NumberColumn(format="%.3g", width="small"),
            },
        )
        plan = service.settling_plan(runs, unsure)
        if plan and st.button(
            f"Add the seeds that would settle the {len(unsure)} pairs not yet told apart",
            key="more_seeds_all",
            help="Each group of runs gets the most any of its pairs asks, "
            f"up to {service.SEEDS_OFFERED} seeds (or splits) in all",
        ):
            queued = [r for members, unit, add in plan for r in queue_more(store, members, unit, add)]
            st.toast(f"Queued {len(queued)} runs", icon=":material/add_circle:")
    return Verdicts(bool(best_lr), differences, choices if best_lr else [])
