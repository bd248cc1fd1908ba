"""Every LR schedule runs whole: from its start on a phase's first step to its end value on the last."""

from __future__ import annotations

import math

import pytest

from tl_core.config import make_config
from tl_core.training.schedules import lr_factor, progress
from tl_core.training.strategies import list_strategies

from .helpers import train
from .test_strategies import BASE_LR, expected_plan

# The value each schedule ends on, as a multiple of the peak LR (written out, not taken from lr_factor).
END = {"onecycle": 1 / 25e4, "cosine": 0.0, "step": 0.01, "constant": 1.0}
START = {"onecycle": 1 / 25, "cosine": 1.0, "step": 1.0, "constant": 1.0}


@pytest.mark.parametrize("schedule", sorted(END))
def test_each_schedule_starts_and_ends_where_it_says(schedule):
    steps = 37
    factors = [lr_factor(schedule, progress(i, steps)) for i in range(steps)]
    assert factors[0] == pytest.approx(START[schedule]) and factors[-1] == pytest.approx(END[schedule], abs=1e-15)


@pytest.mark.parametrize(
    "strategy, schedule",
    [(s, "onecycle") for s in list_strategies()] + [("progressive", s) for s in ("cosine", "step", "constant")],
)
def test_every_phase_ends_its_schedule_on_its_last_step_and_none_runs_past_the_run(strategy, schedule, tiny, store):
    # The case: progressive unfreezing every 3 epochs in a 5-epoch run plans its last
    # phase as epochs 4-5, not 4-6 (which would stop OneCycle at about half its peak).
    settings = dict(
        data=tiny, strategy=strategy, epochs=5, unfreeze_every=3, head_epochs=2, lr=BASE_LR, schedule=schedule
    )
    result = train(store, **settings)
    assert result.status == "completed", result.error
    groups = store.get_run(result.run_id).summary["groups"]
    epochs = store.epoch_metrics([result.run_id])[result.run_id]
    p = make_config(**settings).strategy_params()
    ends = [e for e in range(5) if e == 4 or epochs[e + 1]["trainable_groups"] != epochs[e]["trainable_groups"]]
    assert 4 in ends and (strategy not in ("progressive", "two_phase") or len(ends) == 2)
    for e in ends:  # the LR each group had on the epoch's last step
        peaks = {groups[k]: lr for k, lr in expected_plan(strategy, len(groups), e, p).items()}
        got = {k[3:]: v for k, v in epochs[e].items() if k.startswith("lr/")}
        assert got.keys() == peaks.keys()
        for g, peak in peaks.items():
            assert math.isclose(got[g], peak * END[schedule], rel_tol=1e-9, abs_tol=1e-18), (e, g, got[g], peak)
