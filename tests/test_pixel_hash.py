"""The pixel descriptor of near copies (tl_core/analysis/pixel_hash.py): re-encoded, resized,
brightened, darkened and contrasted copies of real demo images reach duplicates.PIXEL_AT; distinct
images of the same class do not; the descriptors are cached per dataset, unreadable images as zeros."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tl_core.analysis import duplicates, pixel_hash
from tl_core.data import decode_cache, scan_cache
from tl_core.data.demo import write_demo_data


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


COPIES = {  # the edits the issue names (re-encoded, slightly brightened) and a few more
    "jpeg_q75": lambda im: _jpeg(im, 75),
    "jpeg_q50": lambda im: _jpeg(im, 50),
    "bright_10": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "bright_20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "dark_20": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "contrast_20": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
    "three_quarters": lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4)),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pixels")
    write_demo_data(root, datasets=("animals", "digits"), per_class=30)
    return root


@pytest.mark.parametrize("name", ["animals", "digits"])
def test_every_edited_copy_is_at_or_above_the_threshold_and_no_two_distinct_images_are(demo, name, tmp_path):
    paths = sorted((demo / name).glob("*/*.png"))
    content = [p.read_bytes() for p in paths]
    d = np.stack([pixel_hash.descriptor(str(p)) for p in paths])
    sims = d @ d.T
    distinct = np.triu(np.array([[a != b for b in content] for a in content]), k=1)  # the demo holds exact copies
    assert sims[distinct].max() < duplicates.PIXEL_AT
    for kind, make in COPIES.items():
        for k, p in enumerate(paths[::10]):
            copy = tmp_path / f"{kind}_{k}.{'jpg' if kind.startswith('jpeg') else 'png'}"
            make(Image.open(p).convert("RGB")).save(copy, quality=95)
            assert pixel_hash.descriptor(str(copy)) @ d[10 * k] >= duplicates.PIXEL_AT, (kind, p.name)


def test_brightness_and_contrast_change_nothing_but_the_constant_term_and_the_length():
    grey = np.random.default_rng(0).uniform(40, 200, (pixel_hash.SIDE, pixel_hash.SIDE))
    d = pixel_hash.from_thumbnail(grey)
    assert d.shape == (pixel_hash.DIM,) and np.linalg.norm(d) == pytest.approx(1, abs=1e-6)
    assert np.allclose(pixel_hash.from_thumbnail(1.2 * grey + 10), d, atol=1e-6)
    assert not np.any(pixel_hash.from_thumbnail(np.full_like(grey, 90)))  # flat: a copy of nothing
    assert pixel_hash.from_thumbnail(grey.T) @ d < 0.9  # the picture moved: not a copy


def test_descriptors_are_cached_per_dataset_and_an_unreadable_image_is_a_row_of_zeros(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "ds"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for p in sorted((demo / "animals" / ("bear" if c == "a" else "cat")).glob("*.png"))[:3]:
            (folder / c / p.name).write_bytes(p.read_bytes())
    whole = (folder / "a").glob("*.png").__next__().read_bytes()
    (folder / "b" / "broken.png").write_bytes(whole[: len(whole) // 2])  # truncated: passes the scan, fails to decode
    index = scan_cache.scan_dataset(folder)
    rows = decode_cache.DatasetRows.of(index)
    paths = rows.paths
    assert str(folder / "b" / "broken.png") in paths
    calls: list[str] = []
    real = pixel_hash.descriptor
    monkeypatch.setattr(pixel_hash, "descriptor", lambda path: calls.append(path) or real(path))
    first = pixel_hash.descriptors(rows, paths)
    assert len(calls) == len(paths)
    broken = paths.index(str(folder / "b" / "broken.png"))
    assert not first[broken].any() and all(
        np.linalg.norm(r) == pytest.approx(1, abs=1e-5) for r in np.delete(first, broken, 0)
    )
    again = pixel_hash.descriptors(rows, paths[::-1])  # read back: in the order asked, nothing recomputed
    assert len(calls) == len(paths) and np.array_equal(again, first[::-1])
