"""A folder nobody curated: bad files are skipped and listed, odd ones converted, training goes on."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_core.data import images
from tl_core.data.folders import scan_dataset
from tl_core.data.splits import dataset_report
from tl_core.errors import UserError

from .helpers import train

# File name -> why it must be skipped (a substring of the listed reason).
SKIPPED = {
    "zero-byte.png": "unreadable",
    "notes.txt": "not an image file",
    "bomb.png": "refused: larger than",
    "escape.png": "outside the dataset",
}


def _png_bytes(size=(32, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def messy(tiny, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "messy data; $(rm -rf ~) & ü"
    shutil.copytree(tiny, root)
    cat, dog = root / "cat", root / "bear"
    (cat / "zero-byte.png").write_bytes(b"")
    (cat / "notes.txt").write_text("not an image")
    # A decompression bomb: a tiny file whose header claims 30,000 x 30,000 pixels.
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 20_000_000)
    Image.new("1", (30_000, 30_000)).save(cat / "bomb.png", optimize=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png_bytes())
    os.symlink(outside, cat / "escape.png")
    os.symlink(root, dog / "loop")  # a symlinked folder that points back up
    # Truncated files: a valid header, then the data cut off. Found only when decoded.
    (dog / "truncated.png").write_bytes(_png_bytes((64, 64))[:120])
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg, "JPEG")
    (dog / "truncated.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    # Odd but valid: every mode a camera, scanner or editor writes, a big image, odd names.
    Image.fromarray(np.full((40, 30), 40000, dtype=np.uint16)).save(dog / "sixteen-bit.png")
    Image.new("CMYK", (40, 30), (0, 128, 0, 0)).save(dog / "cmyk.jpg")
    Image.new("P", (40, 30)).save(dog / "palette.gif")
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(dog / "alpha.png")
    Image.new("L", (40, 30), 200).save(dog / "grey scale (copy) #2 'x'.png")
    Image.new("RGB", (4000, 3000), (1, 2, 3)).save(dog / "日本語 big.jpg")
    return root


def test_report_lists_every_skipped_file_with_its_reason(messy):
    rep = dataset_report(messy)
    reasons = {Path(s["path"]).name: s["reason"] for s in rep["skipped"]}
    assert reasons.keys() == SKIPPED.keys()
    for name, why in SKIPPED.items():
        assert why in reasons[name], (name, reasons[name])
    assert rep["num_classes"] == 4 and rep["image_size"]["max"] == [4000, 3000]


def test_training_goes_on_past_truncated_files_and_lists_them(messy, store, capfd):
    result = train(store, data=str(messy), epochs=2, image_size=32, batch_size=4)
    assert result.status == "completed", result.error
    err = capfd.readouterr().err
    assert "skipped unreadable image" in err and "truncated.png" in err and "truncated.jpg" in err


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "RGBA", "LA", "L", "1"])
def test_every_image_mode_loads_as_rgb(mode, tmp_path):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new(mode, (9, 7)).save(path)
    img = images.load_image(str(path))
    assert img.mode == "RGB" and img.size == (9, 7)


def test_a_truncated_file_is_an_unreadable_image_not_a_crash(tmp_path):
    path = tmp_path / "t.png"
    path.write_bytes(_png_bytes((64, 64))[:120])
    with pytest.raises(images.UnreadableImage, match="t.png"):
        images.load_image(str(path))


def test_an_unreadable_file_is_skipped(tmp_path, monkeypatch):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes(_png_bytes())
    real_open = Image.open

    def no_permission(path, *a, **k):  # root ignores chmod, so deny the read here
        if str(path).endswith("a/1.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(Image, "open", no_permission)
    index = scan_dataset(tmp_path)
    assert [(Path(p).name, r.split(":")[0]) for p, r in index.skipped] == [("1.png", "unreadable")]
    assert len(index.items["all"]) == 3


def test_thousands_of_classes(tmp_path):
    png = _png_bytes((8, 8))
    for c in range(2000):
        folder = tmp_path / f"class {c:04d}"
        folder.mkdir()
        for i in range(2):
            (folder / f"{i}.png").write_bytes(png)
    rep = dataset_report(tmp_path)
    assert rep["num_classes"] == 2000 and rep["train_images"] == rep["val_images"] == 2000


def test_a_class_folder_symlinked_out_of_the_dataset_is_not_a_class(tmp_path):
    ds, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    for cls in ("a", "b"):
        (ds / cls).mkdir(parents=True)
        (ds / cls / "0.png").write_bytes(_png_bytes())
        (ds / cls / "1.png").write_bytes(_png_bytes())
    elsewhere.mkdir()
    (elsewhere / "0.png").write_bytes(_png_bytes())
    os.symlink(elsewhere, ds / "c")
    assert scan_dataset(ds).classes == ["a", "b"]
    os.unlink(ds / "c")
    os.symlink(elsewhere, ds / "b-only")  # with only one real class left, the error says so
    shutil.rmtree(ds / "b")
    with pytest.raises(UserError, match="only one class"):
        scan_dataset(ds)
