"""A trained run put to use: `predict` (top-k classes and Grad-CAM heat maps of images), `export`
(its best checkpoint as one TorchScript or ONNX file)."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from .. import service
from ..errors import UserError
from .commands import command
from .output import _out


@command("predict")
def cmd_predict(args) -> int:
    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    cam = args.cam or bool(args.cam_class) or bool(args.cam_dir)
    found = service.predict_images(
        service.open_store(args.db), args.source, args.images, args.top_k, cam, args.cam_class, args.job
    )
    val = (
        f"; its validation numbers at epoch {found['val_epoch']}: {found['val_precision']}"
        if found["val_precision"]
        else ""
    )
    lines = [f"{found['source']}, computed in {found['precision']}{val}"]
    for r in found["results"]:
        if "error" in r:
            lines.append(f"{r['path']}: error: {r['error']}")
            continue
        lines.append(f"{r['path']}: " + ", ".join(f"{t['class']} {t['prob']:.1%}" for t in r["top"]))
        if args.cam_dir:
            folder = Path(args.cam_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for name, png in r["cams"].items():
                target = folder / f"{Path(r['path']).stem}.{name}.png"
                target.write_bytes(base64.b64decode(png))
                lines.append(f"  heat map for {name}: {target}")
    _out(args, found, "\n".join(lines))
    failed = [r for r in found["results"] if "error" in r]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


@command("export")
def cmd_export(args) -> int:
    r = service.export_run(service.open_store(args.db), args.run_id, args.format, args.out, args.tolerance, args.job)
    _out(
        args,
        r,
        f"exported run {args.run_id} as {r['format']} to {r['path']} ({r['bytes'] / 1e6:.1f} MB)\n"
        f"parity on {r['images']} validation images: top-1 agreement {r['top1_agreement']:.2%}, largest "
        f"probability difference {r['max_prob_diff']:.2e} (tolerance {r['tolerance']:.0e})",
    )
    return 0
