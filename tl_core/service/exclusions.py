"""A dataset's exclusion list, as a front end edits it, and how it reaches a run.

The list is kept in the store with the dataset (its folder, resolved), never in the user's files:
each entry leaves an image out of training (`exclude_image`) or reads it as another class
(`relabel_image`), and `undo_exclusion` removes the entry. When runs are planned or queued
(`with_exclusions`, which `runs.queue_runs`, the New run page and the CLI call) the list as it is then
is copied into each run's config (`RunConfig.exclude`), so a run says exactly which images it used
and reproduces whatever the list becomes; `run` and `experiment` take `--exclude FILE` instead
(`read_exclude_file`). How a run applies them is data/exclusions.py's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data import exclusions, scan_cache
from ..errors import UserError
from ..store import ExcludedImage, Store

EXCLUDE_FILE_HELP = (
    "images to leave out of training or move to another class, instead of the dataset's exclusion list "
    '(kept in the store; runs copy it when queued): a JSON list of paths, or of {"path", "action": '
    '"exclude"|"relabel", "to": class} objects (also a run\'s config, or {"exclude": [...]}), or a '
    "plain text file of paths, one a line (# comments); paths relative to --data or absolute inside it; "
    "an empty list: none"
)


def dataset_key(data: str) -> str:
    """The dataset an exclusion list belongs to: its folder, resolved (however a front end wrote it)."""
    return str(Path(data).expanduser().resolve())


def list_exclusions(store: Store, data: str) -> list[ExcludedImage]:
    """The dataset's exclusion list, by path (relative to the dataset folder)."""
    return store.exclusions(dataset_key(data))


def image_name(data: str, path: str) -> str:
    """An image of the dataset folder `data` as its entry names it: relative to the folder."""
    return exclusions.relative(data, path)


def _image(data: str, path: str) -> str:
    """`path` as an entry names it (relative to the folder), refused unless it is a file of the dataset."""
    name = exclusions.relative(data, path)
    if not (Path(dataset_key(data)) / name).is_file():
        raise UserError(f"{path}: no such image in {dataset_key(data)}; name a file of the dataset folder")
    return name


def exclude_image(
    store: Store, data: str, path: str, added_by: str | None = None, note: str | None = None
) -> ExcludedImage:
    """Leave the image out of the runs queued from now on (its file stays where it is)."""
    return store.set_exclusion(dataset_key(data), _image(data, path), "exclude", None, added_by, note)


def relabel_image(
    store: Store, data: str, path: str, to: str, added_by: str | None = None, note: str | None = None
) -> ExcludedImage:
    """Read the image as class `to` in the runs queued from now on (its file stays where it is)."""
    classes = scan_cache.scan_dataset(data).classes
    if to not in classes:
        raise UserError(f"class {to!r}: {dataset_key(data)} has no such class (its classes: {', '.join(classes[:20])})")
    return store.set_exclusion(dataset_key(data), _image(data, path), "relabel", to, added_by, note)


def undo_exclusion(store: Store, data: str, path: str) -> bool:
    """Remove the image's entry (runs queued from now on use it as its folder says); False if it had none."""
    return store.remove_exclusion(dataset_key(data), exclusions.relative(data, path))


def with_exclusions(store: Store, base: dict[str, Any], file: str | None = None) -> dict[str, Any]:
    """Run settings `base` with their exclusions: those of `file` (--exclude FILE), else the dataset's
    list as it is now. Settings without a dataset are returned as they are."""
    if not base.get("data"):
        return base
    if file is not None:
        return {**base, "exclude": read_exclude_file(file, base["data"])}
    return {**base, "exclude": [e.entry() for e in list_exclusions(store, base["data"])]}


def read_exclude_file(file: str, data: str) -> list[dict[str, Any]]:
    """The entries of an --exclude FILE (its format: EXCLUDE_FILE_HELP), each path relative to `data`."""
    path = Path(file).expanduser()
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"--exclude {file}: cannot read it ({e.strerror or e})") from None
    try:
        found: Any = json.loads(text)
    except json.JSONDecodeError:
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if isinstance(found, dict):
        found = found.get("exclude", found.get("config", {}).get("exclude"))
    if not isinstance(found, list):
        raise UserError(
            f"--exclude {file}: expected a list of paths or of {{path, action, to}} entries (or an object with "
            f'an "exclude" list); found {type(found).__name__}'
        )
    entries = []
    for item in found:
        entry = {"path": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UserError(f'--exclude {file}: {item!r} is neither a path nor an entry with a "path"')
        entries.append({**entry, "path": exclusions.relative(data, entry["path"])})
    return entries
