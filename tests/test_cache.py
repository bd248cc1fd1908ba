"""The on-disk caches: rows filled once and kept, keys that change with their inputs, decode once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_core import backbones, cache, data, decoded, transforms
from tl_core.cache import ArrayCache


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_rows_count_as_filled_only_once_committed_and_survive_a_crash(cache_dir):
    entry = ArrayCache("t", {"a": 1}, rows=6, shape=(2,))
    with pytest.raises(RuntimeError):
        with entry.filling():
            entry.write(np.array([0, 1]), np.ones((2, 2)))
            entry.commit(np.array([0, 1]))
            entry.write(np.array([2]), np.full((1, 2), 7.0))  # written, never committed
            raise RuntimeError("the process dies here")
    again = ArrayCache("t", {"a": 1}, rows=6, shape=(2,))
    assert again.missing(np.arange(6)).tolist() == [2, 3, 4, 5]
    assert np.array_equal(again.data()[:2], np.ones((2, 2)))
    assert not [p for p in (cache_dir / "t").iterdir() if ".tmp" in p.name]  # no half entries left
    assert ArrayCache("t", {"a": 2}, rows=6, shape=(2,)).folder != again.folder


def test_an_entry_too_large_for_the_limit_is_refused(monkeypatch):
    monkeypatch.setenv("TL_CACHE_MAX_GB", "0.001")
    with pytest.raises(cache.CacheTooLarge, match="TL_CACHE_MAX_GB"):
        ArrayCache("t", {}, rows=1000, shape=(1000,)).create()


def test_the_dataset_fingerprint_changes_with_any_file_and_only_then(tiny, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    rows = lambda: decoded.DatasetRows.of(data.scan_dataset(root)).fingerprint  # noqa: E731
    first = rows()
    assert rows() == first
    some = sorted((root / "cat").iterdir())[0]
    os.utime(some, ns=(some.stat().st_atime_ns, some.stat().st_mtime_ns + 1000))  # rewritten (same size)
    touched = rows()
    assert touched != first
    some.rename(some.with_name("renamed.png"))
    assert rows() not in (first, touched)


def test_a_scan_is_reused_until_a_file_changes(tiny, tmp_path, monkeypatch):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    opened = []
    real = data._open_header
    monkeypatch.setattr(data, "_open_header", lambda p: opened.append(p) or real(p))
    first = cache.scan_dataset(root)
    n = len(opened)
    assert n == sum(len(v) for v in first.items.values())
    assert cache.scan_dataset(root) == first and len(opened) == n  # no header read again
    shutil.copy(sorted((root / "cat").iterdir())[0], root / "cat" / "new.png")
    third = cache.scan_dataset(root)
    assert len(opened) > n and len(third.items["all"]) == len(first.items["all"]) + 1


def _loaders(root: str, augment: str = "none", size: int = 48, workers: int = 0):
    index = data.scan_dataset(root)
    splits = data.split_dataset(index, 0.25, seed=0)
    pipe = decoded.Pipeline(backbones.preprocessing("efficientnet_lite0"), size, augment)
    train, val, note = decoded.make_loaders(splits, decoded.DatasetRows.of(index), pipe, 8, 0, workers,
                                            torch.device("cpu"))
    assert note == {"used": True}
    return splits, pipe, train, val


def _count_decodes(monkeypatch) -> list:
    decodes = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda p: decodes.append(p) or real(p))
    return decodes


def test_decoded_batches_equal_decoding_every_time_bitwise(tiny):
    splits, pipe, train, val = _loaders(tiny)
    _, val_tf = transforms.build_transforms(pipe.pre, 48, "none")
    for _ in range(2):  # decoded on the way, then read from the cache
        got = torch.cat([x for x, _ in val])
        want = torch.stack([val_tf(data.load_image(it.path)) for it in splits.val])
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(torch.cat([y for _, y in val]), torch.tensor([it.label for it in splits.val]))


@pytest.mark.parametrize("workers", [0, 2])
def test_each_image_is_decoded_once_per_dataset_not_once_per_epoch(tiny, monkeypatch, workers):
    decodes = _count_decodes(monkeypatch)
    splits, _, train, val = _loaders(tiny, augment="light", workers=workers)
    for _ in range(3):
        assert sum(len(y) for _, y in train) == len(splits.train)
    if workers == 0:
        assert len(decodes) == len(splits.train)  # (with workers the count is in their processes)
    assert (train.dataset.images.cache.filled()[train.dataset.rows]).all()
    decodes.clear()
    _, _, train2, _ = _loaders(tiny, augment="light")  # a second run on the same data
    for _ in train2:
        pass
    assert decodes == []


def test_augmentation_runs_on_the_stored_square_and_follows_the_seed(tiny):
    _, pipe, train, _ = _loaders(tiny, augment="light")
    assert pipe.stage(True).crop == pipe.resize > pipe.image_size == pipe.stage(False).crop
    torch.manual_seed(3)
    a = torch.cat([x for x, _ in train])
    torch.manual_seed(3)  # the order is the epoch's (EpochOrder); the augmentation follows torch's seed
    b = torch.cat([x for x, _ in train])
    assert a.shape[-2:] == (48, 48) and torch.equal(a, b)


def test_an_unreadable_image_is_listed_skipped_and_not_retried(tiny, tmp_path, capfd):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    bad = sorted((root / "cat").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:60])  # the header survives, the pixels do not
    splits, _, train, val = _loaders(str(root))
    total = sum(len(y) for _, y in train) + sum(len(y) for _, y in val)
    assert total == len(splits.train) + len(splits.val) - 1
    assert "skipped unreadable image" in capfd.readouterr().err
    images = train.dataset.images
    assert images.cache.failed().tolist() == [images.dataset.row[str(bad)]]
    assert sum(len(y) for _, y in train) + sum(len(y) for _, y in val) == total  # the next epoch too


def test_the_views_of_an_image_decode_it_once_and_differ(tiny, monkeypatch):
    decodes = _count_decodes(monkeypatch)
    index = data.scan_dataset(tiny)
    pipe = decoded.Pipeline(backbones.preprocessing("efficientnet_lite0"), 32, "light")
    images = decoded.DecodedImages(decoded.DatasetRows.of(index), pipe.stage(True))
    views = decoded.PixelDataset(images, np.array([0, 0, 0, 1]), [0, 0, 0, 1], pipe.train_transform(),
                                 seeds=np.arange(4))
    (x, y), = list(decoded.read_through(views, batch_size=4))
    assert len(decodes) == 2 and images.cache.filled()[[0, 1]].all()
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])
    (again, _), = list(decoded.read_through(views, batch_size=4))
    assert torch.equal(again, x) and len(decodes) == 2  # the same views, from the cache
