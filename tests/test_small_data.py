"""Small and messy folders train on the defaults: the batch fits the data, bad files are listed.

The held-out class of checks: a dozen folders as people bring them (a handful of images per
class, stray files, broken and odd images, odd names and layouts), each trained with nothing
but `run --data FOLDER` as a new user types it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_core import cli
from tl_core.data.splits import batch_size_for
from tl_core.errors import UserError
from tl_core.training.strategies import list_strategies


def _image(path: Path, size=(40, 30), mode="RGB", colour=None, seed: int = 0) -> Path:
    """A small real picture: noise around a class-specific colour, so that classes differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.array(colour if colour is not None else (120, 120, 120), dtype=np.int16)
    arr = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    (img if mode == "RGB" else img.convert(mode)).save(path)
    return path


COLOURS = [(200, 60, 60), (60, 60, 200), (60, 200, 60), (200, 200, 60), (60, 200, 200)]


def _classes(root: Path, n_classes: int = 2, per_class: int = 6, ext: str = "png", sub: str = "") -> None:
    for c in range(n_classes):
        for i in range(per_class):
            _image(root / sub / f"class{c}" / f"{i}.{ext}", colour=COLOURS[c], seed=100 * c + i)


def _png(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, 90).save(buf, "PNG")
    return buf.getvalue()


# Each builder writes a folder and returns {file name: a word of the reason it is listed for}.
def tiny(root: Path) -> dict[str, str]:
    _classes(root)  # 2 classes x 6 images: 10 train, 2 val
    return {}


def stray_files(root: Path) -> dict[str, str]:
    _classes(root)
    (root / "class0" / "notes.txt").write_text("taken on a sunny day")
    (root / "class0" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "class1" / "labels.csv").write_text("file,label\n")
    (root / "README.md").write_text("my photos")  # beside the class folders, in no class
    return {
        "notes.txt": "not an image",
        "Thumbs.db": "not an image",
        "labels.csv": "not an image",
        "README.md": "not in a class folder",
    }


def zero_byte(root: Path) -> dict[str, str]:
    _classes(root)
    (root / "class0" / "empty.png").write_bytes(b"")
    (root / "class1" / "empty.jpg").write_bytes(b"")
    return {"empty.png": "unreadable", "empty.jpg": "unreadable"}


def truncated(root: Path) -> dict[str, str]:
    _classes(root)
    (root / "class0" / "cut.png").write_bytes(_png()[:120])  # a header, then the data cut off
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg, "JPEG")
    (root / "class1" / "cut.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    return {"cut.png": "unreadable when decoded", "cut.jpg": "unreadable when decoded"}


def odd_modes(root: Path) -> dict[str, str]:
    for c, modes in enumerate((("L", "1", "P", "RGBA"), ("LA", "I;16", "CMYK", "RGB"))):
        for i, mode in enumerate(modes * 2):
            path = root / f"class{c}" / f"{mode.replace(';', '')}-{i}.{'jpg' if mode == 'CMYK' else 'png'}"
            if mode == "I;16":
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((30, 40), 20000 + 9000 * c + i, dtype=np.uint16)).save(path)
            else:
                _image(path, mode=mode, colour=COLOURS[c], seed=i)
    return {}


def huge_and_bomb(root: Path) -> dict[str, str]:
    _classes(root)
    Image.new("RGB", (6000, 4000), (200, 60, 60)).save(root / "class0" / "huge.png")  # 24 MP: decoded, resized
    Image.new("1", (30_000, 30_000)).save(root / "class1" / "bomb.png", optimize=True)  # 900 MP in its header
    return {"bomb.png": "refused: larger than"}


def symlinks(root: Path) -> dict[str, str]:
    _classes(root)
    os.symlink(root, root / "class0" / "loop")  # a folder pointing back up: not followed
    outside = root.parent / f"{root.name}-secret.png"
    outside.write_bytes(_png())
    os.symlink(outside, root / "class1" / "escape.png")
    return {"escape.png": "outside the dataset"}


def odd_names(root: Path) -> dict[str, str]:
    for c, names in enumerate(
        (("-rf.png", "a b (copy) #2.PNG", "ü 日本.jpeg"), ("'quoted'.png", "$(x).png", "x.y.z.JPG"))
    ):
        for i, name in enumerate(names * 2):
            _image(root / f"cls {c} ü" / f"{i}{name}", colour=COLOURS[c], seed=i)
    return {}


def split_given(root: Path) -> dict[str, str]:
    _classes(root, per_class=5, sub="train")
    _classes(root, per_class=2, sub="val")
    return {}


def nested(root: Path) -> dict[str, str]:
    for c in range(2):
        for i in range(6):
            _image(root / f"class{c}" / f"2024-0{i % 3}" / "raw" / f"{i}.png", colour=COLOURS[c], seed=i)
    return {}


def few_per_class(root: Path) -> dict[str, str]:
    _classes(root, n_classes=5, per_class=3)  # 5 classes x 3 images: 10 train, 5 val
    return {}


def imbalanced_and_odd_shapes(root: Path) -> dict[str, str]:
    for i in range(10):
        _image(root / "many" / f"{i}.png", size=(300, 20), colour=COLOURS[0], seed=i)  # a strip
    for i, size in enumerate(((1, 1), (20, 300), (17, 5))):
        _image(root / "few" / f"{i}.png", size=size, colour=COLOURS[1], seed=i)
    return {}


FOLDERS: dict[str, Callable[[Path], dict[str, str]]] = {
    f.__name__: f
    for f in (
        tiny,
        stray_files,
        zero_byte,
        truncated,
        odd_modes,
        huge_and_bomb,
        symlinks,
        odd_names,
        split_given,
        nested,
        few_per_class,
        imbalanced_and_odd_shapes,
    )
}


def run_cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = cli.main([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


@pytest.fixture
def db(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    return f"sqlite:///{tmp_path / 'small.db'}"


@pytest.mark.parametrize("name", FOLDERS)
def test_a_small_or_messy_folder_trains_on_the_defaults_and_lists_what_it_skipped(name, db, tmp_path, capsys):
    root = tmp_path / f"my {name}"
    expected = FOLDERS[name](root)
    code, out, err = run_cli(capsys, "run", "--data", str(root), "--db", db, "--no-progress")
    assert code == 0, err
    assert out["status"] == "completed" and out["epochs"] == 5 and 1 <= out["best_epoch"] <= 5, out
    listed = {Path(f["path"]).name: f["reason"] for f in out["skipped"]["files"]}
    listed.update({Path(p).name: "unreadable when decoded" for p in out["unreadable"]})
    assert listed.keys() == expected.keys(), listed
    for file, why in expected.items():
        assert why in listed[file], (file, listed[file])
    assert out["skipped"]["count"] == len(out["skipped"]["files"])
    n_train = out["batch_size"]["used"]  # every folder here has at most 32 training images: one batch
    assert "training images" in out["batch_size"]["why"] and n_train <= 32


@pytest.mark.parametrize("strategy", list_strategies())
def test_every_strategy_trains_two_classes_of_six_images_on_the_defaults(strategy, db, tmp_path, capsys):
    root = tmp_path / "two"
    tiny(root)
    code, out, err = run_cli(capsys, "run", "--data", str(root), "--strategy", strategy, "--db", db, "--no-progress")
    assert code == 0, err
    assert out["status"] == "completed" and out["epochs"] == 5
    assert out["batch_size"] == {
        "used": 10,
        "why": "batch size 10: the default 32 is more than the 10 training "
        "images, so each epoch is one batch of all of them",
    }
    assert "batch size 10" in err  # the run's log: a foreground run writes it to stderr
    code, shown, _ = run_cli(capsys, "show", str(out["run_id"]), "--db", db)
    assert [e["epoch"] for e in shown["epochs"]] == [1, 2, 3, 4, 5]
    assert shown["summary"]["batch_size"] == out["batch_size"]


def test_an_explicit_batch_size_larger_than_the_data_is_refused(db, tmp_path, capsys):
    root = tmp_path / "two"
    tiny(root)
    code, out, err = run_cli(capsys, "run", "--data", str(root), "--batch-size", "32", "--db", db)
    assert code == 2 and out is None
    assert err.strip() == (
        "error: --batch-size 32 is larger than the 10 training images; use at most 10, or "
        "leave it out to let the run choose"
    )


def test_a_folder_of_loose_images_is_refused_with_how_to_arrange_it(db, tmp_path, capsys):
    for i in range(6):
        _image(tmp_path / "flat" / f"{i}.png", seed=i)
    code, _, err = run_cli(capsys, "run", "--data", str(tmp_path / "flat"), "--db", db)
    assert code == 2 and "no class folders" in err and "sub-folder named after the class" in err


@pytest.mark.parametrize(
    "n_train, want", [(2, 2), (10, 10), (32, 32), (33, 31), (64, 32), (65, 31), (97, 31), (98, 32), (1000, 32)]
)
def test_the_default_batch_fits_the_data_and_never_leaves_a_batch_of_one(n_train, want):
    size, note = batch_size_for(None, n_train)
    assert size == want and (n_train % size != 1 or size == n_train)
    assert (note is None) == (size == 32)


def test_an_explicit_batch_size_is_kept_or_refused():
    assert batch_size_for(8, 10) == (8, None)
    with pytest.raises(UserError, match="--batch-size 11 is larger than the 10 training images"):
        batch_size_for(11, 10)
