"""On-disk caches: memory-mapped arrays named by what made them, filled row by row; dataset scans.

The decoded images (decoded.py) and the frozen features (features.py) are both "one row per
image of a dataset", costly to compute and the same for every run that asks with the same key.
An entry lives in `<cache dir>/<kind>/<digest of its key>/`:
  key.json     the key in full, to read (and to refuse a digest collision);
  data.npy     the rows (np.lib.format.open_memmap), created whole under a temp name and renamed;
  filled.npy   which rows hold data, replaced by temp + rename only after the rows are flushed;
  failed.json  rows that could not be computed (an unreadable image), if any.
So a crash or a cancel never leaves a row marked filled that is not, and the next run computes
only the rows still missing. Filling holds an exclusive lock (flock) on the entry, so two runs
that need the same rows compute them once. Delete the cache folder at any time to reclaim the
space; everything in it is recomputed on demand.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import settings
from . import folders, images


def cache_dir() -> Path:
    """$TL_CACHE_DIR, else <TL_RUNS_DIR or runs>/cache."""
    return settings.current().cache_dir


def max_entry_bytes() -> int:
    """The largest single entry to create ($TL_CACHE_MAX_GB, 20 GB by default)."""
    return int(settings.current().cache_max_gb * 2**30)


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --- fingerprints: what a key says about its inputs -------------------------------------------


def files_fingerprint(paths: list[str], root: str, extra: object = None) -> str:
    """Hash of every file's (path relative to root, size, mtime_ns), in order, plus `extra`.

    Cheap (one stat per file, no reading) and changes when any file is added, removed,
    renamed or rewritten.
    """
    h = hashlib.sha256(json.dumps(extra, default=str).encode())
    for path in paths:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- a dataset's scan, remembered ----------------------------------------------------------------


def scan_dataset(root: str | os.PathLike, in_channels: int = 3):
    """folders.scan_dataset, reused while nothing under `root` changed (one scan per channel count).

    Scanning reads every image's header (seconds for 10,000 files); listing the tree with each
    entry's size, mtime and symlink target takes a fraction of that and says whether any file
    was added, removed, renamed or rewritten since the last scan.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        return folders.scan_dataset(root, in_channels)  # its own error messages
    path = path.resolve()
    code = b"".join(Path(inspect.getfile(m)).read_bytes() for m in (folders, images))  # the scan's own code
    key = {
        "root": str(path),
        "tree": _tree_fingerprint(path),
        "max_pixels": images.MAX_IMAGE_PIXELS,
        "code": hashlib.sha256(code).hexdigest()[:16],
        **({"in_channels": in_channels} if in_channels != 3 else {}),
    }
    saved = cache_dir() / "scans" / f"{digest(key)}.json"
    if saved.exists():
        obj = json.loads(saved.read_text())
        items = {k: [folders.Item(p, label) for p, label in v] for k, v in obj["items"].items()}
        return folders.DatasetIndex(
            obj["root"],
            obj["layout"],
            obj["classes"],
            items,
            [tuple(x) for x in obj["skipped"]],
            [tuple(x) for x in obj["sizes"]],
        )
    index = folders.scan_dataset(path, in_channels)
    obj = {
        "root": index.root,
        "layout": index.layout,
        "classes": index.classes,
        "items": {k: [(it.path, it.label) for it in v] for k, v in index.items.items()},
        "skipped": index.skipped,
        "sizes": index.sizes,
    }
    saved.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(saved, json.dumps(obj))
    return index


def _tree_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(folder, name)
            st = os.lstat(full)
            target = os.readlink(full) if os.path.islink(full) else ""
            h.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\0{target}\n".encode())
    return h.hexdigest()


# --- one entry -------------------------------------------------------------------------------


class CacheTooLarge(Exception):
    """The entry would not fit: over TL_CACHE_MAX_GB or the free disk space."""


class ArrayCache:
    """A (rows, *shape) array on disk with a mask of the rows filled so far."""

    def __init__(
        self, kind: str, key: dict, rows: int, shape: tuple[int, ...], dtype=np.float32, root: Path | None = None
    ):
        self.key = {"kind": kind, **key}
        self.folder = (root or cache_dir()) / kind / digest(self.key)
        self.rows, self.shape, self.dtype = rows, tuple(shape), np.dtype(dtype)
        self.nbytes = rows * int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._data: np.memmap | None = None

    # reading
    def filled(self) -> np.ndarray:
        path = self.folder / "filled.npy"
        return np.load(path) if path.exists() else np.zeros(self.rows, dtype=bool)

    def missing(self, rows: np.ndarray) -> np.ndarray:
        """Those of `rows` not computed yet, in order."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows[~self.filled()[rows]]

    def failed(self) -> np.ndarray:
        """Rows that could not be computed (an unreadable image): filled, but with no data."""
        path = self.folder / "failed.json"
        return np.array(json.loads(path.read_text()) if path.exists() else [], dtype=np.int64)

    def data(self) -> np.memmap:
        """The array, memory-mapped read-only (only filled rows are meaningful)."""
        return np.load(self.folder / "data.npy", mmap_mode="r")

    def check_fits(self) -> None:
        """Raise CacheTooLarge for a new entry over TL_CACHE_MAX_GB or the free disk space."""
        if (self.folder / "data.npy").exists():
            return
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder.parent).free
        if self.nbytes > max_entry_bytes() or self.nbytes > 0.9 * free:
            raise CacheTooLarge(
                f"{self.nbytes / 2**30:.1f} GB needed; limit {max_entry_bytes() / 2**30:.0f} GB "
                f"(TL_CACHE_MAX_GB), {free / 2**30:.1f} GB free"
            )

    # writing
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The entry's exclusive lock (flock: released when the file closes, even on a crash)."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with open(self.folder.parent / f"{self.folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def create(self) -> None:
        """Make the entry (all rows missing) if it does not exist yet."""
        if not (self.folder / "data.npy").exists():
            with self.locked():
                self._create_if_missing()

    def writable(self) -> np.memmap:
        """The array, memory-mapped for writing rows (by this or any other process)."""
        return np.load(self.folder / "data.npy", mmap_mode="r+")

    @contextlib.contextmanager
    def filling(self) -> Iterator[ArrayCache]:
        """Hold the lock while rows are computed (so two runs compute them once); write() and commit()."""
        with self.locked():
            self._create_if_missing()
            self._data = self.writable()
            try:
                yield self
            finally:
                self._data = None

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        assert self._data is not None, "write() only inside filling()"
        self._data[np.asarray(rows)] = values

    def commit(self, rows: np.ndarray, failed: np.ndarray | None = None) -> None:
        """Mark `rows` (and the `failed` ones) filled, atomically, once their data is written.

        Call it holding the lock: inside filling(), or in `with locked()`.
        """
        if self._data is not None:
            self._data.flush()
        rows = np.asarray(rows, dtype=np.int64)
        if failed is not None and len(failed):
            known = set(self.failed().tolist()) | set(np.asarray(failed).tolist())
            _atomic_write(self.folder / "failed.json", json.dumps(sorted(int(r) for r in known)))
            rows = np.concatenate([rows, np.asarray(failed, dtype=np.int64)])
        mask = self.filled()
        mask[rows] = True
        tmp = self.folder / f"filled.tmp{os.getpid()}.npy"
        np.save(tmp, mask)
        os.replace(tmp, self.folder / "filled.npy")

    def _create_if_missing(self) -> None:
        if (self.folder / "data.npy").exists():
            have = json.loads((self.folder / "key.json").read_text())
            if have != json.loads(json.dumps(self.key, default=str)):
                raise RuntimeError(f"cache entry {self.folder} holds another key; delete the folder")
            return
        self.check_fits()
        tmp = self.folder.with_name(self.folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "key.json").write_text(json.dumps(self.key, indent=1, sort_keys=True, default=str))
        arr = np.lib.format.open_memmap(tmp / "data.npy", mode="w+", dtype=self.dtype, shape=(self.rows, *self.shape))
        del arr  # a sparse file: rows take space as they are written
        np.save(tmp / "filled.npy", np.zeros(self.rows, dtype=bool))
        shutil.rmtree(self.folder, ignore_errors=True)  # a half entry from a crash, if any
        os.replace(tmp, self.folder)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
