"""Looking inside a trained run and using it, from the pages (issue #13): the run page's errors
worst first, a confusion cell's images, where the model looked and an export; Compare's image by
image diff of two runs; the Predict page on an upload and on a bad file.

Real tiny runs are trained once for the module (so their predictions and checkpoints are real), and
the Grad-CAM, export and predict jobs run as the pages start them: in processes of their own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tl_core import service
from tl_core.data.demo import write_demo_data
from ui import charts
from ui import format as fmt

from .helpers import job_result, train
from .test_app import no_exception, page

STEP = 12  # errors shown before "Show more"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three feature-extraction runs of one experiment on the demo animals (20 validation images):
    seed 0, seed 1 and seed 0 again; one on a copy of the images; their database, runs folder and
    data root."""
    root = tmp_path_factory.mktemp("inspect")
    write_demo_data(root / "data", datasets=("animals",), per_class=12, size=48)
    env = {
        "DATABASE_URL": f"sqlite:///{root / 'inspect.db'}",
        "TL_DATA_ROOTS": str(root / "data"),
        "TL_RUNS_DIR": str(root / "runs"),
        "TL_NO_WORKER": "1",
        "TL_OFFLINE": "1",
    }
    shutil.copytree(root / "data" / "animals", root / "data" / "animals_copy")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        store = service.open_store(env["DATABASE_URL"])
        ids = [
            train(
                store,
                data=str(root / "data" / "animals"),
                strategy="feature_extraction",
                epochs=2,
                seed=seed,
                experiment="inspect",
                name=f"seed{seed}-{i}",
            ).run_id
            for i, seed in enumerate((0, 1, 0))
        ]
        # The same classes and images in another folder: nothing to match image by image.
        elsewhere = train(
            store,
            data=str(root / "data" / "animals_copy"),
            strategy="feature_extraction",
            epochs=1,
            experiment="copy",
            name="copy",
        ).run_id
    return env, ids, elsewhere


@pytest.fixture()
def store(trained, monkeypatch):
    env = trained[0]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    return service.open_store(env["DATABASE_URL"])


def run_page(run_id: int) -> AppTest:
    at = page("run_detail.py")
    at.query_params["run"] = str(run_id)
    return no_exception(at.run())


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def figure(at: AppTest, title: str) -> dict:
    found = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    found = [f for f in found if f["layout"].get("title", {}).get("text", "").startswith(title)]
    assert len(found) == 1, f"{len(found)} charts titled {title!r}"
    return found[0]


# --- the run page -----------------------------------------------------------------------------------


def test_the_run_page_shows_exactly_its_errors_worst_first_and_a_cells_images(store, trained):
    run_id = trained[1][0]
    run = store.get_run(run_id)
    classes = run.summary["classes"]
    wrong = service.errors(service.run_predictions(store, run_id))
    assert len(wrong) > STEP, "the test needs more errors than one page shows"
    expected = [fmt.prediction_caption(p, classes) for p in wrong]
    at = run_page(run_id)
    assert captions(at) == expected[:STEP]  # the first page, worst loss first
    assert any(f"{len(wrong)} of 20 validation images wrong" in c.value for c in at.caption)
    at = no_exception(at.button(key=f"errors_shown_{run_id}_more").click().run())
    assert captions(at) == expected  # all of them, and nothing the model got right
    assert [p.loss for p in wrong] == sorted((p.loss for p in wrong), reverse=True)

    # The confusion matrix: one clickable square per cell, its count written on it.
    spec = figure(at, "click a cell to see its images")["data"][0]
    preds = service.run_predictions(store, run_id)
    counts = service.confusion(preds, len(classes))
    assert len(spec["customdata"]) == len(classes) ** 2 and sum(c[2] for c in spec["customdata"]) == 20
    assert all(counts[t][p] == n for t, p, n in spec["customdata"])
    assert charts.clicked_cell([{"customdata": spec["customdata"][13]}], len(classes)) == (1, 3)
    assert charts.clicked_cell([{"point_index": 13}], len(classes)) == (1, 3)

    # A cell picked from the list shows exactly that cell's images, most confident first.
    cell = at.selectbox(key=f"cell_{run_id}")
    nonempty = [(t, p) for t in range(len(classes)) for p in range(len(classes)) if counts[t][p]]
    assert cell.value is None and cell.options == [fmt.cell_label(classes, t, p, counts[t][p]) for t, p in nonempty]
    true, predicted = max((c for c in nonempty if c[0] != c[1]), key=lambda c: counts[c[0]][c[1]])
    at = no_exception(cell.set_value((true, predicted)).run())
    shown = captions(at)[len(expected) :]
    in_cell = service.cell(service.run_predictions(store, run_id), true, predicted)
    assert len(in_cell) == counts[true][predicted]
    assert shown == [fmt.prediction_caption(p, classes) for p in in_cell]
    assert all(f"true {classes[true]}, predicted {classes[predicted]}" in c for c in shown)


def test_where_it_looked_and_an_export_checked_against_the_run(store, trained):
    run_id = trained[1][0]
    classes = store.get_run(run_id).summary["classes"]
    wrong = service.errors(service.run_predictions(store, run_id))
    at = run_page(run_id)
    worst = at.selectbox(key=f"cam_image_{run_id}")
    assert worst.value.path == wrong[0].path  # the worst error is offered first
    at = no_exception(at.button(key=f"cam_{run_id}").click().run())
    at = no_exception(at.button(key=f"export_{run_id}").click().run())  # both jobs run at once
    cam = job_result(at, f"cam_job_{run_id}", store)
    export = job_result(at, f"export_job_{run_id}", store)
    at = no_exception(at.run())

    # Where it looked: the model's view, and heat maps for the class it predicted and the true one.
    result = cam["results"][0]
    assert result["path"] == wrong[0].path and result["top"][0]["index"] == wrong[0].pred
    true, predicted = classes[wrong[0].label], classes[wrong[0].pred]
    assert {true, predicted} <= set(result["cams"])
    shown = captions(at)
    assert "what the model sees" in shown and f"true {true}" in shown
    assert any(c.startswith(f"predicted {predicted} (") for c in shown)

    # The export: TorchScript by default, its parity numbers, and the file to download.
    assert export["format"] == "torchscript" and export["passed"] and Path(export["path"]).is_file()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Top-1 agreement"] == f"{export['top1_agreement']:.1%}" == "100.0%"
    assert metrics["Tolerance"] == f"{export['tolerance']:.0e}"
    download = [b for b in at.get("download_button") if Path(export["path"]).name in b.proto.label]
    assert len(download) == 1
    assert service.exports(store.get_run(run_id))[-1].path == export["path"]
    assert any(Path(export["path"]).name in m.value for m in at.markdown)  # listed among the run's exports


def test_a_run_without_predictions_says_when_they_come(store):
    run = store.create_run(
        {"data": "/nowhere", "backbone": "efficientnet_lite0", "strategy": "full", "seed": 0, "epochs": 1},
        "other",
        "queued-run",
        status="queued",
    )
    at = run_page(run.id)
    assert any("once the run has finished an epoch" in c.value for c in at.caption)
    assert not at.image and not any(b.key == f"cam_{run.id}" for b in at.button)


# --- Compare ------------------------------------------------------------------------------------------


def diff_metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric if m.label in ("Fixed", "Broken", "Still wrong", "Both right", "Net")}


def test_compare_says_what_a_run_fixed_and_broke_against_a_reference(store, trained):
    a, b, repeat = trained[1]
    at = page("compare.py")
    at.query_params["experiment"] = "inspect"
    at = no_exception(at.run())
    assert at.selectbox(key="compare_reference").value == a
    assert at.selectbox(key="compare_against").options == ["seed1-1", "seed0-2"]  # only runs of the same images

    # The same settings and seed trained again: nothing fixed, nothing broken.
    same = service.diff(store, a, repeat)
    assert (same.fixed, same.broken) == ([], [])
    at = no_exception(at.selectbox(key="compare_against").set_value(repeat).run())
    assert diff_metrics(at) == {
        "Fixed": "0",
        "Broken": "0",
        "Still wrong": str(len(same.still_wrong)),
        "Both right": str(same.both_right),
        "Net": "+0",
    }

    # Another seed: the counts of the diff, its tabs, and the images it fixed.
    d = service.diff(store, a, b)
    assert d.fixed or d.broken, "the two seeds should disagree somewhere"
    at = no_exception(at.selectbox(key="compare_against").set_value(b).run())
    assert diff_metrics(at) == {
        "Fixed": str(len(d.fixed)),
        "Broken": str(len(d.broken)),
        "Still wrong": str(len(d.still_wrong)),
        "Both right": str(d.both_right),
        "Net": f"{d.net:+d}",
    }
    assert [t.label for t in at.tabs][-3:] == [
        f"Fixed ({len(d.fixed)})",
        f"Broken ({len(d.broken)})",
        f"Still wrong ({len(d.still_wrong)})",
    ]
    classes = store.get_run(a).summary["classes"]
    shown = captions(at)
    for p in d.fixed[:STEP] + d.broken[:STEP]:
        assert fmt.prediction_caption(p, classes) in shown
    delta = figure(at, "confusion matrix: seed1-1 minus seed0-0")["data"][0]["customdata"]
    assert delta == d.confusion_delta
    bars = figure(at, "per-class accuracy: seed1-1 against seed0-0")["data"][0]
    assert bars["x"] == [c["class"] for c in d.class_deltas]


def test_compare_says_why_two_runs_cannot_be_compared_image_by_image(store, trained):
    a, elsewhere = trained[1][0], trained[2]
    at = no_exception(page("compare.py").run())
    at = no_exception(at.segmented_control(key="compare_mode").set_value("Any runs").run())
    at = no_exception(at.multiselect(key="compare_runs").set_value([a, elsewhere]).run())
    assert at.selectbox(key="compare_reference").value == a and at.selectbox(key="compare_against").value == elsewhere
    assert [i.value for i in at.info if "validation image" in i.value] == [
        "the two runs share no validation image (another dataset or another --split-seed); pick a reference run "
        "validated on the same images"
    ]
    assert not diff_metrics(at)


# --- Predict ------------------------------------------------------------------------------------------


def test_predict_an_upload_shows_the_top_class_and_a_bad_file_says_what_to_do(store, trained):
    run_id = trained[1][0]
    image = service.run_predictions(store, run_id)[0].path
    at = no_exception(page("predict.py").run())
    offered = [int(o.split()[0].lstrip("#")) for o in at.selectbox(key="predict_run").options]
    assert offered == sorted([*trained[1], trained[2]], reverse=True)  # trained runs, newest first; no queued one
    at.selectbox(key="predict_run").set_value(run_id)
    at.file_uploader(key="predict_uploads").set_value(
        [("my photo.png", Path(image).read_bytes(), "image/png"), ("notes.txt", b"not an image", "text/plain")]
    )
    at = no_exception(at.run())
    assert len(at.error) == 1
    assert (
        "notes.txt" in at.error[0].value
        and "not an image file type" in at.error[0].value
        and "use one of" in at.error[0].value
    )
    assert any("1 image(s) chosen" in c.value for c in at.caption)
    at = no_exception(at.button(key="predict").click().run())
    found = job_result(at, "predict_job", store)
    at = no_exception(at.run())
    expected = service.predict_images(store, run_id, [image], top_k=3)["results"][0]["top"]
    assert [t["class"] for t in found["results"][0]["top"]] == [t["class"] for t in expected]
    lines = [m.value for m in at.markdown if "my photo.png" in m.value]  # the name it was uploaded under
    assert len(lines) == 1 and f"**{expected[0]['class']}** ({expected[0]['prob']:.1%})" in lines[0]
    bars = figure(at, "top 3 classes")["data"][0]
    assert bars["y"] == [t["class"] for t in expected]
    assert "what the model sees" in captions(at)
    heat = at.selectbox(key=f"predict_cam_{found['job']}_0")
    assert heat.options == [t["class"] for t in expected] and heat.value == expected[0]["class"]
    at = no_exception(heat.set_value(expected[1]["class"]).run())
    assert f"where it looked for {expected[1]['class']}" in captions(at)


def test_predict_on_a_validation_image_without_uploading(store, trained):
    run_id = trained[1][0]
    at = no_exception(page("predict.py").run())
    at.selectbox(key="predict_run").set_value(run_id)
    at = no_exception(at.run())
    assert at.button(key="predict").disabled  # nothing chosen yet
    classes = store.get_run(run_id).summary["classes"]
    validation = service.run_predictions(store, run_id)
    picker = at.multiselect(key=f"predict_val_{run_id}")
    assert picker.options == [f"{classes[p.label]} · {Path(p.path).name}" for p in validation]
    at = no_exception(picker.set_value([validation[0].path, validation[1].path]).run())
    assert not at.button(key="predict").disabled and any("2 image(s) chosen" in c.value for c in at.caption)
