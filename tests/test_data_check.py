"""The data check (tl_core/analysis/data_check.py, `check-data`): faults placed in real demo images
are found, the test split is only read, bad input gets one clear line.

One small folder (4 animal classes, 21 images each, split by the user into train/val/test) with
known faults: labels flipped (in train, val and test), exact copies placed across splits and within
one, near copies (re-encoded as JPEG at quality 75, brightened by 10%) across splits, a noise image,
an empty file. The CLI checks it once (`checked`); the tests read its --json answer. (The demo
animals hold copies of their own: in this folder two bears of identical bytes, in train and test.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tl_core.analysis import data_check, duplicates
from tl_core.analysis.label_issues import out_of_sample_probs
from tl_core.cli.parser import build_parser
from tl_core.config import make_config
from tl_core.data.demo import write_demo_data
from tl_core.errors import UserError
from tl_core.service import jobs
from tl_core.store.store import Store

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("bear", "bird", "cat", "cow")
PER_SPLIT = {"train": 14, "val": 4, "test": 3}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TL_RUNS_DIR": str(cwd / "runs"), "TL_OFFLINE": "1"}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "tl_core", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _brighter(im: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(im).enhance(1.1)


def _faulty_folder(root: Path) -> tuple[Path, dict]:
    """The folder, and the faults placed in it (paths as the check reports them: resolved)."""
    write_demo_data(root / "demo", datasets=("animals",), per_class=sum(PER_SPLIT.values()), size=96)
    ds = (root / "ds").resolve()
    names: dict[tuple[str, str], list[str]] = {}
    for c in CLASSES:
        files = sorted((root / "demo" / "animals" / c).iterdir())
        start = 0
        for split, n in PER_SPLIT.items():
            (ds / split / c).mkdir(parents=True)
            for f in files[start : start + n]:
                shutil.copy(f, ds / split / c / f.name)
            names[split, c] = [f.name for f in files[start : start + n]]
            start += n

    def moved(split: str, c: str, k: int, to: str) -> tuple[str, str]:
        name = names[split, c][k]
        (ds / split / c / name).rename(ds / split / to / name)
        return str(ds / split / to / name), c

    def copied(split: str, c: str, k: int, to: str, make=None) -> tuple[str, str]:
        src, dst = ds / split / c / names[split, c][k], ds / to
        if make is None:
            shutil.copy(src, dst)
        else:  # re-encoded: JPEG at quality 75 for a .jpg
            make(Image.open(src).convert("RGB")).save(dst, **({"quality": 75} if dst.suffix == ".jpg" else {}))
        return str(src), str(dst)

    flipped = dict(  # path -> the class it really is
        [
            moved("train", "bear", 0, "bird"),
            moved("train", "cat", 1, "cow"),
            moved("val", "bird", 0, "cat"),
            moved("test", "cow", 0, "bear"),
        ]
    )
    exact = [  # (source, copy, across splits)
        (*copied("train", "bear", 2, "test/bear/copy.png"), True),
        (*copied("train", "cow", 3, "val/cow/copy.png"), True),
        (*copied("train", "cat", 4, "train/cat/copy (1).png"), False),
    ]
    near = [
        copied("train", "bird", 5, "val/bird/reencoded.jpg", lambda im: im),
        copied("val", "cat", 1, "test/cat/brightened.png", _brighter),
    ]
    noise = ds / "train" / "cow" / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(noise)
    (ds / "train" / "cat" / "empty.png").write_bytes(b"")
    return ds, {"flipped": flipped, "exact": exact, "near": near, "noise": str(noise)}


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[dict, dict, Path]:
    tmp = tmp_path_factory.mktemp("check")
    ds, faults = _faulty_folder(tmp)
    r = _cli("check-data", "--data", str(ds), "--json", "--db", f"sqlite:///{tmp / 'e.db'}", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), faults, tmp


@pytest.mark.slow  # the folder's features: computed once, in the CLI's process (~20 s on 2 cores)
def test_flipped_labels_rank_near_the_top_with_their_true_class_suggested(checked):
    found, faults, _ = checked
    ranked = [i["path"] for i in found["label_issues"]]
    flipped = faults["flipped"]
    # Every flipped image (train, val and test alike) among the first few flagged.
    assert all(p in ranked[: len(flipped) + 2] for p in flipped), ranked[:8]
    by_path = {i["path"]: i for i in found["label_issues"]}
    assert sum(by_path[p]["suggested"] == true for p, true in flipped.items()) >= len(flipped) - 1
    assert [i["split"] for i in found["label_issues"] if i["path"] in flipped].count("test") == 1
    scores = [i["score"] for i in found["label_issues"]]
    assert scores == sorted(scores) and all(0 <= s < 0.5 for s in scores[: len(flipped)])


@pytest.mark.slow  # the folder's features: computed once, in the CLI's process (~20 s on 2 cores)
def test_every_exact_copy_is_found_and_copies_across_splits_come_first(checked):
    found, faults, _ = checked
    groups = found["duplicates"]
    for source, copy, across in faults["exact"]:
        group = next(g for g in groups if g["kind"] == "exact" and {source, copy} <= {i["path"] for i in g["images"]})
        assert group["cross_split"] is across and group["similarity"] == 1.0 and len(group["images"]) == 2
    flags = [g["cross_split"] for g in groups]
    assert flags == sorted(flags, reverse=True)  # every leak before any copy within a split


@pytest.mark.slow  # the folder's features: computed once, in the CLI's process (~20 s on 2 cores)
def test_near_copies_are_found_above_the_threshold_and_distinct_images_are_not(checked):
    found, faults, _ = checked
    near = [g for g in found["duplicates"] if g["kind"] == "near"]
    planted = [set(pair) for pair in faults["near"]]
    for pair in planted:
        group = next(g for g in near if pair <= {i["path"] for i in g["images"]})
        assert group["cross_split"] and group["pixel_similarity"] >= duplicates.PIXEL_AT == found["pixel_threshold"]
        assert "pixels" in group["by"]
        assert found["near_threshold"] == duplicates.NEAR_AT
    # Nothing else: no two distinct images of a class (nor of two classes) are called near copies.
    assert sorted(map(sorted, ({i["path"] for i in g["images"]} for g in near))) == sorted(map(sorted, planted))


@pytest.mark.slow  # the folder's features: computed once, in the CLI's process (~20 s on 2 cores)
def test_the_json_answer_has_the_agreed_shape_and_is_stored_with_the_experiment(checked):
    found, faults, tmp = checked
    assert {"label_issues", "duplicates", "outliers", "counts", "imbalance", "skipped", "unreadable"} <= set(found)
    assert found["look_alikes_shown"] and found["look_alike_share"] < 0.1
    assert set(found["label_issues"][0]) == {"path", "split", "label", "suggested", "score"}
    assert set(found["duplicates"][0]) == {"kind", "by", "cross_split", "similarity", "pixel_similarity", "images"}
    assert set(found["duplicates"][0]["images"][0]) == {"path", "split", "label"}
    assert set(found["outliers"][0]) == {"path", "split", "label", "score"}
    # The noise image is the farthest from every class; the empty file was skipped by the scan.
    assert found["outliers"][0]["path"] == faults["noise"]
    assert any(f["path"].endswith("empty.png") for f in found["skipped"]["files"])
    assert found["counts"]["train"]["cow"] == 14 + 1 + 1 and found["counts"]["test"]["bear"] == 3 + 1 + 1
    assert found["imbalance"]["ratio"] == pytest.approx(23 / 22, abs=1e-3)
    assert found["backbone"] == "efficientnet_lite0" and found["image_size"] == 224 and found["job"] is None
    stored = Store(f"sqlite:///{tmp / 'e.db'}").artifacts("default", "data_check")
    assert len(stored) == 1 and stored[0].data["label_issues"] == found["label_issues"]
    # A page starts it as a job: the run's settings as flags, but its --image-size (the check's own).
    assert jobs.KINDS["check-data"] == "data_check" and jobs.NOT_FLAGS["check-data"] == ("image_size",)
    cfg = make_config(data=str(tmp / "ds"), experiment="e1", image_size=64)
    args = build_parser().parse_args(["check-data", *jobs.flags(cfg, jobs.NOT_FLAGS["check-data"]), "--job", "J"])
    assert args.check_image_size is None and args.experiment == "e1" and args.job == "J" and args.folds == 5


@pytest.mark.slow  # the folder's features: computed once, in the CLI's process (~20 s on 2 cores)
def test_bad_input_gets_one_clear_line(checked, tmp_path):
    _, _, tmp = checked
    missing = _cli("check-data", "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    one = _cli("check-data", "--data", str(tmp / "ds"), "--folds", "1", cwd=tmp_path)
    assert one.returncode == 2 and "--folds 1: the out-of-sample probabilities need at least 2 folds" in one.stderr
    assert len(one.stderr.strip().splitlines()) == 1
    pixel = _cli("check-data", "--data", str(tmp / "ds"), "--pixel-threshold", "1.5", cwd=tmp_path)
    assert pixel.returncode == 2 and "--pixel-threshold 1.5: give a cosine similarity" in pixel.stderr


# --- the engine on features alone: no model, no images ---------------------------------------------


def test_near_pairs_in_blocks_are_every_pair_above_the_threshold_once():
    rng = np.random.default_rng(1)
    x = duplicates.unit_rows(rng.normal(size=(300, 16)))
    x[150] = x[3]
    x[299] = duplicates.unit_rows(x[10:11] + 0.05 * rng.normal(size=(1, 16)))[0]
    i, j, s = duplicates.near_pairs(x, 0.9, block=64)  # blocks that do not divide the rows
    sims = x @ x.T
    want = {(a, b) for a, b in zip(*np.nonzero(sims >= 0.9), strict=True) if a < b}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want and (3, 150) in want and (10, 299) in want
    assert np.allclose(s, sims[i, j], atol=1e-6)


def test_the_test_split_is_scored_but_never_learnt_from():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 8)) + 2 * np.eye(3, 8)[y]
    learn = np.ones(60, bool)
    learn[::6] = False  # 10 images held out as the test split
    probs = out_of_sample_probs(x, y, learn, 3, folds=5, seed=0)
    other = y.copy()
    other[~learn] = (other[~learn] + 1) % 3  # the test labels changed: nothing may move
    assert np.array_equal(out_of_sample_probs(x, other, learn, 3, folds=5, seed=0), probs)
    assert np.allclose(probs.sum(axis=1), 1)


def _clusters(per_class: list[int], dim: int = 64, seed: int = 0) -> tuple[list, np.ndarray]:
    """Images of well separated classes (`per_class` train images each) and their features."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    images = [data_check.Image(f"{c}_{k}.png", "train", int(c)) for k, c in enumerate(labels)]
    return images, rng.normal(size=(len(labels), dim)) * 0.3 + 3 * np.eye(len(per_class), dim)[labels]


def test_a_class_smaller_than_the_folds_is_left_out_of_the_label_model_and_the_rest_is_checked():
    images, x = _clusters([20, 20, 3])
    flipped = 5
    images[flipped] = data_check.Image(images[flipped].path, "train", 1)  # a class-0 image labelled 1
    digests = [str(i) for i in range(len(images))]
    digests[-1] = digests[0]  # an exact copy, in the small class
    found = data_check.check_features(images, digests, x, np.arange(len(images)), ["a", "b", "c"])
    assert found.left_out == [{"class": "c", "images": 3}]
    assert found.label_issues[0]["path"] == images[flipped].path and found.label_issues[0]["suggested"] == "a"
    assert all(i["label"] != "c" and i["suggested"] != "c" for i in found.label_issues)
    assert [g["kind"] for g in found.duplicates] == ["exact"] and found.outliers is not None
    # Every class too small: no label errors, each class named, the duplicates still found.
    found = data_check.check_features(images, digests, x, np.arange(len(images)), ["a", "b", "c"], folds=25)
    assert found.label_issues == [] and [o["class"] for o in found.left_out] == ["a", "b", "c"]
    assert [g["kind"] for g in found.duplicates] == ["exact"]
    with pytest.raises(UserError, match="--folds 1: the out-of-sample probabilities need at least 2 folds"):
        data_check.check_features(images, digests, x, np.arange(len(images)), ["a", "b", "c"], folds=1)


def test_near_copies_by_pixels_join_what_the_embeddings_miss_and_report_both_similarities():
    images, x = _clusters([10, 10])
    pixels = duplicates.unit_rows(np.random.default_rng(2).normal(size=(20, 143)))
    pixels[7] = duplicates.unit_rows(pixels[2:3] + 0.003 * np.random.default_rng(3).normal(size=(1, 143)))[0]
    digests = [str(i) for i in range(20)]
    found = data_check.check_features(images, digests, x, np.arange(20), ["a", "b"], pixels=pixels, folds=2)
    (group,) = found.duplicates
    assert [i["path"] for i in group["images"]] == [images[2].path, images[7].path] and group["kind"] == "near"
    assert group["pixel_similarity"] == pytest.approx(float(pixels[2] @ pixels[7]), abs=1e-4)
    assert group["pixel_similarity"] >= duplicates.PIXEL_AT
    unit = duplicates.unit_rows(x)
    assert group["similarity"] == pytest.approx(float(unit[2] @ unit[7]), abs=1e-4)
    assert group["similarity"] < duplicates.NEAR_AT
    assert group["by"] == ["pixels"] and found.found["look_alikes"] == 0
    # Without the pixels, the embeddings alone see no copy here.
    assert data_check.check_features(images, digests, x, np.arange(20), ["a", "b"], folds=2).duplicates == []
    # Two images whose embeddings alone are close: a look-alike, after the copies.
    x[12] = x[3] + 0.001
    found = data_check.check_features(images, digests, x, np.arange(20), ["a", "b"], pixels=pixels, folds=2)
    assert [g["by"] for g in found.duplicates] == [["pixels"], ["embeddings"]] and found.found["look_alikes"] == 1
    alike = found.duplicates[1]
    assert [i["path"] for i in alike["images"]] == [images[3].path, images[12].path]
    assert alike["similarity"] >= duplicates.NEAR_AT > alike["pixel_similarity"]
    assert found.look_alikes_shown and found.look_alike_share == 2 / 20


def test_where_most_images_have_a_look_alike_by_embeddings_those_are_left_out_and_the_copies_kept():
    images, x = _clusters([10, 10])
    pixels = duplicates.unit_rows(np.random.default_rng(2).normal(size=(20, 143)))
    pixels[7] = pixels[2]  # a copy by its pixels
    digests = [str(i) for i in range(20)]
    digests[9] = digests[4]  # and one by its bytes
    # Embeddings that cannot tell the images apart (a random initialisation's): every pair above NEAR_AT.
    same = np.ones((20, 64)) + 0.001 * np.random.default_rng(4).normal(size=(20, 64))
    found = data_check.check_features(images, digests, same, np.arange(20), ["a", "b"], pixels=pixels, folds=2)
    assert not found.look_alikes_shown and found.look_alike_share > duplicates.LOOK_ALIKE_SHARE
    assert sorted((g["kind"], g["by"]) for g in found.duplicates) == [
        ("exact", ["bytes"]),
        ("near", ["embeddings", "pixels"]),
    ]
    assert found.found["look_alikes"] == 0
