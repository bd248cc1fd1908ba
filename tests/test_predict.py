"""Predict: a run's best checkpoint on new images, with its own preprocessing; top-k classes,
Grad-CAM heat maps over the model's view; uploads checked as every image TransferLab reads, a
clear message for each one that cannot be used, and the rest still predicted."""

from __future__ import annotations

import base64
import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tl_core.cli import main
from tl_core.errors import UserError
from tl_core.inference import predictor as P
from tl_core.models import backbones
from tl_core.service import predict_images, save_uploads

from .helpers import train


def _bomb() -> bytes:  # a tiny file whose header claims 30,000 x 30,000 pixels
    buf = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png(path: str) -> bytes:
    return open(path, "rb").read()


def _bf16_reach(predictor: P.Predictor, paths: list[str]) -> list[float]:
    """Per image, how far computing the frozen body in bf16 can move its probabilities: the range
    over classes of the change bf16 makes to its logits, W (f_fp32 - f_bf16). To first order softmax
    moves a probability p_i by p_i (dz_i - sum_j p_j dz_j), at most that range."""
    spec = backbones.get_spec(predictor.backbone)
    model = copy.deepcopy(predictor.model).eval()
    head = model.get_submodule(spec.head_path)
    model.set_submodule(spec.head_path, nn.Identity())
    x = predictor.inputs(paths)
    with torch.inference_mode():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x).float()
        dz = head(fp32) - head(bf16)
    return (dz.max(1).values - dz.min(1).values).tolist()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predict_gives_the_validation_pass_answer_and_heat_maps_over_the_model_view(store, tiny, precision):
    run_id = train(store, data=tiny, strategy="feature_extraction", epochs=2, feature_precision=precision).run_id
    run = store.get_run(run_id)
    stored = store.predictions(run_id)
    found = predict_images(store, run_id, [p.path for p in stored], top_k=4)
    assert found["classes"] == run.summary["classes"] and found["run"] == run_id
    # Each number says what produced it: predict fp32; the run's validation pass its own precision.
    assert found["precision"] == "fp32" and found["val_precision"] == precision
    assert found["val_epoch"] == run.summary["predictions"]["epoch"]
    # Like with like. fp32: the same computation, a batch of one against the pass's batch of eight
    # (oneDNN picks other kernels and summation orders for another shape; seen: 3e-7). bf16: the
    # run read the frozen body's output computed in bf16 (8 significant bits, over ~60 layers;
    # probabilities seen 4e-3 apart here, up to 8e-2 with a head trained 5 epochs on the demo
    # animals), so each image may differ by what bf16 does to its logits (seen: at most 0.16 of
    # that reach), twice over for the second order and the cached pass's own batch shape.
    reach = _bf16_reach(P.from_run(run), [p.path for p in stored]) if precision == "bf16" else [0.0] * len(stored)
    for p, r, bound in zip(stored, found["results"], reach):
        tolerance = 1e-4 + 2 * bound
        probs = {t["index"]: t["prob"] for t in r["top"]}
        assert probs[p.pred] == pytest.approx(p.prob, abs=tolerance)
        # The validation pass's class is predict's too, unless another class is within the tolerance.
        assert r["top"][0]["index"] == p.pred or r["top"][0]["prob"] - probs[p.pred] <= 2 * tolerance
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


def test_corrupt_oversized_and_non_image_uploads_get_clear_messages_and_the_rest_is_predicted(tiny_run):
    store, run_id = tiny_run  # feature_extraction on tiny, 1 epoch
    good = store.predictions(run_id)[0].path
    files = [
        ("cat.png", _png(good)),
        ("broken.png", _png(good)[:60]),
        ("huge.png", _bomb()),
        ("notes.txt", b"hello"),
        ("fake.jpg", b"GIF89a not really"),
    ]
    paths, problems = save_uploads(files)
    assert len(paths) == 1 and paths[0].endswith("cat.png")
    assert len(problems) == 4
    assert problems[0].startswith("broken.png: not a readable image")
    assert problems[1].startswith("huge.png: refused, larger than") and "resize it first" in problems[1]
    assert problems[2].startswith("notes.txt: not an image file type") and ".png" in problems[2]
    assert problems[3].startswith("fake.jpg: not a readable image")
    found = predict_images(store, run_id, paths)["results"]
    assert found[0]["top"][0]["class"] in store.get_run(run_id).summary["classes"]


def test_the_command_predicts_what_it_can_and_exits_1_naming_what_it_could_not(tiny_run, tmp_path, capsys):
    store, run_id = tiny_run
    good = store.predictions(run_id)[0].path
    (tmp_path / "truncated.png").write_bytes(_png(good)[:80])
    (tmp_path / "bomb.png").write_bytes(_bomb())
    code = main(
        [
            "predict",
            str(run_id),
            good,
            str(tmp_path / "truncated.png"),
            str(tmp_path / "bomb.png"),
            str(tmp_path / "missing.png"),
            "--json",
            "--top-k",
            "2",
            "--db",
            store.url,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    results = json.loads(out)["results"]
    assert len(results[0]["top"]) == 2 and "error" not in results[0]
    assert [("error" in r) for r in results] == [False, True, True, True]
    assert "truncated.png: not a readable image" in err and "bomb.png: refused" in err and "missing.png" in err
    assert json.loads(out)["precision"] == "fp32"
    assert main(["predict", str(run_id), good, "--cam-dir", str(tmp_path / "maps"), "--db", store.url]) == 0
    summary = store.get_run(run_id).summary  # the best epoch's precision: the run's only phase's
    best, said = summary["predictions"]["epoch"], summary["val_precision"][0]["precision"]
    assert capsys.readouterr().out.startswith(
        f"run {run_id}, computed in fp32; its validation numbers at epoch {best}: {said}\n"
    )
    written = sorted((tmp_path / "maps").iterdir())
    assert len(written) == 4 and all(Image.open(p).size == (32, 32) for p in written)  # top 4 of 4 classes


def test_a_run_without_a_checkpoint_and_a_bundle_without_heat_maps_are_explained(tiny_run, tiny):
    store, run_id = tiny_run
    queued = store.create_run({"data": tiny}, status="queued")
    with pytest.raises(UserError, match="has no best checkpoint"):
        P.from_run(store.get_run(queued.id))
    image = store.predictions(run_id)[0].path
    assert main(["predict", str(queued.id), image, "--db", store.url]) == 2
    with pytest.raises(UserError, match="is not a file"):
        predict_images(store, "/nowhere/model.onnx", [image])
