"""The on-disk caches: rows filled once and kept, keys that change with their inputs, decode once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_core.data import decode_cache, folders, images, scan_cache, transforms
from tl_core.data.scan_cache import ArrayCache
from tl_core.data.splits import split_dataset
from tl_core.models import backbones, channels


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
    with pytest.raises(scan_cache.CacheTooLarge, match="TL_CACHE_MAX_GB"):
        ArrayCache("t", {}, rows=1000, shape=(1000,)).create()


def test_the_dataset_fingerprint_changes_with_any_file_and_only_then(tiny, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    rows = lambda: decode_cache.DatasetRows.of(folders.scan_dataset(root)).fingerprint  # noqa: E731
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
    real = images._open_header
    monkeypatch.setattr(images, "_open_header", lambda p: opened.append(p) or real(p))
    first = scan_cache.scan_dataset(root)
    n = len(opened)
    assert n == sum(len(v) for v in first.items.values())
    assert scan_cache.scan_dataset(root) == first and len(opened) == n  # no header read again
    shutil.copy(sorted((root / "cat").iterdir())[0], root / "cat" / "new.png")
    third = scan_cache.scan_dataset(root)
    assert len(opened) > n and len(third.items["all"]) == len(first.items["all"]) + 1


def _loaders(root: str, augment: str = "none", size: int = 48, workers: int = 0, in_channels: int = 3):
    index = folders.scan_dataset(root, in_channels)
    splits = split_dataset(index, 0.25, seed=0)
    pre, _ = channels.normalisation(
        backbones.preprocessing("efficientnet_lite0"), in_channels, "imagenet", [it.path for it in splits.train]
    )
    pipe = decode_cache.Pipeline(pre, size, augment, in_channels)
    train, val, note = decode_cache.make_loaders(
        splits, decode_cache.DatasetRows.of(index), pipe, 8, 0, workers, torch.device("cpu")
    )
    assert note == {"used": True}
    return splits, pipe, train, val


def _count_decodes(monkeypatch) -> list:
    decodes = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda p: decodes.append(p) or real(p))
    return decodes


def test_decoded_batches_equal_decoding_every_time_bitwise(tiny):
    splits, pipe, train, val = _loaders(tiny)
    _, val_tf = transforms.build_transforms(pipe.pre, 48, "none")
    for _ in range(2):  # decoded on the way, then read from the cache
        got = torch.cat([x for x, _ in val])
        want = torch.stack([val_tf(images.load_image(it.path)) for it in splits.val])
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
    index = folders.scan_dataset(tiny)
    pipe = decode_cache.Pipeline(backbones.preprocessing("efficientnet_lite0"), 32, "light")
    images = decode_cache.DecodedImages(decode_cache.DatasetRows.of(index), pipe.stage(True))
    views = decode_cache.PixelDataset(
        images, np.array([0, 0, 0, 1]), [0, 0, 0, 1], pipe.train_transform(), seeds=np.arange(4)
    )
    ((x, y),) = list(decode_cache.read_through(views, batch_size=4))
    assert len(decodes) == 2 and images.cache.filled()[[0, 1]].all()
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])
    ((again, _),) = list(decode_cache.read_through(views, batch_size=4))
    assert torch.equal(again, x) and len(decodes) == 2  # the same views, from the cache


# --- steady batches: read at once ---------------------------------------------------------------


def _bands(root: Path) -> str:
    """Two classes of 4-band float arrays: N-channel inputs, stored as float16 rows."""
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(12):
            np.save(root / f"class{c}" / f"{i}.npy", rng.random((40, 36, 4), dtype=np.float32))
    return str(root)


def _item_by_item(self, indices):
    """PixelDataset batches as before __getitems__: each item read on its own, then stacked."""
    return decode_cache.collate([self[i] for i in indices])


def _count_items(monkeypatch) -> list:
    items = []
    real = decode_cache.PixelDataset.__getitem__
    monkeypatch.setattr(decode_cache.PixelDataset, "__getitem__", lambda self, i: items.append(i) or real(self, i))
    return items


@pytest.mark.parametrize("augment", ["none", "light"])
@pytest.mark.parametrize("in_channels", [3, 4])
def test_steady_batches_read_at_once_equal_item_by_item_batches_bitwise(
    tiny, tmp_path, monkeypatch, augment, in_channels
):
    root = tiny if in_channels == 3 else _bands(tmp_path / "bands")
    _, _, train, _ = _loaders(root, augment, in_channels=in_channels)
    assert train.dataset.images.stage.dtype == (np.uint8 if in_channels == 3 else np.float16)
    for _ in train:  # decodes every row: the next epochs are steady
        pass

    def epoch() -> list:
        torch.manual_seed(3)  # the augmentation's draws
        return list(train.for_epoch(1))

    at_once = epoch()
    monkeypatch.setattr(decode_cache.PixelDataset, "__getitems__", _item_by_item)
    by_item = epoch()
    assert len(at_once) == len(by_item) > 1
    for (x, y), (x2, y2) in zip(at_once, by_item):
        assert x.dtype == torch.float32 and torch.equal(x, x2) and torch.equal(y, y2)


def test_a_steady_epoch_reads_no_item_on_its_own(tiny, monkeypatch):
    items = _count_items(monkeypatch)
    _, _, train, _ = _loaders(tiny, augment="light")
    for _ in train:
        pass
    assert sorted(items) == list(range(len(train.dataset)))  # the first epoch decodes item by item
    items.clear()
    assert sum(len(y) for _, y in train.for_epoch(1)) == len(train.dataset) and items == []


def test_seeded_views_read_at_once_are_the_views_read_item_by_item(tiny, monkeypatch):
    index = folders.scan_dataset(tiny)
    pipe = decode_cache.Pipeline(backbones.preprocessing("efficientnet_lite0"), 32, "light")
    images = decode_cache.DecodedImages(decode_cache.DatasetRows.of(index), pipe.stage(True))
    views = decode_cache.PixelDataset(
        images, np.array([2, 0, 2, 1, 0, 2]), list(range(6)), pipe.train_transform(), seeds=np.arange(6)
    )
    ((x, y),) = list(decode_cache.read_through(views, batch_size=6))  # decodes, item by item
    items = _count_items(monkeypatch)
    ((again, y2),) = list(decode_cache.read_through(views, batch_size=6))
    assert items == [] and torch.equal(again, x) and torch.equal(y2, y)
    views.filled, views.unreadable = images.state()
    some = [5, 1, 3]
    x3, y3, fresh, bad = views.__getitems__(some)
    assert torch.equal(x3, x[some]) and y3.tolist() == some and len(fresh) == len(bad) == 0


def test_a_batch_with_a_row_to_decode_or_an_unreadable_one_goes_item_by_item(tiny, tmp_path, monkeypatch, capfd):
    root = tmp_path / "d"
    shutil.copytree(tiny, root)
    _, _, train, _ = _loaders(str(root))
    ds, paths = train.dataset, train.dataset.images.dataset.paths
    bad = Path(paths[ds.rows[0]])
    bad.write_bytes(bad.read_bytes()[:60])
    some = decode_cache.PixelDataset(ds.images, ds.rows[1::2], ds.labels[1::2])
    for _ in decode_cache.read_through(some, batch_size=8):  # every other row decoded already (as by another run)
        pass
    decodes = _count_decodes(monkeypatch)
    items = _count_items(monkeypatch)
    assert sum(len(y) for _, y in train) == len(ds) - 1
    assert sorted(decodes) == sorted(paths[r] for r in ds.rows[::2])  # the rest, each once (and the bad one)
    assert len(items) >= len(ds.rows[::2]) and "skipped unreadable image" in capfd.readouterr().err
    assert ds.images.cache.filled()[ds.rows].all() and ds.images.cache.failed().tolist() == [ds.rows[0]]
    decodes.clear()
    items.clear()
    assert sum(len(y) for _, y in train.for_epoch(1)) == len(ds) - 1  # steady: only the unreadable row's batch
    assert decodes == [] and 0 in items and len(items) <= 8
