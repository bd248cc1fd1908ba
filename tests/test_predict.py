"""Predict: a run's best checkpoint on new images, with its own preprocessing; top-k classes,
Grad-CAM heat maps over the model's view; uploads checked as every image TransferLab reads, a
clear message for each one that cannot be used, and the rest still predicted."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tl_core import predict as P
from tl_core.cli import main
from tl_core.errors import UserError
from tl_core.service import predict_images, save_uploads

from .helpers import train


@pytest.fixture
def run_id(store, tiny):
    return train(store, data=tiny, strategy="feature_extraction", epochs=2).run_id


def _bomb() -> bytes:  # a tiny file whose header claims 30,000 x 30,000 pixels
    buf = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png(path: str) -> bytes:
    return open(path, "rb").read()


def test_predict_gives_the_validation_pass_answer_and_heat_maps_over_the_model_view(store, run_id):
    run = store.get_run(run_id)
    stored = store.predictions(run_id)
    found = predict_images(store, run_id, [p.path for p in stored], top_k=3)
    assert found["classes"] == run.summary["classes"] and found["run"] == run_id
    for p, r in zip(stored, found["results"]):
        assert [t["index"] for t in r["top"]][0] == p.pred  # as the best epoch's validation saw it
        assert r["top"][0]["prob"] == pytest.approx(p.prob, abs=1e-4)  # fp32 batch of one vs a batch
        assert [t["prob"] for t in r["top"]] == sorted((t["prob"] for t in r["top"]), reverse=True)
    one = predict_images(store, run_id, [stored[0].path], top_k=2, cam=True, cam_classes=[run.summary["classes"][-1]])
    r = one["results"][0]
    size = run.summary["preprocessing"]["image_size"]
    view = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["view"]))))
    maps = {c: np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))) for c, png in r["cams"].items()}
    assert view.shape == (size, size, 3)
    assert set(maps) == {t["class"] for t in r["top"]} | {run.summary["classes"][-1]}
    assert all(m.shape == view.shape for m in maps.values())
    assert all(not np.array_equal(m, view) for m in maps.values())  # something was drawn over the image
    with pytest.raises(UserError, match="unknown class 'unicorn'"):
        predict_images(store, run_id, [stored[0].path], cam=True, cam_classes=["unicorn"])


def test_corrupt_oversized_and_non_image_uploads_get_clear_messages_and_the_rest_is_predicted(store, run_id):
    good = store.predictions(run_id)[0].path
    files = [("cat.png", _png(good)), ("broken.png", _png(good)[:60]), ("huge.png", _bomb()),
             ("notes.txt", b"hello"), ("fake.jpg", b"GIF89a not really")]
    paths, problems = save_uploads(files)
    assert len(paths) == 1 and paths[0].endswith("cat.png")
    assert len(problems) == 4
    assert problems[0].startswith("broken.png: not a readable image")
    assert problems[1].startswith("huge.png: refused, larger than") and "resize it first" in problems[1]
    assert problems[2].startswith("notes.txt: not an image file type") and ".png" in problems[2]
    assert problems[3].startswith("fake.jpg: not a readable image")
    found = predict_images(store, run_id, paths)["results"]
    assert found[0]["top"][0]["class"] in store.get_run(run_id).summary["classes"]


def test_the_command_predicts_what_it_can_and_exits_1_naming_what_it_could_not(store, run_id, tmp_path, capsys):
    good = store.predictions(run_id)[0].path
    (tmp_path / "truncated.png").write_bytes(_png(good)[:80])
    (tmp_path / "bomb.png").write_bytes(_bomb())
    code = main(["predict", str(run_id), good, str(tmp_path / "truncated.png"), str(tmp_path / "bomb.png"),
                 str(tmp_path / "missing.png"), "--json", "--top-k", "2", "--db", store.url])
    out, err = capsys.readouterr()
    assert code == 1
    results = json.loads(out)["results"]
    assert len(results[0]["top"]) == 2 and "error" not in results[0]
    assert [("error" in r) for r in results] == [False, True, True, True]
    assert "truncated.png: not a readable image" in err and "bomb.png: refused" in err and "missing.png" in err
    assert main(["predict", str(run_id), good, "--cam-dir", str(tmp_path / "maps"), "--db", store.url]) == 0
    written = sorted((tmp_path / "maps").iterdir())
    assert len(written) == 4 and all(Image.open(p).size == (32, 32) for p in written)  # top 4 of 4 classes


def test_a_run_without_a_checkpoint_and_a_bundle_without_heat_maps_are_explained(store, tiny, run_id):
    queued = store.create_run({"data": tiny}, status="queued")
    with pytest.raises(UserError, match="has no best checkpoint"):
        P.from_run(store.get_run(queued.id))
    image = store.predictions(run_id)[0].path
    assert main(["predict", str(queued.id), image, "--db", store.url]) == 2
    with pytest.raises(UserError, match="is not a file"):
        predict_images(store, "/nowhere/model.onnx", [image])
