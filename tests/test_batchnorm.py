"""BatchNorm at the unfreeze (`--bn`): under "frozen" every pretrained BatchNorm stays in inference
mode with its running statistics bitwise where the pretrained weights put them, through every
phase, while its weight and bias train with their group; under "train" the trained groups'
BatchNorm normalises by batch statistics and moves them. The head, which learned on the frozen
phase's features, keeps seeing them after an unfreeze."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tl_core.config import make_config
from tl_core.models import backbones
from tl_core.training.finetuning import Finetuning, phase_ends
from tl_core.training.strategies import get_strategy, list_strategies

from .helpers import train

BN = nn.modules.batchnorm._BatchNorm
# The smallest backbone of each family with BatchNorm (VGG-16 has none; ConvNeXt, Swin and ViT
# normalise by LayerNorm, which keeps no running statistics).
WITH_BATCHNORM = ["efficientnet_lite0", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf"]


def _norms(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BN)}


@pytest.mark.parametrize("backbone", WITH_BATCHNORM)
def test_after_an_unfreeze_bn_frozen_keeps_every_batchnorm_in_eval_mode_and_its_affine_trainable(backbone):
    bb = backbones.create_backbone(backbone, 3, weights="none")
    cfg = make_config(data="x", backbone=backbone, strategy="two_phase", epochs=3, head_epochs=1, bn="frozen")
    plan = Finetuning(get_strategy("two_phase"), cfg.strategy_params(), bb.groups, 3)
    for epoch in range(3):
        plan.plan(epoch)
        plan.train_mode(bb.model)
    assert plan.boundary == 0  # everything trains
    norms = _norms(bb.model)
    assert norms and not any(m.training for m in norms.values())
    assert all(p.requires_grad for m in norms.values() for p in m.parameters())  # Keras: gamma, beta train
    # Everything else trains as usual (the head's dropout included); timm's BatchNormAct2d holds its
    # activation inside, which has no mode of its own to speak of.
    inside = {id(c) for m in norms.values() for c in m.modules()}
    assert all(m.training for m in bb.model.modules() if id(m) not in inside)
    train_cfg = cfg.model_copy(update={"bn": "train"})
    Finetuning(get_strategy("two_phase"), train_cfg.strategy_params(), bb.groups, 3).train_mode(bb.model)
    assert all(m.training for m in norms.values())  # boundary None: nothing frozen, all in batch statistics


def _buffers(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize(
    "strategy, settings, held",
    [
        ("two_phase", dict(head_epochs=1), True),  # the default, --bn auto: frozen
        ("progressive", dict(unfreeze_every=1), True),
        ("partial", dict(unfreeze=2, bn="frozen"), True),
        ("full", dict(bn="frozen", checkpointing="on"), True),  # recomputed forwards leave them too
        ("two_phase", dict(head_epochs=1, bn="train"), False),
    ],
)
def test_bn_frozen_keeps_the_running_statistics_bitwise_through_every_phase(strategy, settings, held, tiny, store):
    result = train(store, data=tiny, strategy=strategy, epochs=3, lr=0.05, **settings)
    assert result.status == "completed", result.error
    run = store.get_run(result.run_id)
    pretrained = backbones.create_backbone("efficientnet_lite0", 4).model.state_dict()
    after = torch.load(Path(run.run_dir) / "last.pt", map_location="cpu", weights_only=True)["model"]
    stats = _buffers(pretrained)
    moved = [k for k in stats if not torch.equal(after[k], stats[k])]
    if held:
        assert moved == []
        # ... while the groups that trained moved their weights, BatchNorm's affine included.
        affine = [k[: -len("running_mean")] + "weight" for k in stats if k.endswith("running_mean")]
        assert any(not torch.equal(after[k], pretrained[k]) for k in affine)
    else:
        assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("running_var") for k in moved)
    assert run.summary["batchnorm"] == {"setting": settings.get("bn", "auto"), "mode": "frozen" if held else "train"}


def test_the_setting_resolves_per_strategy_and_means_train_where_nothing_was_pretrained():
    for name in list_strategies():
        cfg = make_config(data="x", strategy=name, epochs=3, head_epochs=1)
        assert cfg.strategy_params().bn == ("train" if name == "scratch" else get_strategy(name).bn_auto)
        assert make_config(data="x", strategy=name, epochs=3, head_epochs=1, bn="train").strategy_params().bn == "train"
    assert get_strategy("two_phase").bn_auto == get_strategy("progressive").bn_auto == "frozen"
    assert make_config(data="x", strategy="full", weights="none").strategy_params().bn == "train"
    scratch = make_config(data="x", strategy="scratch", bn="frozen")  # a grid's setting, shared with scratch
    assert scratch.strategy_params().bn == "train"
    assert any("no pretrained BatchNorm statistics to hold" in w for w in scratch.warnings())
    # A run recorded before --bn existed keeps its fingerprint (so its checkpoint still resumes).
    assert make_config(data="x", bn="auto").fingerprint() == make_config(data="x").fingerprint()
    assert make_config(data="x", bn="train").fingerprint() != make_config(data="x").fingerprint()


def test_bn_train_with_a_strategy_that_unfreezes_is_warned_about_before_queueing():
    said = make_config(data="x", strategy="two_phase", epochs=3, bn="train").warnings()
    assert any("--bn train with --strategy two_phase" in w for w in said)
    for quiet in (dict(strategy="two_phase", epochs=3), dict(strategy="full", bn="train")):
        assert not any("--bn train" in w for w in make_config(data="x", **quiet).warnings())


def test_each_phase_end_is_recorded_with_the_precision_of_its_numbers(tiny, store):
    result = train(store, data=tiny, strategy="two_phase", epochs=3, head_epochs=2)
    summary = store.get_run(result.run_id).summary
    epochs = store.epoch_metrics([result.run_id])[result.run_id]
    phases = summary["phases"]
    assert [(p["first_epoch"], p["last_epoch"], p["trainable_groups"]) for p in phases] == [(1, 2, 1), (3, 3, 9)]
    assert [p["val_acc"] for p in phases] == [epochs[1]["val_acc"], epochs[2]["val_acc"]]
    # The head-only phase read cached features, in the precision the cache was computed in; the
    # whole model then runs in fp32 on the CPU.
    assert phases[0]["precision"] == summary["feature_cache"]["precision"] and phases[1]["precision"] == "fp32"
    assert phase_ends({0: {"trainable_groups": 1, "val_acc": 0.5}}) == [
        {"first_epoch": 1, "last_epoch": 1, "trainable_groups": 1, "val_acc": 0.5, "val_loss": None, "train_acc": None}
    ]
