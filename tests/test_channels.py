"""Inputs that are not RGB (--in-channels N): the first convolution, reading, normalisation, runs.

The proofs: for every registered backbone, an N-channel model (N > 3) gives the RGB model's
logits for the RGB channels with zeros on the others; a 1-channel model gives them for a gray
image replicated into R, G and B (and a 2-channel one for that gray image on both channels).
Then N-channel files are read, scaled by type, skipped or refused for the wrong channel count,
normalised with statistics of the training images, and trained end to end.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tl_core.data import decode_cache, folders, images, transforms
from tl_core.data.splits import split_dataset
from tl_core.errors import UserError
from tl_core.models import backbones, channels, families, weights

from .helpers import train

OFFLINE = {n for n in families.list_backbones() if families.get_spec(n).source == "package"}


# --- the first convolution -------------------------------------------------------------------------


SMALLEST = {}  # one model per family (its first): the values proof; every model gets the structural one
for _name in families.list_backbones():
    SMALLEST.setdefault(families.get_spec(_name).family, _name)


@pytest.mark.parametrize("name", families.list_backbones())
def test_every_backbone_names_the_convolution_reading_the_image_and_rebuilds_it(name):
    spec = families.get_spec(name)
    bb = backbones.skeleton(name, 5)  # on the meta device where the builder allows: no weights, no compute
    first = next(m for m in bb.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert bb.model.get_submodule(spec.first_conv) is first and first.in_channels == 3
    channels.adapt_first_conv(bb.model, spec, 6)
    assert first.in_channels == 6 and first.weight.shape[1] == 6
    size = spec.fixed_image_size or 32
    x = torch.zeros(2, 6, size, size, device=first.weight.device)
    with torch.no_grad():
        assert bb.model.eval()(x).shape == (2, 5)


@pytest.mark.parametrize("name", sorted(SMALLEST.values()))
def test_the_rebuilt_first_conv_reproduces_the_rgb_model(name):
    spec = families.get_spec(name)
    torch.manual_seed(0)
    # Shipped weights where they ship (offline), random ones elsewhere: never a download.
    model = backbones.create_backbone(name, 5, weights="imagenet" if name in OFFLINE else "none").model.eval()
    conv = model.get_submodule(spec.first_conv)
    if spec.family == "vit":  # 2 x 2 patches of 16 px, not 14 x 14: the same proof, 50x cheaper
        model.image_size = 32
        model.encoder.pos_embedding = torch.nn.Parameter(model.encoder.pos_embedding[:, :5])
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    gray = x[:, :1]
    with torch.no_grad():
        want_rgb, want_gray = model(torch.cat([x, gray.expand(-1, 3, -1, -1)])).split(1)
    tol = 1e-5 * max(1.0, want_rgb.abs().max().item(), want_gray.abs().max().item())

    def adapted(n: int, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits with its first convolution rebuilt for n channels (then put back)."""
        model.set_submodule(spec.first_conv, copy.deepcopy(conv))
        try:
            channels.adapt_first_conv(model, spec, n)
            rebuilt = model.get_submodule(spec.first_conv).weight
            assert rebuilt.shape[1] == n and (n < 3 or torch.equal(rebuilt[:, :3], conv.weight))
            with torch.no_grad():
                return model(inputs)
        finally:
            model.set_submodule(spec.first_conv, conv)

    # N > 3: channels 0-2 untouched, so the RGB channels and zeros give the RGB model's logits.
    torch.testing.assert_close(adapted(4, torch.cat([x, torch.zeros_like(gray)], 1)), want_rgb, atol=tol, rtol=0)
    # N = 1: the summed filters see a gray image as the RGB model sees it replicated into R, G, B.
    torch.testing.assert_close(adapted(1, gray), want_gray, atol=tol, rtol=0)
    # N = 2: that gray image on both channels, likewise.
    torch.testing.assert_close(adapted(2, gray.expand(-1, 2, -1, -1)), want_gray, atol=tol, rtol=0)


def test_the_weights_of_n_channels_are_built_from_the_rgb_filters_as_documented():
    w = torch.randn(8, 3, 3, 3)
    total = w.sum(1, keepdim=True)
    assert torch.equal(channels.adapt_conv_weight(w, 3), w)
    torch.testing.assert_close(channels.adapt_conv_weight(w, 1), total)
    torch.testing.assert_close(channels.adapt_conv_weight(w, 2), (total / 2).expand(-1, 2, -1, -1))
    for n in (4, 7, 64):
        out = channels.adapt_conv_weight(w, n)
        assert out.shape == (8, n, 3, 3) and torch.equal(out[:, :3], w)
        # The extra channels together weigh as one mean RGB filter, whatever N.
        torch.testing.assert_close(out[:, 3:].sum(1, keepdim=True), total / 3)


def test_create_backbone_rebuilds_the_first_conv_from_the_loaded_pretrained_filters():
    rgb = backbones.create_backbone("efficientnet_lite0", 2).model.conv_stem.weight
    bb = backbones.create_backbone("efficientnet_lite0", 2, in_channels=4)
    conv = bb.model.conv_stem
    assert conv.in_channels == 4 and torch.equal(conv.weight[:, :3], rgb)
    torch.testing.assert_close(conv.weight[:, 3], rgb.mean(1))
    # The layer group still holds the rebuilt convolution, and a batch of 4 channels runs.
    assert any(p is conv.weight for p in bb.groups[0].parameters())
    assert bb.model.eval()(torch.rand(1, 4, 64, 64)).shape == (1, 2)


# --- reading ---------------------------------------------------------------------------------------


def test_arrays_and_multiband_tiff_are_read_as_channels_first_floats_scaled_by_type(tmp_path):
    u16 = np.full((6, 5, 4), 65535, np.uint16)
    u16[..., 1] = 0
    np.save(tmp_path / "a.npy", u16)
    np.save(tmp_path / "b.npy", np.full((6, 5, 4), 51, np.uint8))
    np.save(tmp_path / "c.npy", np.full((6, 5, 4), 7.5, np.float32))
    tifffile.imwrite(
        tmp_path / "planar.tif", np.full((4, 6, 5), 32768, np.uint16), planarconfig="separate", photometric="minisblack"
    )
    tifffile.imwrite(
        tmp_path / "contig.tif", np.full((6, 5, 4), 0.25, np.float32), photometric="minisblack", planarconfig="contig"
    )
    a = images.load_pixels(str(tmp_path / "a.npy"), 4)
    assert a.shape == (4, 6, 5) and a.dtype == np.float32
    assert a[0].max() == a[0].min() == 1.0 and a[1].max() == 0.0
    assert np.allclose(images.load_pixels(str(tmp_path / "b.npy"), 4), 0.2)
    assert np.allclose(images.load_pixels(str(tmp_path / "c.npy"), 4), 7.5)  # float as it is
    assert np.allclose(images.load_pixels(str(tmp_path / "planar.tif"), 4), 32768 / 65535)
    assert np.allclose(images.load_pixels(str(tmp_path / "contig.tif"), 4), 0.25)


def test_one_channel_keeps_gray_and_converts_colour_to_l(tmp_path):
    Image.fromarray(np.full((6, 5), 200, np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(np.full((6, 5), 40000, np.uint16)).save(tmp_path / "g16.png")
    Image.new("RGB", (5, 6), (255, 0, 0)).save(tmp_path / "red.png")
    assert np.allclose(images.load_pixels(str(tmp_path / "g.png"), 1), 200 / 255)
    assert np.allclose(images.load_pixels(str(tmp_path / "g16.png"), 1), 40000 / 65535)  # 16 bits kept
    red = images.load_pixels(str(tmp_path / "red.png"), 1)
    assert red.shape == (1, 6, 5) and np.allclose(
        red, Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0)) / 255
    )


def _folder(root: Path, make, per_class: int = 6) -> Path:
    for c in range(2):
        for i in range(per_class):
            make(root / f"class{c}", c, i)
    return root


def _npy(folder: Path, c: int, i: int, n: int = 4, size: int = 24) -> None:
    """A 4-band array: class 1 brighter; band 3 a constant that differs per file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(10 * c + i)
    arr = (rng.random((size, size, n)) * 0.5 + 0.4 * c).astype(np.float32)
    arr[..., 3:] = (6 * c + i) / 12
    np.save(folder / f"{i}.npy", arr)


def _rgb_png(folder: Path, c: int, i: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (60 + 120 * c, 90, 30 + i)).save(folder / f"{i}.png")


def test_files_of_another_channel_count_are_skipped_with_why(tmp_path):
    root = _folder(tmp_path / "d", _npy)
    np.save(root / "class0" / "rgb.npy", np.zeros((24, 24, 3), np.uint8))
    np.save(root / "class0" / "first.npy", np.zeros((4, 24, 24), np.uint8))
    np.save(root / "class1" / "ints.npy", np.zeros((24, 24, 4), np.int32))
    index = folders.scan_dataset(root, 4)
    assert len(index.items["all"]) == 12
    why = {Path(p).name: r for p, r in index.skipped}
    assert why["rgb.npy"] == "3 channels, not the 4 of --in-channels 4"
    assert "channels-first" in why["first.npy"] and "np.moveaxis" in why["first.npy"]
    assert "int32" in why["ints.npy"]
    # Three channels: nothing changes, arrays are not images there.
    with pytest.raises(UserError, match="no readable images"):
        folders.scan_dataset(root, 3)


def test_a_folder_of_another_channel_count_is_refused_with_what_to_do(tmp_path):
    root = _folder(tmp_path / "rgb", _rgb_png)
    with pytest.raises(UserError) as e:
        folders.scan_dataset(root, 4)
    assert str(e.value).startswith(
        f"--in-channels 4 but the images in {root / 'class0'} have 3 channels; pass --in-channels 3"
    )


# --- normalisation and caches ---------------------------------------------------------------------


def test_extra_channels_are_normalised_with_training_images_statistics(tmp_path):
    root = _folder(tmp_path / "d", _npy)
    paths = [str(root / "class0" / f"{i}.npy") for i in range(3)]  # band 3: 0, 1/12, 2/12
    pre = weights.preprocessing("efficientnet_lite0")
    out, how = channels.normalisation(pre, 4, "imagenet", paths)
    assert out.mean[:3] == pre.mean and out.std[:3] == pre.std
    assert out.mean[3] == pytest.approx(1 / 12, abs=1e-6) and out.std[3] == pytest.approx(
        np.std([0, 1 / 12, 2 / 12]), abs=1e-6
    )
    assert "channels 0-2: the weights' RGB mean/std" in how and "3 training images" in how
    scratch, how = channels.normalisation(pre, 4, "none", paths)
    assert scratch.mean[0] != pre.mean[0] and how.startswith("all 4 channels")
    assert channels.normalisation(pre, 3, "imagenet", paths) == (pre, None)


def test_decoded_rows_and_cache_keys_change_with_the_channels(tmp_path):
    root = _folder(tmp_path / "d", _npy)
    pre = weights.preprocessing("efficientnet_lite0")
    rgb = decode_cache.Pipeline(pre, 32)
    four = decode_cache.Pipeline(
        channels.normalisation(pre, 4, "imagenet", [str(root / "class0" / "0.npy")])[0],
        32,
        in_channels=4,
        stats="measured",
    )
    assert "in_channels" not in rgb.describe() and "stats" not in rgb.describe()  # RGB keys as before
    assert four.describe()["in_channels"] == 4 and len(four.describe()["pre"]["mean"]) == 4
    assert rgb.stage(False).key() == {"resize": rgb.resize, "crop": 32, "interpolation": pre.interpolation}
    row = four.stage(False)(str(root / "class1" / "0.npy"))
    assert row.shape == (4, 32, 32) and row.dtype == np.float16
    rows = decode_cache.DatasetRows.of(folders.scan_dataset(root, 4))
    assert (
        decode_cache.DecodedImages(rows, four.stage(False)).cache.folder
        != decode_cache.DecodedImages(rows, decode_cache.DecodeStage(four.resize, 32, pre.interpolation)).cache.folder
    )
    # Augmentation for N channels: crops and flips, no colour jitter (RGB only).
    aug = transforms.augmentations("standard", 32, transforms.T.InterpolationMode(four.interpolation), channels=4)
    assert not any(isinstance(t, transforms.T.ColorJitter) for t in aug)
    assert transforms.T.Compose(aug)(torch.rand(4, 40, 40)).shape == (4, 32, 32)


# --- end to end --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy,decode_cache,augment",
    [("full", "on", "none"), ("feature_extraction", "on", "none"), ("full", "off", "standard")],
)
def test_four_channel_arrays_train_end_to_end(store, tmp_path, strategy, decode_cache, augment):
    root = _folder(tmp_path / "bands", _npy)
    result = train(
        store, data=str(root), in_channels=4, strategy=strategy, epochs=1, decode_cache=decode_cache, augment=augment
    )
    run = store.get_run(result.run_id)
    assert result.status == "completed", result.error
    pre = run.summary["preprocessing"]
    assert pre["in_channels"] == 4 and len(pre["pre"]["mean"]) == len(pre["pre"]["std"]) == 4
    assert list(pre["pre"]["mean"][:3]) == list(weights.preprocessing("efficientnet_lite0").mean)
    # Band 3 is normalised with the training images' own mean, not the validation images'.
    index = folders.scan_dataset(root, 4)
    splits = split_dataset(index, 0.2, 1.0, 0)
    band3 = [float(np.load(it.path)[0, 0, 3]) for it in splits.train]
    assert pre["pre"]["mean"][3] == pytest.approx(np.mean(band3), abs=1e-5)
    assert run.summary["decode_cache"]["used"] is (decode_cache == "on")
    if strategy == "feature_extraction":
        assert run.summary["feature_cache"]["used"]


def test_gray_pngs_train_with_one_channel(store, tmp_path):
    def gray(folder: Path, c: int, i: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 24), 60 + 100 * c + i, np.uint8), "L").save(folder / f"{i}.png")

    result = train(store, data=str(_folder(tmp_path / "gray", gray)), in_channels=1, epochs=1)
    assert result.status == "completed", result.error
    assert store.get_run(result.run_id).summary["preprocessing"]["in_channels"] == 1


def test_a_run_on_images_of_another_channel_count_fails_with_what_to_do(store, tmp_path):
    root = _folder(tmp_path / "rgb", _rgb_png)
    result = train(store, data=str(root), in_channels=4, epochs=1)
    assert result.status == "failed"
    assert result.error.startswith(f"--in-channels 4 but the images in {root / 'class0'} have 3 channels")
