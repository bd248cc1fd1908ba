"""Every strategy trains exactly the groups it names, each at exactly the LR it specifies."""

from __future__ import annotations

import pytest

from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.training.strategies import StrategyParams, get_strategy, list_strategies

from .helpers import train

BASE_LR = 0.01
EPOCHS = 3


def expected_plan(name: str, n_groups: int, epoch: int, p: StrategyParams) -> dict[int, float]:
    """{group index (0 = stem, n_groups-1 = head): LR} that the issue specifies, written out
    independently of tl_core.training.strategies."""
    L = n_groups
    head_only = {L - 1: BASE_LR}
    every = {k: BASE_LR for k in range(L)}

    def disc(n, scale=1.0):  # lr_k = base / decay^(L-k), k = 1..L, for the top n groups
        return {k - 1: scale * BASE_LR / p.lr_decay ** (L - k) for k in range(L - n + 1, L + 1)}

    stage = min(L, 1 + epoch // p.unfreeze_every)  # progressive: groups trainable now
    return {
        "feature_extraction": head_only,
        # the pretrained groups below the head at discriminative LRs, the new head at the base LR
        "partial": disc(p.unfreeze + 1),
        # the pretrained body at the base LR, the new head at head_lr_factor x base
        "full": {**every, L - 1: BASE_LR * p.head_lr_factor},
        "two_phase": head_only if epoch < p.head_epochs else {k: BASE_LR * p.phase2_lr_factor for k in range(L)},
        "discriminative": disc(L),
        # every unfreezing step multiplies the plan by stage_lr_factor
        "progressive": disc(stage, p.stage_lr_factor ** (stage - 1)),
        "scratch": every,
        # every group from the first epoch at the base LR: EfficientNet-Lite's stem is one convolution
        # (stride 2, "same" padding computed per input: timm's Conv2dSame), which takes no adapter
        "lora": {k: BASE_LR for k in range(1, L)},
        "bitfit": every,  # every group has biases (its BatchNorms')
    }[name]


@pytest.mark.parametrize("name", list_strategies())
def test_param_groups_and_lrs_are_as_specified(name, tiny, store):
    settings = dict(
        data=tiny,
        backbone="efficientnet_lite0",
        strategy=name,
        epochs=EPOCHS,
        lr=BASE_LR,
        schedule="constant",
        unfreeze=2,
        lr_decay=2.5,
        head_epochs=1,
        unfreeze_every=1,
        head_lr_factor=10,
        stage_lr_factor=0.5,
    )
    result = train(store, **settings)
    assert result.status == "completed", result.error
    groups = store.get_run(result.run_id).summary["groups"]
    p = make_config(**settings).strategy_params()
    epochs = store.epoch_metrics([result.run_id])[result.run_id]
    assert sorted(epochs) == list(range(EPOCHS))
    for epoch, m in epochs.items():
        want = {groups[k]: lr for k, lr in expected_plan(name, len(groups), epoch, p).items()}
        got = {k[3:]: v for k, v in m.items() if k.startswith("lr/")}
        assert got.keys() == want.keys(), f"epoch {epoch}: trains {sorted(got)}, expected {sorted(want)}"
        for g in want:
            assert got[g] == pytest.approx(want[g], rel=1e-12), f"epoch {epoch} group {g}"
        assert m["trainable_groups"] == len(want)


def test_progressive_unfreezes_on_schedule_every_k_epochs():
    s, p = get_strategy("progressive"), StrategyParams(unfreeze_every=2)
    # freeze_to(n): groups [0, n) frozen; of 5 groups, 4 is the head alone and 0 everything
    assert [s.freeze_to(e, 5, p) for e in range(10)] == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert [s.next_change(e, 5, p) for e in (0, 1, 2, 7, 8)] == [2, 2, 4, 8, None]


def test_progressive_unfreezes_when_val_loss_plateaus():
    s, p = get_strategy("progressive"), StrategyParams(unfreeze_on="plateau", patience=2)
    losses = [1.0, 0.8, 0.81, 0.82, 0.7, 0.75, 0.76, 0.77, 0.78]
    # No improvement at epochs 2 and 3 -> unfreeze for epoch 4; again at 5, 6 -> epoch 7; 7, 8 -> 9.
    assert [s.freeze_to(e, 9, p, losses) for e in range(10)] == [8, 8, 8, 8, 7, 7, 7, 6, 6, 5]
    assert s.freeze_to(30, 3, p, [1.0] * 30) == 0  # never more than the backbone has


def test_discriminative_formula_and_two_phase_plan():
    d = get_strategy("discriminative")
    assert d.lr_multipliers(0, 4, StrategyParams(lr_decay=3)) == [1 / 27, 1 / 9, 1 / 3, 1]
    t = get_strategy("two_phase")
    p = StrategyParams(head_epochs=3, phase2_lr_factor=0.1)
    assert [t.freeze_to(e, 6, p) for e in range(5)] == [5, 5, 5, 0, 0]
    assert t.lr_multipliers(0, 6, p) == [0.1] * 6 and t.lr_multipliers(5, 6, p) == [1.0]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(strategy="partial", unfreeze=9), "layer groups below the head"),
        (dict(strategy="two_phase", head_epochs=5, epochs=5), "head-only phase"),
        (dict(strategy="discriminative", lr_decay=0.5), "--lr-decay"),
        (dict(strategy="nope"), "unknown strategy"),
        (dict(backbone="vit_b_16", image_size=96), "exactly 224"),
    ],
)
def test_impossible_settings_are_refused_with_what_is_allowed(settings, message):
    with pytest.raises(UserError, match=message):
        make_config(data="x", **settings)
