"""The probe (tl_core/analysis/data_probe.py): real measurements on real small data, the table, the verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tl_core.analysis.data_probe import CLOSE_AT, SMALL_BELOW, judge, probe, recommend
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.models.weights import native_size
from tl_core.training.strategies import list_strategies

from .helpers import train


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    """The feature cache goes under a temporary runs folder (as the `store` fixture's)."""
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))


def _noise_dataset(root, classes: int = 4, per_class: int = 20, size: int = 32) -> str:
    """Images of uniform random noise: nothing in them tells one class from another."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "noise" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return str(root / "noise")


def test_the_probe_measures_the_demo_animals_and_recommends_registered_strategies(animals):
    p = probe(make_config(data=animals, image_size=64))
    # 10 classes, 24 training images each (30 per class, 20% to val): all of them probed.
    assert p.images_per_class == 24 and len(p.classes) == 10 and p.probed_images == {"train": 240, "val": 60}
    assert p.chance == pytest.approx(0.1)
    # ImageNet features tell the silhouettes apart far better than chance, by both probes.
    assert p.linear_probe_acc >= 0.5 and p.knn_acc >= 0.3
    assert p.separability == pytest.approx((p.linear_probe_acc - 0.1) / 0.9)
    assert (p.size, p.similarity) == ("small", "close")
    rec = p.recommendation
    assert rec.strategies[0] == "feature_extraction" and set(rec.strategies) <= set(list_strategies())
    assert "about 24 training images per class" in rec.why and f"linear probe {p.linear_probe_acc:.0%}" in rec.why
    assert p.feature_cache == "computed" and p.backbone == "efficientnet_lite0" and p.image_size == 224
    out = json.loads(json.dumps(p.to_dict()))
    assert out["recommendation"] == {"strategies": rec.strategies, "why": rec.why}
    assert out["separability"] == p.separability and out["feature_cache"] == "computed"


def test_features_that_do_not_separate_the_classes_read_far_and_change_the_advice(tmp_path):
    noise = _noise_dataset(tmp_path)
    # Half to val: 40 val images, so chance-level accuracy is measured to within a few images.
    p = probe(make_config(data=noise, image_size=32, val_fraction=0.5))
    assert p.images_per_class == 10 and p.probed_images == {"train": 40, "val": 40} and p.chance == 0.25
    assert abs(p.separability) < 0.3 and p.similarity == "far" and p.size == "small"
    assert p.recommendation.strategies[0] == "feature_extraction"  # the table's case 3: a linear classifier
    assert p.recommendation.why != recommend(p.images_per_class, 0.9).why  # what close data is told
    assert "barely separate" in p.recommendation.why or "only partly" in p.recommendation.why


@pytest.mark.parametrize(
    "per_class, separability, size, similarity, first",
    [
        (24, 0.9, "small", "close", "feature_extraction"),
        (24, 0.1, "small", "far", "feature_extraction"),
        (500, 0.9, "large", "close", "two_phase"),
        (2000, 0.1, "large", "far", "full"),
        (SMALL_BELOW, CLOSE_AT, "large", "close", "two_phase"),  # each threshold belongs to the side above it
        (SMALL_BELOW - 1, CLOSE_AT - 0.01, "small", "far", "feature_extraction"),
    ],
)
def test_recommend_follows_the_table(per_class, separability, size, similarity, first):
    rec = recommend(per_class, separability)
    assert (rec.size, rec.similarity, rec.strategies[0]) == (size, similarity, first)
    assert set(rec.strategies) <= set(list_strategies()) and len(rec.strategies) >= 2
    assert f"about {per_class} training images per class ({size})" in rec.why
    assert f"separability {separability:.2f}" in rec.why  # both measurements, in one sentence
    quoted = recommend(per_class, separability, probe_acc=0.91, chance=0.1)
    assert "linear probe 91% vs 10% chance" in quoted.why and quoted.strategies == rec.strategies


def test_small_data_far_from_imagenet_gets_what_the_cited_table_says():
    """CS231n's case 3 (small, very different): "only train a linear classifier", from earlier
    activations than the top; not fine-tuning, which is what partial does."""
    rec = recommend(24, 0.1)
    assert rec.strategies[0] == "feature_extraction"
    assert "linear classifier" in rec.why and "earlier layers" in rec.why and "overfit" in rec.why


def test_the_probe_sees_the_images_at_the_weights_native_size_whatever_the_image_size(tiny, store):
    """CLOSE_AT comes from results at full resolution: the probe measures there, not at --image-size."""
    cfg = make_config(data=tiny, image_size=32)
    first, second = probe(cfg), probe(cfg)
    assert first.image_size == native_size("efficientnet_lite0") == 224
    assert (first.feature_cache, second.feature_cache) == ("computed", "hit")
    same = {k: v for k, v in first.to_dict().items() if k not in ("seconds", "feature_cache")}
    assert same == {k: v for k, v in second.to_dict().items() if k not in ("seconds", "feature_cache")}
    # A feature_extraction run at the native size finds the probe's activations: nothing to compute;
    # one at the config's 32 px computes its own.
    native = store.get_run(train(store, data=tiny, epochs=1, image_size=224).run_id)
    assert native.status == "completed" and native.summary["feature_cache"]["hit"]
    small = store.get_run(train(store, data=tiny, epochs=1, image_size=32).run_id)
    assert small.status == "completed" and not small.summary["feature_cache"]["hit"]


def test_judge_says_whether_the_recommendation_was_right():
    rec = ["feature_extraction", "partial"]
    best = judge(rec, {"feature_extraction": 0.90, "partial": 0.85, "full": 0.80})
    assert best.startswith("right:") and "was the best" in best and "90.0%" in best
    close = judge(rec, {"feature_extraction": 0.895, "full": 0.90})
    assert close.startswith("right:") and "within 1 point" in close and "full" in close
    wrong = judge(rec, {"feature_extraction": 0.80, "full": 0.853})
    assert wrong.startswith("wrong: full beat feature_extraction") and "by 5.3 points" in wrong
    assert "(also recommended)" in judge(rec, {"feature_extraction": 0.80, "partial": 0.90})
    assert judge(rec, {"full": 0.9}).startswith("cannot judge")


def test_probing_random_weights_is_refused_with_what_to_do(tiny):
    with pytest.raises(UserError, match="--weights none.*--weights imagenet"):
        probe(make_config(data=tiny, weights="none"))
