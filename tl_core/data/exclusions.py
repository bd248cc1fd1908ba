"""A run's exclusions: images left out of training, or moved to another class, without touching the
user's files.

An `Exclusion` names one image by its path relative to the dataset folder (the form a run's config
records, so the run reproduces wherever the folder is) and says what to do with it: `exclude` (not
trained, validated or tested on) or `relabel` (read as class `to`). `apply` makes them on a scanned
dataset: splits.py applies them before anything is split, so a relabelled image is stratified with
its new class and the test split is still carved first, from what is left. Which images exist
decides a stratified split, so excluding one image can move others between train and val: the
split fingerprint (splits.py) says so, and the run records what was applied (`Applied`).
The list kept with a dataset, and how it reaches a run's config, is the service's
(service/exclusions.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal

from ..errors import UserError
from .folders import DatasetIndex, Item

ACTIONS = ("exclude", "relabel")


@dataclass(frozen=True)
class Exclusion:
    """One image of a dataset, by its path relative to the dataset folder: left out, or read as class `to`."""

    path: str
    action: Literal["exclude", "relabel"] = "exclude"
    to: str | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("an exclusion names an image: its path is empty")
        if self.action == "relabel" and not self.to:
            raise ValueError(f"{self.path}: relabel needs the class to move it to ('to')")
        if self.action == "exclude" and self.to is not None:
            raise ValueError(f"{self.path}: an excluded image has no class to move to; use action 'relabel'")


@dataclass
class Applied:
    """What a run's exclusions did to its dataset: the images left out and moved (relative paths),
    and the entries that named no image the scan found (removed since, or skipped as unreadable)."""

    excluded: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    moved_to: dict[str, str] = field(default_factory=dict)  # each relabelled image's class

    def to_dict(self) -> dict:
        return {"excluded": self.excluded, "relabelled": self.relabelled, "not_found": self.not_found}


def relative(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """`path` as an exclusion names it: relative to the dataset folder `root`, with forward slashes.
    An absolute path must lie inside the folder; a relative one is taken as relative to it."""
    base = Path(root).expanduser().resolve()
    p = Path(path).expanduser()
    if p.is_absolute():
        # The scan lists a file under the resolved folder without resolving the file itself: compare as written
        # first (a symlinked file inside the dataset), then resolved.
        for candidate in (p, p.resolve()):
            if candidate.is_relative_to(base):
                return PurePosixPath(*candidate.relative_to(base).parts).as_posix()
        raise UserError(f"{path} is not inside the dataset folder {base}; name images of that folder only")
    parts = PurePosixPath(str(path).replace(os.sep, "/")).parts
    if ".." in parts or not parts:
        raise UserError(f"{path!r}: name an image inside the dataset folder, relative to it (no '..')")
    return PurePosixPath(*[x for x in parts if x != "."]).as_posix()


def apply(index: DatasetIndex, exclude: Sequence[Exclusion]) -> tuple[DatasetIndex, Applied]:
    """The dataset as a run with these exclusions sees it (the same folder, classes and skipped files;
    excluded images gone, relabelled ones under their new class), and what was applied."""
    applied = Applied()
    if not exclude:
        return index, applied
    by_path = {e.path: e for e in exclude}
    for e in exclude:
        if e.action == "relabel" and e.to not in index.classes:
            raise UserError(
                f"exclusions: {e.path} is moved to class {e.to!r}, which {index.root} does not have "
                f"(its classes: {', '.join(index.classes[:20])}); undo that entry or name one of them"
            )
    found: set[str] = set()
    items: dict[str, list[Item]] = {}
    for split, listed in index.items.items():
        kept = []
        for it in listed:
            name = PurePosixPath(*Path(os.path.relpath(it.path, index.root)).parts).as_posix()
            entry = by_path.get(name)
            if entry is None:
                kept.append(it)
                continue
            found.add(name)  # a scan lists each image in one split
            (applied.excluded if entry.action == "exclude" else applied.relabelled).append(name)
            if entry.action == "relabel":
                applied.moved_to[name] = str(entry.to)
                kept.append(Item(it.path, index.classes.index(str(entry.to))))
        items[split] = kept
    applied.not_found = sorted(set(by_path) - found)
    applied.excluded.sort()
    applied.relabelled.sort()
    return replace(index, items=items), applied
