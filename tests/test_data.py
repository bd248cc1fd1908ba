"""Datasets: layouts, seeded stratified splits, image modes, transforms, bad folders."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_core.data.folders import scan_dataset
from tl_core.data.images import to_rgb
from tl_core.data.splits import dataset_report, split_dataset
from tl_core.data.transforms import build_transforms
from tl_core.errors import UserError
from tl_core.models import backbones


def _img(path: Path, mode: str = "RGB", size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


def test_folder_layout_split_is_stratified_seeded_and_disjoint(animals):
    index = scan_dataset(animals)
    assert index.layout == "folders" and len(index.classes) == 10
    a, b = split_dataset(index, 0.2, seed=1), split_dataset(index, 0.2, seed=1)
    c = split_dataset(index, 0.2, seed=2)
    assert [i.path for i in a.val] == [i.path for i in b.val] != [i.path for i in c.val]
    assert set(Counter(i.label for i in a.val).values()) == {6}  # 20% of 30, every class
    assert not {i.path for i in a.train} & {i.path for i in a.val}
    half = split_dataset(index, 0.2, train_fraction=0.5, seed=1)
    assert set(Counter(i.label for i in half.train).values()) == {12}
    assert [i.path for i in half.val] == [i.path for i in a.val]  # val untouched


def test_train_val_layout_is_used_as_given(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _img(tmp_path / split / cls / f"{i}.png")
    splits = split_dataset(scan_dataset(tmp_path), 0.5)
    assert splits.index.layout == "split" and splits.classes == ["cat", "dog"]
    assert len(splits.train) == 6 and len(splits.val) == 4


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK", "1", "F"])
def test_any_image_mode_becomes_rgb(mode):
    img = Image.new(mode, (5, 4))
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (5, 4)
    sixteen = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)


def test_validation_is_deterministic_and_training_augments(animals):
    pre = backbones.preprocessing("efficientnet_lite0")
    img = Image.open(next(Path(animals, "cat").iterdir())).convert("RGB")
    train_tf, val_tf = build_transforms(pre, 48, "standard")
    assert torch.equal(val_tf(img), val_tf(img))
    assert val_tf(img).shape == (3, 48, 48)
    torch.manual_seed(0)
    assert not torch.equal(train_tf(img), train_tf(img))
    none_train, none_val = build_transforms(pre, 48, "none")
    assert none_train is none_val
    # normalised with the weights' mean/std: a white pixel maps to (1 - 0.5) / 0.5
    white = Image.new("RGB", (60, 60), (255, 255, 255))
    assert torch.allclose(val_tf(white), torch.ones(3, 48, 48))


def test_report_counts_and_lists_skipped_files(animals, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(animals, root)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    rep = dataset_report(root)
    assert rep["num_classes"] == 10 and rep["train_images"] + rep["val_images"] == 300
    assert rep["per_class"]["cat"] == {"train": 24, "val": 6, "test": 0}  # no test split unless asked
    assert {Path(s["path"]).name for s in rep["skipped"]} == {"notes.txt", "broken.png"}
    assert rep["image_size"]["max"] == [64, 64]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("file", "is a file, not a folder"),
        ("empty", "has no class folders"),
        ("one_class", "only one class"),
        ("mismatch", "different classes"),
        ("empty_class", "has no readable images"),
    ],
)
def test_bad_folders_say_what_to_do(case, message, tmp_path):
    root = tmp_path / "ds"
    if case == "file":
        root.write_text("x")
    elif case == "empty":
        root.mkdir()
    elif case == "one_class":
        _img(root / "cat" / "a.png")
    elif case == "mismatch":
        for path in ("train/cat", "train/dog", "val/cat", "val/cow"):
            _img(root / path / "a.png")
    elif case == "empty_class":
        _img(root / "cat" / "a.png")
        (root / "dog").mkdir()
    with pytest.raises(UserError, match=message):
        scan_dataset(root)
