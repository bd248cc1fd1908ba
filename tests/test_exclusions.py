"""A dataset's exclusion list (issue #25, items 2 and 3): kept in the store beside the dataset, never in
its files; copied into each run's config when runs are queued (or read from --exclude FILE);
applied before the split, so excluded images are in no split and relabelled ones are read as their
new class; undoable. On the dashboard: New run's galleries of a stored check's findings, whose
buttons add and undo entries, and the error galleries' mark on images the check flagged.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from tl_core import service
from tl_core.analysis import duplicates
from tl_core.cli import main
from tl_core.config import RunConfig, make_config
from tl_core.data import exclusions, folders
from tl_core.data.splits import split_dataset, split_fingerprint
from tl_core.errors import UserError
from tl_core.service import findings, jobs
from tl_core.store import Prediction
from tl_core.store.run_folders import job_log
from ui import data_check

from .test_app import demo_root, env, make_run, no_exception, page  # noqa: F401  (fixtures)


def _images(root: str, cls: str) -> list[str]:
    return sorted(str(p) for p in (Path(root) / cls).glob("*.png"))


def _name(root: str, path: str) -> str:
    return Path(path).relative_to(Path(root).resolve()).as_posix()


# --- the data: applied before the split ------------------------------------------------------------


def test_without_exclusions_every_split_is_as_before_and_with_them_they_are_applied_first(tiny):
    index = folders.scan_dataset(tiny)
    plain = split_dataset(index, 0.25, 1.0, 3, 0.25)
    assert split_dataset(index, 0.25, 1.0, 3, 0.25, ()) == plain  # nothing to apply: the same draws
    gone, moved = _images(tiny, "bear")[0], _images(tiny, "bird")[0]
    entries = [
        exclusions.Exclusion(_name(tiny, gone)),
        exclusions.Exclusion(_name(tiny, moved), "relabel", "cat"),
        exclusions.Exclusion("cow/not-there.png"),
    ]
    s = split_dataset(index, 0.25, 1.0, 3, 0.25, entries)
    everything = {it.path: it.label for it in [*s.train, *s.val, *s.test]}
    assert gone not in everything and everything[moved] == index.classes.index("cat")
    assert len(everything) == sum(len(v) for v in index.items.values()) - 1
    # Stratified on what is left: the test split carved first holds a quarter of each class as it now is.
    per_class = {c: sum(1 for label in everything.values() if label == c) for c in range(4)}
    assert per_class == {0: 7, 1: 7, 2: 9, 3: 8}
    assert {c: sum(1 for it in s.test if it.label == c) for c in range(4)} == {
        c: max(1, round(n * 0.25)) for c, n in per_class.items()
    }
    assert s.applied.to_dict() == {
        "excluded": [_name(tiny, gone)],
        "relabelled": [_name(tiny, moved)],
        "not_found": ["cow/not-there.png"],
    }
    assert s.index is index  # the folder as scanned: every image keeps its row in the caches
    # A relabelled image makes another split even where the same images are in val and test.
    only_moved = split_dataset(index, 0.25, 1.0, 3, 0.25, [entries[1]])
    same_paths = split_dataset(index, 0.25, 1.0, 3, 0.25, [exclusions.Exclusion(_name(tiny, moved), "relabel", "bird")])
    assert split_fingerprint(only_moved) != split_fingerprint(same_paths)
    with pytest.raises(UserError, match="class 'wolf', which .* does not have"):
        split_dataset(index, 0.25, 1.0, 3, 0.25, [exclusions.Exclusion(_name(tiny, moved), "relabel", "wolf")])


def test_a_config_records_its_exclusions_in_order_and_without_them_keeps_its_fingerprint():
    # Computed before exclusions existed (test_methods: the same number): checkpoints still resume.
    assert make_config(data="x", cudnn_benchmark="on").fingerprint() == "a77493380122f929"
    cfg = make_config(data="x", exclude=[{"path": "b.png"}, {"path": "a.png", "action": "relabel", "to": "cat"}])
    assert [e["path"] for e in cfg.model_dump()["exclude"]] == ["a.png", "b.png"]
    assert cfg.fingerprint() != make_config(data="x").fingerprint()
    assert RunConfig.from_stored(json.loads(json.dumps(cfg.model_dump()))).fingerprint() == cfg.fingerprint()
    for bad in ([{"path": "a.png", "action": "relabel"}], [{"path": "a.png"}, {"path": "a.png"}]):
        with pytest.raises(UserError, match="--exclude"):
            make_config(data="x", exclude=bad)


# --- the list in the store, and the runs that copy it ------------------------------------------------


def test_the_list_is_kept_with_the_dataset_copied_into_queued_runs_and_undone(tiny, store):
    gone, moved = _images(tiny, "bear")[1], _images(tiny, "cow")[2]
    service.exclude_image(store, tiny, gone, added_by="ada", note="the check: an outlier")
    service.relabel_image(store, tiny + "/./", _name(tiny, moved), "bird")  # the folder however written
    listed = service.list_exclusions(store, str(Path(tiny).resolve()))
    assert [(e.path, e.action, e.to) for e in listed] == [
        (_name(tiny, gone), "exclude", None),
        (_name(tiny, moved), "relabel", "bird"),
    ]
    assert (listed[0].added_by, listed[0].note) == ("ada", "the check: an outlier")
    with pytest.raises(UserError, match="no such class"):
        service.relabel_image(store, tiny, moved, "wolf")
    with pytest.raises(UserError, match="not inside the dataset folder"):
        service.exclude_image(store, tiny, "/etc/hostname")
    with pytest.raises(UserError, match="no such image"):
        service.exclude_image(store, tiny, "bear/none.png")

    base = {"data": tiny, "image_size": 32, "experiment": "x"}
    (run,) = service.queue_runs(store, base, ["feature_extraction"], [0])
    assert run.config["exclude"] == [
        {"path": _name(tiny, gone), "action": "exclude", "to": None},
        {"path": _name(tiny, moved), "action": "relabel", "to": "bird"},
    ]
    assert service.undo_exclusion(store, tiny, gone) and not service.undo_exclusion(store, tiny, gone)
    assert service.undo_exclusion(store, tiny, moved)
    (later,) = service.queue_runs(store, base, ["feature_extraction"], [0])
    assert later.config["exclude"] == [] and store.get_run(run.id).config["exclude"][0]["path"] == _name(tiny, gone)
    # More seeds of a run are exactly its settings: its exclusions, not the list as it is now.
    (more,) = service.more_seeds(store, [store.get_run(run.id)], n=1)
    assert more.config["exclude"] == run.config["exclude"]
    # Runs with other exclusions are another group; one recorded before exclusions existed is one without.
    before = store.create_run({k: v for k, v in later.config.items() if k != "exclude"}, "x")
    runs = [store.get_run(i) for i in (run.id, more.id, later.id, before.id)]
    assert service.differing_keys(runs) == ["exclude"]
    groups = service.group_runs(runs)
    assert [(g.label, [r.id for r in g.runs]) for g in groups] == [
        ("2 images excluded or moved", [run.id, more.id]),
        ("no exclusions", [later.id, before.id]),
    ]


def test_exclude_file_takes_paths_entries_or_a_run_config_and_the_cli_records_it(tiny, store, tmp_path):
    a, b = _images(tiny, "cat")[0], _images(tiny, "cow")[0]
    plain = tmp_path / "paths.txt"
    plain.write_text(f"# left out\n{a}\n\n{_name(tiny, b)}\n")
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps([_name(tiny, a), {"path": b, "action": "relabel", "to": "bear"}]))
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"config": {"exclude": [{"path": _name(tiny, a), "action": "exclude"}]}}))
    assert service.exclusions.read_exclude_file(str(plain), tiny) == [
        {"path": _name(tiny, a)},
        {"path": _name(tiny, b)},
    ]
    assert service.exclusions.read_exclude_file(str(entries), tiny)[1] == {
        "path": _name(tiny, b),
        "action": "relabel",
        "to": "bear",
    }
    assert service.exclusions.read_exclude_file(str(config), tiny) == [{"path": _name(tiny, a), "action": "exclude"}]
    (tmp_path / "bad.json").write_text('{"paths": 3}')
    with pytest.raises(UserError, match="expected a list"):
        service.exclusions.read_exclude_file(str(tmp_path / "bad.json"), tiny)

    service.exclude_image(store, tiny, _images(tiny, "bird")[0])  # the stored list: --exclude replaces it
    argv = ["run", "--data", tiny, "--image-size", "32", "--detach", "--db", store.url]
    assert main([*argv, "--exclude", str(entries)]) == 0
    assert main(argv) == 0
    grid = ["experiment", "--data", tiny, "--strategies", "feature_extraction,full", "--image-size", "32"]
    assert main([*grid, "--detach", "--db", store.url, "--exclude", str(plain)]) == 0
    with_file, stored, *experiment = sorted(store.list_runs(), key=lambda r: r.id)
    assert [e["path"] for e in with_file.config["exclude"]] == sorted([_name(tiny, a), _name(tiny, b)])
    assert [e["path"] for e in stored.config["exclude"]] == [_name(tiny, _images(tiny, "bird")[0])]
    names = sorted([_name(tiny, a), _name(tiny, b)])  # the plain file: both left out
    assert [r.config["exclude"] for r in experiment] == [
        [{"path": n, "action": "exclude", "to": None} for n in names]
    ] * 2


@pytest.mark.slow
def test_excluded_images_are_not_trained_on_and_the_run_records_them(tiny, store, monkeypatch):
    from tl_core.training import run as run_module

    from .helpers import train

    seen = []
    load = run_module.load_data
    monkeypatch.setattr(run_module, "load_data", lambda cfg, device: seen.append(load(cfg, device)) or seen[-1])
    gone, moved = _images(tiny, "bear")[3], _images(tiny, "cat")[4]
    service.exclude_image(store, tiny, gone)
    service.relabel_image(store, tiny, moved, "cow")
    settings = service.with_exclusions(store, {"data": tiny, "strategy": "feature_extraction", "epochs": 1})
    result = train(store, **settings)
    assert result.status == "completed", result.error
    run = store.get_run(result.run_id)
    assert [e["path"] for e in run.config["exclude"]] == sorted([_name(tiny, gone), _name(tiny, moved)])
    (d,) = seen
    used = {it.path: it.label for it in [*d.splits.train, *d.splits.val, *d.splits.test]}
    assert gone not in used and used[moved] == d.classes.index("cow")
    assert run.summary.train_images + run.summary.val_images == 31
    assert run.summary.exclusions.excluded == [_name(tiny, gone)]
    assert run.summary.exclusions.relabelled == [_name(tiny, moved)]
    predicted = {p.path: p.label for p in store.predictions(run.id)}
    assert gone not in predicted and predicted.get(moved, d.classes.index("cow")) == d.classes.index("cow")
    # The run reproduces from its own config, whatever the list is now.
    service.undo_exclusion(store, tiny, gone)
    again = train(store, **RunConfig.from_stored(run.config).model_dump())
    assert store.get_run(again.run_id).summary.exclusions.excluded == [_name(tiny, gone)]


# --- the dashboard ------------------------------------------------------------------------------------


def _check(root: Path) -> dict:
    """A check's result as `check-data` stores it (its JSON, agreed), on the demo data's animals."""
    cats, dogs, birds = (sorted((root / "animals" / c).glob("*.png")) for c in ("cat", "dog", "bird"))
    return {
        "data": str(root / "animals"),
        "job": None,
        "label_issues": [
            {"path": str(cats[0]), "split": "train", "label": "cat", "suggested": "dog", "score": 0.03},
            {"path": str(cats[1]), "split": "val", "label": "cat", "suggested": "bird", "score": 0.11},
        ],
        "duplicates": [
            {
                "kind": "exact",
                "cross_split": True,
                "similarity": 1.0,
                "images": [
                    {"path": str(dogs[0]), "split": "train", "label": "dog"},
                    {"path": str(dogs[1]), "split": "val", "label": "dog"},
                ],
            }
        ],
        "outliers": [{"path": str(birds[0]), "split": "train", "label": "bird", "score": 0.92}],
        "classes": {"cat": 12, "dog": 12},
        "skipped": [],
    }


def test_new_run_shows_a_stored_check_and_its_buttons_add_and_undo_exclusions(env, demo_root):
    check = _check(demo_root)
    env.add_artifact("earlier", findings.check_kind(), check)  # a check of the folder, from another experiment
    data = str(demo_root / "animals")
    at = no_exception(page("new_run.py").run())
    text = " ".join(m.value for m in at.markdown)
    assert "looks like **dog**" in text and "across splits: a leak" in text
    tabs = [t.label for t in at.tabs]
    assert "Likely label errors (2)" in tabs and "Duplicates (1 groups, 1 across splits)" in tabs

    first, second = (_name(data, i["path"]) for i in check["label_issues"])
    outlier = _name(data, check["outliers"][0]["path"])
    at = no_exception(at.button(key=f"exclude_issues_{data_check._digest(first)}").click().run())
    at = no_exception(at.button(key=f"move_issues_{data_check._digest(second)}").click().run())
    at = no_exception(at.button(key=f"exclude_outliers_{data_check._digest(outlier)}").click().run())
    listed = {e.path: (e.action, e.to) for e in service.list_exclusions(env, data)}
    assert listed == {first: ("exclude", None), second: ("relabel", "bird"), outlier: ("exclude", None)}
    assert service.list_exclusions(env, data)[0].note.startswith("the check: ")
    assert any(e.label == "Excluded images (3)" for e in at.expander)
    # The counts above are the runs' to be: two images fewer, one moved.
    at = no_exception(at.run())
    counted = {m.label: int(m.value) for m in at.metric if m.label in ("Train images", "Val images", "Test images")}
    assert sum(counted.values()) == len(folders.scan_dataset(data).items["all"]) - 2
    assert any("without the 2 excluded images, with the 1 moved ones" in c.value for c in at.caption)

    # Undo, from the image's own button and from the list; the plan's runs take the list as it is.
    at = no_exception(at.button(key=f"undo_issues_{data_check._digest(first)}").click().run())
    at = no_exception(at.button(key=f"undo_list_{data_check._digest(outlier)}").click().run())
    assert {e.path for e in service.list_exclusions(env, data)} == {second}
    assert any("Each records the 1 excluded or moved images" in c.value for c in at.caption)
    at = no_exception(at.button(key="launch").click().run())
    (run,) = env.list_runs()
    assert run.config["exclude"] == [{"path": second, "action": "relabel", "to": "bird"}]


@pytest.mark.slow  # the job's process computes the demo folder's features at 224 px (~15 s on 2 cores)
def test_check_the_data_on_new_run_is_a_job_whose_findings_the_page_then_shows(env, demo_root, tmp_path, monkeypatch):
    # The demo folder with a copy made in it: a cat re-encoded as a JPEG under another name.
    shutil.copytree(demo_root / "animals", tmp_path / "data" / "animals")
    monkeypatch.setenv("TL_DATA_ROOTS", str(tmp_path / "data"))
    data = str((tmp_path / "data" / "animals").resolve())
    cat = _images(data, "cat")
    Image.open(cat[0]).convert("RGB").save(Path(data) / "cat" / "leak.jpg", quality=75)
    at = no_exception(page("new_run.py").run())
    assert any("No check of this folder yet" in c.value for c in at.caption)
    at = no_exception(at.button(key="check_data").click().run())
    job = at.session_state[data_check.JOB]
    assert job.command == "check-data" and "--image-size" not in job.args
    deadline = time.monotonic() + 300
    while jobs.result(env, job) is None and time.monotonic() < deadline:
        assert jobs.failure(env, job) is None, job_log(job.id).read_text()
        time.sleep(1)
    found = jobs.result(env, job)
    assert found is not None and found["data"] == data and found["image_size"] == 224
    copy = next(g for g in found["duplicates"] if {cat[0], str(Path(data) / "cat" / "leak.jpg")} <= _paths(g))
    assert copy["kind"] == "near" and copy["pixel_similarity"] >= duplicates.PIXEL_AT
    at = no_exception(page("new_run.py").run())
    tabs = [t.label for t in at.tabs]
    assert f"Likely label errors ({found['found']['label_issues']})" in tabs
    assert any(t.startswith(f"Duplicates ({found['found']['duplicates']} groups") for t in tabs)
    assert any("pixels 0.99" in m.value or "pixels 1.000" in m.value for m in at.markdown)


def _paths(group: dict) -> set[str]:
    return {str(Path(i["path"])) for i in group["images"]}


def test_the_error_galleries_mark_the_images_every_run_gets_wrong_that_the_check_flagged(env, demo_root):
    check = _check(demo_root)
    env.add_artifact("exp", findings.check_kind(), check)
    data = str(demo_root / "animals")
    cats, dogs = (sorted((demo_root / "animals" / c).glob("*.png")) for c in ("cat", "dog"))
    flagged, plain, right = check["label_issues"][0]["path"], str(cats[2]), str(dogs[3])
    runs = []
    for strategy in ("feature_extraction", "full"):
        run = make_run(env, strategy, strategy, experiment="exp")  # classes cat and dog
        env.update_run(run.id, config={**run.config, "data": data})
        env.save_predictions(
            run.id,
            2,
            [
                Prediction(0, flagged, 0, 1, 0.8, 0.1, 2.3),  # a cat the check says looks like a dog: wrong in both
                Prediction(1, plain, 0, 1, 0.7, 0.2, 1.6),  # wrong in both, not flagged
                Prediction(2, right, 1, 1 if strategy == "full" else 0, 0.6, 0.6, 0.5),  # wrong in one only
            ],
        )
        runs.append(env.get_run(run.id))
    every = service.wrong_in_every_run(env, runs)
    assert [p.path for p in every] == [flagged, plain]  # worst first
    marks = service.flagged(env, data, [p.path for p in every], "exp")
    assert list(marks) == [flagged] and "likely label error: in cat, looks like dog" in marks[flagged]

    at = page("compare.py")
    at.query_params["experiment"] = "exp"
    at = no_exception(at.run())
    assert any(e.label == "Wrong in every run (2)" for e in at.expander)
    marked = [c.value for c in at.caption if "flagged by the data check: likely label error" in c.value]
    assert len(marked) == 2  # under the image in Still wrong and in Wrong in every run; the other image unmarked
    at = page("run_detail.py")
    at.query_params["run"] = str(runs[0].id)
    at = no_exception(at.run())
    assert sum("flagged by the data check" in c.value for c in at.caption) == 1


def test_the_flags_tell_a_copy_from_a_look_alike_by_embeddings_alone(tmp_path):
    root = str(tmp_path)

    def group(by: list[str], *names: str) -> dict:
        images = [{"path": str(tmp_path / n), "split": s, "label": "cat"} for n, s in zip(names, ("train", "test"))]
        return {"kind": "near", "by": by, "cross_split": True, "images": images}

    said = findings.flags(
        {"duplicates": [group(["pixels"], "a.png", "b.png"), group(["embeddings"], "c.png", "d.png")]}, root
    )
    assert said["b.png"] == ["near duplicate of 1 other image(s) across splits (a leak)"]
    assert said["c.png"] == ["look-alike (embeddings) of 1 other image(s) across splits (a leak if one picture)"]
