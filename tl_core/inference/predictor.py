"""Predict: a run's best checkpoint (or a bundle exported from it) applied to new images.

A `Predictor` is a model with everything needed to use it: its class names and the run's own
preprocessing (the weights' resize, crop, interpolation and normalisation, at the run's image
size; never augmentation), rebuilt from what the run recorded. It comes from a run
(`from_run`: best.pt, Grad-CAM available) or from an exported bundle (`from_bundle`: a
TorchScript or ONNX file that carries the same metadata, see export.py), so the answer on an
export can be set beside the answer on the run.

Each answer says which precision produced it (`Predictor.precision`: fp32, on the CPU) and, for a
run, which produced the run's own validation numbers at that checkpoint (`val_precision` in its
metadata: bf16 where the run read frozen features cached in bf16, features.extraction_dtype). The
two agree to that precision's resolution, not bit for bit: a probability computed here in fp32
differs from the run's bf16 validation pass by up to about 1e-2.

Every image is read as every image TransferLab reads: its type from its header, refused past the
decompression-bomb limit before a pixel is decoded; an image that cannot be used gets its own
message in the results, and the others are still predicted.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data import images
from ..data.decode_cache import Pipeline
from ..errors import UserError
from ..models import backbones
from ..models.weights import Preprocessing
from ..store import Run
from ..store.run_folders import run_folder
from ..store.summary import Preprocessing as RecordedPreprocessing
from ..training.checkpoint import Checkpoint

__all__ = ["Predictor", "from_bundle", "from_run", "pipeline_of", "predict"]

METADATA = "transferlab.json"  # the bundle's metadata: TorchScript extra file, ONNX metadata_props key


def pipeline_of(described: RecordedPreprocessing) -> Pipeline:
    """The validation pipeline a run recorded (its summary's preprocessing, decode_cache.Pipeline.describe)."""
    pre = described.pre
    return Pipeline(
        Preprocessing(tuple(pre.mean), tuple(pre.std), pre.interpolation, pre.crop_pct, pre.native_size),
        described.image_size,
        "none",
        described.in_channels,
        described.stats,
    )


@dataclass
class Predictor:
    """A model with its classes and preprocessing; `logits` takes a normalised float batch."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    classes: list[str]
    pipeline: Pipeline
    source: str  # "run 3" or the bundle's path
    metadata: dict  # what a bundle carries (export.py writes it from here)
    model: torch.nn.Module | None = None  # the PyTorch model, for Grad-CAM (None for a bundle)
    backbone: str = ""
    precision: str = "fp32"  # what computes `logits`: the checkpoint and exported bundles run in fp32 on the CPU

    def inputs(self, paths: list[str]) -> torch.Tensor:
        """The normalised batch of readable images (as validation saw them)."""
        stage = self.pipeline.stage(train=False)
        x = torch.from_numpy(np.stack([stage(p) for p in paths]))
        return self.pipeline.to_model(x, torch.device("cpu"))


def from_run(run: Run) -> Predictor:
    """The run's best checkpoint, on the CPU."""
    path = run_folder(run) / "best.pt"
    if not path.exists():
        raise UserError(
            f"run {run.id} has no best checkpoint ({path} is missing): it has not finished an epoch, "
            f"or its folder was deleted; predict with a run that has trained"
        )
    ckpt = Checkpoint.load(path)
    cfg = RunConfig.from_stored(ckpt.config or run.config)
    classes = list(ckpt.classes)
    described = run.summary.preprocessing
    if described is None:
        raise UserError(f"run {run.id} recorded no preprocessing; train it again to predict with it")
    bb = backbones.create_backbone(
        cfg.backbone,
        len(classes),
        weights="none",
        head=cfg.head,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        in_channels=cfg.in_channels,
        image_size=cfg.image_size,
    )
    bb.model.load_state_dict(ckpt.model)
    model = bb.model.eval()
    epoch = int(ckpt.epoch) + 1
    meta = {
        "classes": classes,
        "preprocessing": described.model_dump(exclude_unset=True),
        "backbone": cfg.backbone,
        "run": run.id,
        "run_uid": run.uid,
        "epoch": epoch,
        "val_acc": ckpt.val_acc,
        "val_precision": run.summary.precision_at(epoch),
    }
    return Predictor(_no_grad(model), classes, pipeline_of(described), f"run {run.id}", meta, model, cfg.backbone)


def _no_grad(fn: Callable) -> Callable:
    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(x)

    return call


def from_bundle(path: str | Path) -> Predictor:
    """An exported bundle: TorchScript (.pt) or ONNX (.onnx), with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file: pass a run id or the path of an exported bundle")
    if path.suffix == ".onnx":
        import onnx  # ONNX and its runtime: only for an ONNX bundle
        import onnxruntime as ort

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if METADATA not in props:
            raise UserError(
                f"{path} is an ONNX model without TransferLab's metadata; export it with "
                f"`python -m tl_core export RUN --format onnx`"
            )
        meta = json.loads(props[METADATA])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])

        logits = run_onnx
    else:
        extra = {METADATA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", FutureWarning
                )  # TorchScript is deprecated, not gone: the format asked for
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:  # not a TorchScript archive at all
            raise UserError(
                f"{path} is neither an ONNX model nor a TorchScript bundle ({type(e).__name__}); "
                f"pass a file written by `python -m tl_core export`"
            ) from None
        if not extra[METADATA]:
            raise UserError(
                f"{path} is a TorchScript module without TransferLab's metadata; export it with "
                f"`python -m tl_core export RUN --format torchscript`"
            )
        meta = json.loads(extra[METADATA])
        logits = _no_grad(module.eval())
    described = RecordedPreprocessing.model_validate(meta["preprocessing"])
    return Predictor(
        logits, list(meta["classes"]), pipeline_of(described), str(path), meta, backbone=meta.get("backbone", "")
    )


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def predict(
    predictor: Predictor, paths: list[str], top_k: int = 5, cam: bool = False, cam_classes: list[str] | None = None
) -> list[dict]:
    """Top-k classes with probabilities for each image, in order; with `cam`, Grad-CAM heat maps
    (over the model's view of the image, as PNG in base64) for the top-k classes and any of
    `cam_classes`. An image that cannot be read is {"image", "path", "error"}."""
    if cam and predictor.model is None:
        raise UserError("heat maps need the run's PyTorch model; predict with the run rather than an exported bundle")
    unknown = [c for c in cam_classes or [] if c not in predictor.classes]
    if unknown:
        raise UserError(f"unknown class {unknown[0]!r}; the model's classes are: {', '.join(predictor.classes)}")
    channels = predictor.pipeline.in_channels
    out: list[dict] = []
    for path in paths:
        item: dict[str, Any] = {"image": Path(path).name, "path": str(path)}
        problem = images.check_image(path, channels)
        if problem is None:
            try:
                x_raw = predictor.pipeline.stage(train=False)(path)
            except (images.UnreadableImage, ValueError, OSError) as e:
                problem = f"{Path(path).name}: not a readable image ({e}); check the file is not corrupt"
        if problem is not None:
            out.append({**item, "error": problem})
            continue
        x = predictor.pipeline.to_model(torch.from_numpy(x_raw[None]), torch.device("cpu"))
        probs = predictor.logits(x).float().softmax(1)[0]
        k = min(top_k, len(predictor.classes))
        top = probs.topk(k)
        item["top"] = [
            {"class": predictor.classes[i], "index": int(i), "prob": float(p)}
            for p, i in zip(top.values.tolist(), top.indices.tolist())
        ]
        if cam:
            item.update(
                _heat_maps(
                    predictor,
                    x,
                    x_raw,
                    [t["index"] for t in item["top"]] + [predictor.classes.index(c) for c in cam_classes or []],
                )
            )
        out.append(item)
    return out


def _heat_maps(predictor: Predictor, x: torch.Tensor, x_raw: np.ndarray, classes: list[int]) -> dict:
    from ..analysis import gradcam  # captum: imported only when heat maps are asked for

    classes = list(dict.fromkeys(classes))
    assert predictor.model is not None  # predict refuses `cam` without a PyTorch model
    maps = gradcam.grad_cam(predictor.model, backbones.get_spec(predictor.backbone), x, classes)
    view = gradcam.model_view(x_raw)
    return {
        "view": _b64(gradcam.png(view)),
        "cams": {predictor.classes[c]: _b64(gradcam.png(gradcam.overlay(view, m))) for c, m in zip(classes, maps)},
    }
