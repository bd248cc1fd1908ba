"""Frozen features computed once: exact cuts (cuts.py), cache hits that skip the backbone, keys, views, accuracy."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_core.data import decode_cache, folders, images, transforms
from tl_core.data.splits import split_dataset
from tl_core.models import backbones, cuts
from tl_core.store import RunSummary
from tl_core.training import feature_cache, stopping
from tl_core.training import run as T
from ui import format as fmt

from .helpers import stop_before_epoch, train

# One backbone per family: a new family is tested the day it is registered.
FAMILIES: dict[str, str] = {}
for _name in backbones.list_backbones():
    FAMILIES.setdefault(backbones.get_spec(_name).family, _name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_cut_reproduces_the_model(family):
    name = FAMILIES[family]
    torch.manual_seed(0)
    bb = backbones.create_backbone(name, 5, weights="none")
    spec = backbones.get_spec(name)
    size = spec.fixed_image_size or max(64, spec.min_image_size)
    x = torch.randn(2, 3, size, size)
    bb.model.eval()
    with torch.no_grad():
        want = bb.model(x)
        for boundary in range(1, len(bb.groups)):  # every freeze boundary of every family
            cut = cuts.cut_at(bb, boundary, size, torch.device("cpu"))
            # The same batch through the same layers in the same order: equal up to fp32 rounding.
            torch.testing.assert_close(cut.rest(cut.frozen(x)), want, rtol=1e-4, atol=1e-5)


def _images_through_the_stem(monkeypatch) -> list[int]:
    """Count the images that reach the backbone's first layer, in every model a run builds."""
    seen: list[int] = []
    real = backbones.create_backbone

    def counting(*args, **kwargs):
        bb = real(*args, **kwargs)
        bb.model.conv_stem.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
        return bb

    monkeypatch.setattr(backbones, "create_backbone", counting)
    return seen


def test_a_cache_hit_skips_the_backbone_and_other_heads_and_seeds_reuse_it(tiny, store, monkeypatch):
    seen = _images_through_the_stem(monkeypatch)
    first = train(store, data=tiny, epochs=3)
    n_images = 32
    check = 4  # cut_at checks its cut on 2 random images: through the whole model, then the frozen part
    kept = 8  # after training, knowledge kept is measured once on the 8 val images (forgetting.py)
    assert sum(seen) == n_images + check + kept  # once per image, not once per epoch
    seen.clear()
    second = train(store, data=tiny, epochs=3, head="mlp", seed=7, lr=3e-3)
    assert sum(seen) == check + kept
    fc = [store.get_run(r.run_id).summary["feature_cache"] for r in (first, second)]
    assert [f["hit"] for f in fc] == [False, True]
    assert fc[0] | {"hit": True, "seconds": 0.0} == fc[1] and fc[0]["used"] and fc[0]["boundary"] == "head input"


def test_cached_features_equal_the_live_frozen_forward(tiny, store):
    result = train(store, data=tiny, epochs=1, feature_precision="fp32", device="cpu")
    assert store.get_run(result.run_id).summary["feature_cache"]["precision"] == "fp32"
    index = folders.scan_dataset(tiny)
    splits = split_dataset(index, 0.2, seed=0)
    rows = decode_cache.DatasetRows.of(index)
    bb = backbones.create_backbone("efficientnet_lite0", 4)
    pipe = decode_cache.Pipeline(bb.preprocessing, 32)
    ff = feature_cache.FrozenFeatures(bb, splits, rows, pipe, views=1, batch_size=8, seed=0, device=torch.device("cpu"))
    run = ff.at(len(bb.groups) - 1, 0, 1)
    assert ff.records[-1]["hit"]
    cached = torch.cat([x for x, _ in run.val])
    _, val_tf = transforms.build_transforms(bb.preprocessing, 32, "none")
    live = torch.stack([val_tf(images.load_image(it.path)) for it in splits.val])
    bb.model.eval()
    with torch.inference_mode():
        bb.model.classifier = torch.nn.Identity()
        want = bb.model(live)
        # The cache was computed in batches of EXTRACT_BATCH, this forward in one batch of 8: for
        # another batch shape (and thread count, and CPU) oneDNN picks other kernels and another
        # order of summation, so fp32 results differ in their last bits, compounded over the
        # network's ~60 layers (seen: 1.4e-5 on activations of order 1). 1e-4 leaves ten times
        # that, and is still far below what a real mistake does (the control below).
        tolerance = dict(rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cached, want, **tolerance)
        # Control: the same images resized with another interpolation (a wrong preprocessing)
        # are far outside that tolerance, so it cannot hide one.
        _, wrong_tf = transforms.build_transforms(replace(bb.preprocessing, interpolation="nearest"), 32, "none")
        wrong = bb.model(torch.stack([wrong_tf(images.load_image(it.path)) for it in splits.val]))
        assert not torch.allclose(wrong, want, **tolerance)
        assert (wrong - want).abs().max() > 100 * (cached - want).abs().max()


def _hit(store, **settings) -> bool:
    result = train(store, **settings)
    assert result.status == "completed", result.error
    return store.get_run(result.run_id).summary["feature_cache"]["hit"]


def test_the_cache_is_invalidated_when_any_part_of_its_key_changes(tiny, store, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    base = dict(data=str(root), epochs=2)
    assert not _hit(store, **base)
    assert _hit(store, **base, seed=1, head="mlp")  # heads and seeds share it
    assert not _hit(store, **base, image_size=40)  # the transform
    assert not _hit(store, **base, strategy="partial", unfreeze=2)  # the frozen boundary
    weights = tmp_path / "w.pt"
    torch.save(backbones.create_backbone("efficientnet_lite0", 4).model.state_dict(), weights)
    assert not _hit(store, **base, weights=str(weights))  # the weights: the same values, another file
    assert _hit(store, **base, weights=str(weights))
    state = torch.load(weights, weights_only=True)
    state["conv_stem.weight"] += 0.01
    torch.save(state, weights)
    assert not _hit(store, **base, weights=str(weights))  # the file's content
    some = sorted((root / "cat").iterdir())[0]
    some.write_bytes(some.read_bytes())  # the dataset's content (a rewritten file)
    assert not _hit(store, **base)


def test_augmentation_caches_k_views_and_samples_one_per_image_each_epoch(tiny, store, capfd):
    result = train(store, data=tiny, epochs=3, augment="light", feature_views=3, device="cpu")  # looked up on a CPU
    summary = store.get_run(result.run_id).summary["feature_cache"]
    assert summary["used"] and summary["views"] == 3
    assert "3 cached views per image" in capfd.readouterr().err
    index = folders.scan_dataset(tiny)
    splits = split_dataset(index, 0.2, seed=0)
    bb = backbones.create_backbone("efficientnet_lite0", 4)
    ff = feature_cache.FrozenFeatures(
        bb,
        splits,
        decode_cache.DatasetRows.of(index),
        decode_cache.Pipeline(bb.preprocessing, 32, "light"),
        views=3,
        batch_size=8,
        seed=0,
        device=torch.device("cpu"),
        precision=feature_cache.extraction_dtype("auto", torch.device("cpu"), None),
    )
    run = ff.at(len(bb.groups) - 1, 0, 3)
    entry = run.train.entry
    assert ff.records[-1]["hit"] and entry.rows == 32 * 3
    views = entry.data()[run.train.rows * 3 + 0], entry.data()[run.train.rows * 3 + 1]
    assert not np.allclose(*views)  # different augmentations of the same images
    epochs = [torch.cat([x for x, _ in run.train.for_epoch(e)]) for e in (0, 1)]
    order = [torch.cat([y for _, y in run.train.for_epoch(e)]) for e in (0, 1)]
    assert epochs[0].shape == epochs[1].shape == (len(splits.train), 1280)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(order[0], order[1])


def test_every_phase_with_frozen_groups_trains_on_its_own_cached_boundary(tiny, store):
    result = train(store, data=tiny, strategy="progressive", unfreeze_every=2, epochs=5)
    fc = store.get_run(result.run_id).summary["feature_cache"]
    assert [(p["frozen_groups"], p.get("boundary"), p["used"]) for p in fc["phases"]] == [
        (8, "head input", True),
        (7, "stage7 input", True),
        (6, "stage6 input", True),
    ]
    epochs = store.epoch_metrics([result.run_id])[result.run_id]
    assert [epochs[e]["trainable_groups"] for e in range(5)] == [1, 1, 2, 2, 3]


def test_the_run_detail_page_says_what_the_caches_did():
    used = RunSummary(
        feature_cache={
            "used": True,
            "boundary": "head input",
            "views": 4,
            "hit": False,
            "precision": "bf16",
            "seconds": 12.34,
        },
        decode_cache={"used": True},
        startup_seconds=0.8,
    )
    assert fmt.speed_note(used) == (
        "**frozen features**: cached at the head input (computed in 12.3 s, bf16, "
        "4 augmented views per image) · **decoded images**: cached · "
        "**startup**: 0.8 s to the first batch"
    )
    off = RunSummary(feature_cache={"used": False, "why": "nothing is frozen"})
    assert fmt.speed_note(off) == "**frozen features**: not cached (nothing is frozen)"
    assert fmt.speed_note(RunSummary()) == ""


def test_a_short_phase_with_augmentation_is_not_worth_caching_and_says_why(tiny, store):
    result = train(store, data=tiny, strategy="two_phase", head_epochs=1, epochs=2, augment="light")
    fc = store.get_run(result.run_id).summary["feature_cache"]
    assert not fc["used"] and "1-epoch phase" in fc["why"]
    assert [p["frozen_groups"] for p in fc["phases"]] == [8, 0] and "nothing is frozen" in fc["phases"][1]["why"]


def test_a_run_with_the_cache_is_as_accurate_as_without(animals, store):
    budget = dict(data=animals, epochs=3, image_size=64, batch_size=16, feature_precision="fp32")
    on = train(store, **budget)
    off = train(store, **budget, feature_cache="off")
    assert store.get_run(off.run_id).summary["feature_cache"] == {
        "used": False,
        "boundary": None,
        "views": 1,
        "hit": False,
        "precision": "fp32",
        "seconds": 0.0,
        "why": "off (--feature-cache off)",
    }
    assert on.best_val_acc >= 0.6 and abs(on.best_val_acc - off.best_val_acc) <= 0.07, (on, off)


def test_a_run_on_cached_features_resumes_as_if_it_never_stopped(tiny, store, monkeypatch):
    settings = dict(data=tiny, epochs=3, seed=4)
    whole = train(store, **settings)
    with monkeypatch.context() as m:
        stop_before_epoch(m, 2)
        stopped = train(store, **settings)
    store.requeue(stopped.run_id, status="running")
    resumed = T.train_run(store, stopped.run_id, progress=False)
    a, b = (store.epoch_metrics([r.run_id])[r.run_id] for r in (whole, resumed))
    for epoch in range(3):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert b[epoch][key] == pytest.approx(a[epoch][key], rel=1e-5, abs=1e-7), (epoch, key)


def test_a_cancel_stops_feature_caching_and_keeps_what_was_computed(tiny, store, monkeypatch):
    asked = []
    monkeypatch.setattr(store, "cancel_requested", lambda run_id: asked.append(1) or len(asked) > 1)
    monkeypatch.setattr(stopping, "throttled", lambda ask, seconds: ask)  # every check reaches the store
    monkeypatch.setattr(feature_cache.FrozenFeatures, "EXTRACT_BATCH", {"cpu": 8, "cuda": 8})
    result = train(store, data=tiny, epochs=2)
    assert result.status == "cancelled" and result.epochs == 0
    filled = next((Path(store.get_run(result.run_id).run_dir).parent / "cache").glob("features/*/filled.npy"))
    assert np.load(filled).sum() == 16  # the two batches computed before the cancel are kept
