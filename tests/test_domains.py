"""The demo domain pair: digits (source) and the same digits recoloured on textures (target)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_core.data.demo import DATASETS, write_demo_data

PAIR = ("digits", "digits_target")
SIZE = 32


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pair")
    write_demo_data(out, datasets=PAIR, per_class=6, size=SIZE)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under folder, by its path relative to it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255


def test_the_target_holds_the_same_classes_counts_and_files(pair):
    assert "digits_target" in DATASETS
    source, target = _files(pair / "digits"), _files(pair / "digits_target")
    assert sorted(p.name for p in (pair / "digits_target").iterdir()) == [str(d) for d in range(10)]
    assert source.keys() == target.keys() and len(target) == 60  # 6 per class, file for file
    for name in list(target)[:5]:
        img = Image.open(pair / "digits_target" / name)
        assert img.mode == "RGB" and img.size == Image.open(pair / "digits" / name).size == (SIZE, SIZE)


def test_the_target_is_coloured_and_the_source_is_grey(pair):
    def saturation(folder: Path) -> float:
        return float(
            np.mean([np.asarray(Image.open(p).convert("HSV"))[..., 1].mean() / 255 for p in folder.rglob("*.png")])
        )

    def colour_spread(folder: Path) -> float:  # how far the channels of a pixel differ, on average
        return float(np.mean([_rgb(p).std(axis=2).mean() for p in folder.rglob("*.png")]))

    assert saturation(pair / "digits") == 0 and colour_spread(pair / "digits") < 1e-6
    assert saturation(pair / "digits_target") > 0.3 and colour_spread(pair / "digits_target") > 0.1
    # Backgrounds are textured, not flat: the top-left corner (background, mostly) varies.
    corner = [_rgb(p)[: SIZE // 4, : SIZE // 4].std(axis=(0, 1)).max() for p in (pair / "digits_target").rglob("*.png")]
    assert np.median(corner) > 0.02


def test_the_same_seed_writes_identical_files_and_another_seed_other_colours(pair, tmp_path):
    write_demo_data(tmp_path / "again", datasets=("digits_target",), per_class=6, size=SIZE)
    assert _files(tmp_path / "again" / "digits_target") == _files(pair / "digits_target")
    write_demo_data(tmp_path / "other", datasets=("digits_target",), per_class=6, size=SIZE, seed=1)
    assert _files(tmp_path / "other" / "digits_target") != _files(pair / "digits_target")
    # A file depends on its image and the seed only, not on how many others were written.
    write_demo_data(tmp_path / "all", datasets=("digits_target",), per_class=0, size=SIZE)
    some = _files(pair / "digits_target")
    assert all((tmp_path / "all" / "digits_target" / name).read_bytes() == data for name, data in some.items())


def _explained(target: np.ndarray, stroke: np.ndarray) -> float:
    """R² of the target image as one colour plus another along the stroke map (a digit's two tones)."""
    x = np.stack([np.ones(stroke.size), stroke.ravel()], 1)
    y = target.reshape(-1, 3)
    fitted = x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return 1 - float(((y - fitted) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_labels_are_kept_each_target_image_is_its_source_digit(pair):
    """Each target image is explained by its own source digit's strokes better than by every
    source image of another class: recolouring changed the domain, not the digit."""
    names = list(_files(pair / "digits"))
    strokes = {n: np.asarray(Image.open(pair / "digits" / n).convert("L"), dtype=np.float32) / 255 for n in names}
    margins = []
    for name in names:
        target = _rgb(pair / "digits_target" / name)
        own = _explained(target, strokes[name])
        others = [_explained(target, strokes[n]) for n in names if n.split("/")[0] != name.split("/")[0]]
        margins.append(own - max(others))
    assert min(margins) > 0, f"{sum(m <= 0 for m in margins)} target images look more like another digit"
    assert np.mean(margins) > 0.15


def test_the_cli_writes_the_pair(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tl_core",
            "demo-data",
            str(tmp_path / "d"),
            "--datasets",
            *PAIR,
            "--per-class",
            "2",
            "--size",
            "16",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    written = json.loads(out.stdout)["datasets"]
    assert written["digits_target"] == written["digits"] == {str(d): 2 for d in range(10)}
