"""Export a run's best checkpoint as one file that provably predicts as the run does.

A bundle is the model with its class names and the run's preprocessing inside the file:
  torchscript  torch.jit.trace of the model; the metadata as the archive's extra file
               transferlab.json (`torch.jit.load(path, _extra_files=...)` reads it back).
  onnx         torch.onnx.export (the dynamo exporter, batch size left dynamic); the metadata
               as the model's metadata_props entry transferlab.json.
Right after writing, the bundle is loaded back the way a user would (predictor.from_bundle:
ONNX through onnxruntime) and run on the run's validation images beside the PyTorch model:
top-1 agreement and the largest difference of any class probability. Agreement below 100% or a
difference past the tolerance fails the export, with the numbers, and removes the file.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from ..data.images import check_image
from ..errors import UserError
from . import predictor

__all__ = ["FORMATS", "TOLERANCE", "ExportMismatch", "export"]

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
# Probabilities may differ by this much: the exported graph runs the same fp32 arithmetic in
# another order (fused kernels, other convolution algorithms). Measured here on a 2-core CPU:
# 0 for TorchScript, up to 5e-5 for ONNX Runtime (a fully fine-tuned Lite0). 1e-3 leaves room for
# other CPUs and still catches a wrong preprocessing, a layer left in training mode or a broken
# graph, which move probabilities by 1e-2 and more.
TOLERANCE = 1e-3
BATCH = 32


class ExportMismatch(UserError):
    """The exported bundle does not predict as the PyTorch model does (`result` has the numbers)."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def export(
    source: predictor.Predictor, fmt: str, out: str | Path, images: list[str], tolerance: float = TOLERANCE
) -> dict:
    """Write `source` (from predictor.from_run) as a `fmt` bundle at `out` and check it on `images`."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if source.model is None:
        raise UserError("export needs a run's PyTorch model, not a bundle")
    readable = [p for p in images if check_image(p, source.pipeline.in_channels) is None]
    if not readable:
        raise UserError(
            "no readable validation image to check the export on; the run's validation images "
            "moved or were deleted: restore the dataset folder, then export again"
        )
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the bundle's file path, e.g. {out / ('model' + FORMATS[fmt])}")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = source.model.eval()
    example = source.inputs(readable[:2])
    meta = json.dumps({**source.metadata, "format": fmt})
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter notes a user cannot act on
        try:
            if fmt == "torchscript":
                with torch.no_grad():
                    traced = torch.jit.trace(model, example)
                torch.jit.save(traced, str(out), _extra_files={predictor.METADATA: meta})
            else:
                _onnx(model, example, out, meta)
        except Exception as e:  # the tracer and the exporter raise many kinds on an operator they lack
            out.unlink(missing_ok=True)
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            raise UserError(
                f"the {fmt} exporter cannot export this {source.backbone} model ({type(e).__name__}: {reason}); "
                f"the other format may export it"
            ) from None
    seconds = time.perf_counter() - started
    result = {
        "format": fmt,
        "path": str(out.resolve()),
        "bytes": out.stat().st_size,
        "seconds": round(seconds, 2),
        **parity(source, predictor.from_bundle(out), readable),
        "tolerance": tolerance,
    }
    result["passed"] = result["top1_agreement"] == 1.0 and result["max_prob_diff"] <= tolerance
    if not result["passed"]:
        out.unlink(missing_ok=True)
        raise ExportMismatch(
            f"the {fmt} export does not predict as the PyTorch model: top-1 agreement "
            f"{result['top1_agreement']:.2%} on {result['images']} validation images, largest probability "
            f"difference {result['max_prob_diff']:.2e} (tolerance {tolerance:.0e}); the file was removed. "
            f"Report it with the run's backbone ({source.backbone}); the other format may export correctly",
            result,
        )
    return result


def _onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, meta: str) -> None:
    import onnx  # only for an ONNX export

    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    assert program is not None  # the dynamo exporter returns its program
    program.save(str(out))
    m = onnx.load(str(out))
    entry = m.metadata_props.add()
    entry.key, entry.value = predictor.METADATA, meta
    onnx.save(m, str(out))


def parity(reference: predictor.Predictor, exported: predictor.Predictor, images: list[str]) -> dict:
    """Top-1 agreement and the largest probability difference of `exported` against `reference`."""
    agree, worst = 0, 0.0
    for i in range(0, len(images), BATCH):
        x = reference.inputs(images[i : i + BATCH])
        p = reference.logits(x).float().softmax(1)
        q = exported.logits(x).float().softmax(1)
        agree += int((p.argmax(1) == q.argmax(1)).sum())
        worst = max(worst, float((p - q).abs().max()))
    return {"images": len(images), "top1_agreement": agree / len(images), "max_prob_diff": worst}
