"""Export that provably matches: a TorchScript or ONNX bundle of the best checkpoint with its
classes and preprocessing inside, checked right after export against the PyTorch model on the
validation images (ONNX through onnxruntime); a mismatch fails the export with its numbers."""

from __future__ import annotations

import json

import pytest
import torch

from tl_core.cli import main
from tl_core.errors import UserError
from tl_core.inference import export as E
from tl_core.inference import predictor as P
from tl_core.service import export_run, exports, predict_images

from .helpers import train

FAMILIES = [
    ("efficientnet_lite0", "feature_extraction"),  # pretrained, packaged weights
    ("resnet18", "scratch"),
    ("mobilenet_v3_small", "scratch"),
]  # torchvision families, offline


@pytest.mark.parametrize("backbone,strategy", FAMILIES)
def test_torchscript_and_onnx_agree_with_pytorch_on_every_validation_image(store, animals, backbone, strategy):
    run_id = train(store, data=animals, backbone=backbone, strategy=strategy, epochs=1, batch_size=16).run_id
    images = [p.path for p in store.predictions(run_id)]
    on_run = predict_images(store, run_id, images, top_k=1)["results"]
    for fmt in ("torchscript", "onnx"):
        r = export_run(store, run_id, fmt)
        assert r["passed"] and r["images"] == len(images) == 60
        assert r["top1_agreement"] == 1.0 and r["max_prob_diff"] <= E.TOLERANCE == r["tolerance"]
        # The bundle alone, as a user would load it, answers as the run does.
        on_bundle = predict_images(store, r["path"], images, top_k=1)["results"]
        assert [x["top"][0]["class"] for x in on_bundle] == [x["top"][0]["class"] for x in on_run]
        assert max(abs(a["top"][0]["prob"] - b["top"][0]["prob"]) for a, b in zip(on_run, on_bundle)) <= E.TOLERANCE
        bundle = P.from_bundle(r["path"])
        assert bundle.classes == store.get_run(run_id).summary["classes"]
        assert bundle.metadata["backbone"] == backbone and bundle.metadata["format"] == fmt
        assert bundle.pipeline == P.from_run(store.get_run(run_id)).pipeline  # the run's own preprocessing
    assert [e.format for e in exports(store.get_run(run_id))] == ["torchscript", "onnx"]


def test_a_bundle_that_predicts_otherwise_fails_the_export_with_its_numbers(tiny_run, monkeypatch, tmp_path):
    store, run_id = tiny_run  # feature_extraction on tiny, 1 epoch
    real = P.from_bundle

    def swapped(path):  # an export whose graph lost its last layer's class order
        b = real(path)
        logits = b.logits
        b.logits = lambda x: logits(x).flip(1)
        return b

    monkeypatch.setattr(P, "from_bundle", swapped)
    out = tmp_path / "model.pt"
    with pytest.raises(E.ExportMismatch, match=r"top-1 agreement .*%.*largest probability difference") as e:
        export_run(store, run_id, "torchscript", out)
    assert e.value.result["top1_agreement"] < 1 and not out.exists()  # nothing left that looks usable
    recorded = exports(store.get_run(run_id))[-1]
    assert recorded.passed is False and recorded.top1_agreement == e.value.result["top1_agreement"]


def test_the_command_exports_prints_the_parity_check_and_predict_reads_the_bundle(tiny_run, tmp_path, capsys):
    store, run_id = tiny_run
    out = tmp_path / "bundle.pt"
    assert main(["export", str(run_id), "--format", "torchscript", "--out", str(out), "--db", store.url]) == 0
    printed = capsys.readouterr().out
    assert f"to {out.resolve()}" in printed and "top-1 agreement 100.00%" in printed and "tolerance 1e-03" in printed
    image = store.predictions(run_id)[0].path
    assert main(["predict", str(out), image, "--json", "--db", store.url]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]["top"]
    assert top[0]["class"] == predict_images(store, run_id, [image])["results"][0]["top"][0]["class"]


def test_bad_export_requests_get_clear_messages(tiny_run, tmp_path):
    store, run_id = tiny_run
    with pytest.raises(UserError, match="is a folder"):
        export_run(store, run_id, "onnx", tmp_path)
    with pytest.raises(UserError, match="unknown export format"):
        export_run(store, run_id, "tflite")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(UserError, match="without TransferLab's metadata"):
        P.from_bundle(plain)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(UserError, match="neither an ONNX model nor a TorchScript bundle"):
        P.from_bundle(tmp_path / "junk.pt")
