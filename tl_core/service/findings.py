"""The data check's findings as the front ends show them: a dataset's newest check, and what it said
about each image (a likely label error, a duplicate, an outlier), so that a gallery of images can
mark the ones the check flagged (New run's galleries; the images every run gets wrong).

The check itself (`check-data`) stores its result as an artifact of the experiment named in its
config, as the probe does, with its `data` and `job`; its JSON has `label_issues` (most likely
first, each with `path`, `split`, `label`, `suggested`, `score`), `duplicates` (groups, leaks
across splits first: `kind` exact or near, `cross_split`, `similarity`, `images` with `path`,
`split`, `label`), `outliers` (`path`, `split`, `label`, `score`), `classes` and `skipped`.
Paths are matched relative to the dataset folder, however the check wrote them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.exclusions import relative
from ..errors import UserError
from ..store import Store
from .exclusions import dataset_key
from .jobs import KINDS

CHECK = "check-data"  # the job a page starts to check a dataset (jobs.KINDS)


def check_kind() -> str:
    """The artifact kind a check is stored as (the job's, jobs.KINDS)."""
    return KINDS.get(CHECK, "data_check")


def latest_check(store: Store, data: str, experiment: str | None = None) -> dict | None:
    """The newest check of the dataset folder `data`: the experiment's own if it has one, else the
    newest of any experiment (a check is about the folder, whichever experiment it was filed under)."""
    key = dataset_key(data)

    def of_data(found: list) -> list:
        return [a for a in found if a.data.get("data") and dataset_key(str(a.data["data"])) == key]

    if experiment and (own := of_data(store.artifacts(experiment, check_kind()))):
        return own[0].data
    every = [a for name in store.list_experiments() for a in of_data(store.artifacts(name, check_kind()))]
    return max(every, key=lambda a: (a.created_at, a.id)).data if every else None


def _name(root: str, path: str) -> str | None:
    try:
        return relative(root, path)
    except UserError:  # not inside the folder: nothing of it to flag
        return None


def flags(check: dict, data: str) -> dict[str, list[str]]:
    """What the check said about each image it flagged, in words, by path relative to the folder `data`."""
    out: dict[str, list[str]] = {}

    def say(path: str, text: str) -> None:
        if (name := _name(data, path)) is not None:
            out.setdefault(name, []).append(text)

    for issue in check.get("label_issues", []):
        say(
            issue["path"],
            f"likely label error: in {issue.get('label')}, looks like {issue.get('suggested')}"
            f" (score {float(issue.get('score', 0)):.2f})",
        )
    for group in check.get("duplicates", []):
        alike = group.get("by") == ["embeddings"]  # not a copy by its bytes or pixels: a look-alike
        leak = " (a leak if one picture)" if alike else " (a leak)"
        where = f" across splits{leak}" if group.get("cross_split") else ""
        what = "look-alike (embeddings)" if alike else f"{group.get('kind', 'near')} duplicate"
        for image in group.get("images", []):
            say(image["path"], f"{what} of {len(group['images']) - 1} other image(s){where}")
    for outlier in check.get("outliers", []):
        say(outlier["path"], f"outlier: far from every class (score {float(outlier.get('score', 0)):.2f})")
    return out


def flagged(store: Store, data: str, paths: Sequence[str], experiment: str | None = None) -> dict[str, str]:
    """Of `paths` (images of the dataset folder `data`, as a run's predictions name them), those the
    dataset's newest check flagged, each with what it said; {} where the folder was never checked."""
    check = latest_check(store, data, experiment)
    if check is None:
        return {}
    said = flags(check, data)
    out = {}
    for path in paths:
        if (name := _name(data, path)) is not None and name in said:
            out[path] = "; ".join(said[name])
    return out
