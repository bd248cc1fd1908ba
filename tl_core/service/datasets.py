"""Datasets as a front end offers them: the folders it may read, a report on one, sample images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import settings
from ..data import folders, splits
from ..data.exclusions import Exclusion
from ..errors import UserError


def data_roots() -> list[Path]:
    """Folders datasets may be read from (TL_DATA_ROOTS, or ./data), resolved."""
    return [p.expanduser().resolve() for p in settings.current().data_roots]


def dataset_folders(roots: Iterable[Path]) -> list[str]:
    """Every visible sub-folder of every root, as absolute paths, sorted by name."""
    found: list[str] = []
    for root in roots:
        if root.is_dir():
            found += sorted(str(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return found


def resolve_data_path(path: str, roots: Iterable[Path]) -> str:
    """The real path of `path` if it lies inside one of `roots` (symlinks followed), else UserError."""
    roots = list(roots)
    if not path or not path.strip():
        raise UserError("choose a dataset folder first")
    real = Path(path.strip()).expanduser().resolve()
    if not any(real == root or real.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise UserError(
            f"{path} is outside the data folders the dashboard may read ({allowed}); "
            f"copy or link the dataset into one of them, or add its parent to TL_DATA_ROOTS"
        )
    if not real.is_dir():
        raise UserError(f"{path} is not a folder; choose the folder that holds one sub-folder per class")
    return str(real)


def dataset_report(
    path: str,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    test_fraction: float = 0.0,
    exclude: Sequence[dict] = (),
) -> dict:
    """Classes, images per class per split (train, val, test), sizes, skipped files and warnings
    (UserError if unusable); with `exclude` (entries {path, action, to}: the dataset's exclusion
    list), as a run with them splits the folder."""
    entries = [Exclusion(**e) for e in exclude]
    return splits.dataset_report(path, val_fraction, split_seed, test_fraction, entries)


def sample_images(path: str, per_class: int = 4) -> dict[str, list[str]]:
    """A few image paths of every class, for thumbnails."""
    index = folders.scan_dataset(path)
    out: dict[str, list[str]] = {name: [] for name in index.classes}
    for items in index.items.values():
        for item in items:
            bucket = out[index.classes[item.label]]
            if len(bucket) < per_class:
                bucket.append(item.path)
    return out
