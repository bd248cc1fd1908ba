"""The data check's speed on 10,000 images, beside the feature computation it reuses; and the
calibration of its near-copy threshold (duplicates.NEAR_AT). Writes the "check-data" section of
BENCHMARKS.md.

    python bench/check_data.py [--images 10000] [--dim 1280] [--classes 10] [--sample 200]
                               [--wait 120] [--calibrate] [--report BENCHMARKS.md | --report '']

Each measurement waits (up to --wait s) for other processes to use under 10% of the CPU, and
says what share they took meanwhile (bench.py's CpuShare).

1. The check (data_check.check_features: label issues by 5-fold logistic regression and
   cleanlab, exact and near duplicates, outliers) on synthetic features of --images x --dim
   (efficientnet_lite0's 1,280 at the head input): a mixture of --classes non-negative clusters
   (ReLU6-like, as Lite0's pooled features), 5% of the labels flipped, 1% of the images exact or
   near copies, a 70/15/15 train/val/test split. Target: under 30 s on this CPU.
   The features come with pixel descriptors (pixel_hash.py, 10,000 x 143), the copies' close.
2. Beside it, what the check reuses: frozen features of efficientnet_lite0 (ImageNet weights, at
   its native 224 px, fp32 or bf16 as --feature-precision auto picks) computed for --sample demo
   images with the cache cold (images/s), the content digests of those files (files/s) and their
   pixel descriptors (images/s; then cached as the features are).
3. --calibrate: the cosine similarity of each demo image's embeddings and pixel descriptors to its
   re-encoded (JPEG quality 75 and 50), brightened (+10%, +20%), darkened (-20%), contrasted
   (+20%) and resized (3/4) copies, against the distinct images (of its class; of any class): the
   figures duplicates.py states for NEAR_AT and PIXEL_AT.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tl_core; this folder (bench/) is on the path as the script's own

from report import replace_section  # noqa: E402  (this folder is on the path as the script's own)

from bench import CpuShare, wait_until_quiet  # noqa: E402  (others' share of the CPU; waiting for a quiet one)
from tl_core.analysis import data_check, duplicates, pixel_hash  # noqa: E402
from tl_core.config import make_config  # noqa: E402
from tl_core.data import folders  # noqa: E402
from tl_core.data.demo import write_demo_data  # noqa: E402

THRESHOLDS = (0.92, 0.93, 0.94, 0.95, 0.96)
START, END = "<!-- check-data:start -->", "<!-- check-data:end -->"
COPIES = {
    "jpeg q75": lambda im: _jpeg(im, 75),
    "jpeg q50": lambda im: _jpeg(im, 50),
    "bright +10%": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "bright +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "dark -20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "contrast +20%": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
    "3/4 size": lambda im: im.resize((im.width * 3 // 4, im.height * 3 // 4)),
}
PIXEL_THRESHOLDS = (0.99, 0.992, 0.993, 0.994, 0.995)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


# --- 1. the check on synthetic features -------------------------------------------------------


def synthetic(n: int, dim: int, classes: int, seed: int = 0):
    """Images, digests and features shaped like a user's folder of `n` images (module docstring)."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, (classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    x = np.clip(centres[labels] + rng.normal(0, 1.5, (n, dim)).astype(np.float32), 0, 6)
    copies = rng.choice(n, size=n // 50, replace=False)
    src, dst = copies[: len(copies) // 2], copies[len(copies) // 2 :]
    x[dst] = x[src] * rng.uniform(0.97, 1.03, (len(src), dim)).astype(np.float32)  # near copies
    digests = [f"{i:032x}" for i in range(n)]
    for a, b in zip(src[: len(src) // 2], dst[: len(dst) // 2], strict=True):  # half of them exact
        digests[b] = digests[a]
        x[b] = x[a]
    labels[dst] = labels[src]
    pixels = duplicates.unit_rows(rng.normal(size=(n, pixel_hash.DIM)))
    pixels[dst] = duplicates.unit_rows(pixels[src] + 0.003 * rng.normal(size=(len(src), pixel_hash.DIM)))
    flipped = rng.choice(n, size=n // 20, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.15, 0.15])
    images = [data_check.Image(f"img{i:05d}.png", str(s), int(y)) for i, (s, y) in enumerate(zip(splits, labels))]
    return images, digests, x, pixels, set(flipped.tolist())


def time_check(n: int, dim: int, classes: int) -> dict:
    images, digests, x, pixels, flipped = synthetic(n, dim, classes)
    names = [f"class{c}" for c in range(classes)]
    with CpuShare() as load:
        start = time.perf_counter()
        found = data_check.check_features(images, digests, x, np.arange(n), names, pixels=pixels)
        total = time.perf_counter() - start
    top = {int(p["path"][3:8]) for p in found.label_issues[: len(flipped)]}
    return {
        "images": n,
        "dim": dim,
        "classes": classes,
        "seconds": round(total, 2),
        "parts": found.seconds,
        "others": round(load.others, 2),
        "found": found.found,
        "flipped_in_top": round(len(top & flipped) / len(flipped), 3),
    }


# --- 2. the features it reuses ----------------------------------------------------------------


def time_features(root: Path, sample: int) -> dict:
    write_demo_data(root / "data", datasets=("animals",), per_class=max(2, sample // 10))
    index = folders.scan_dataset(root / "data" / "animals")
    images = [data_check.Image(it.path, "train", it.label) for it in index.items["all"]]
    start = time.perf_counter()
    for im in images:
        duplicates.file_digest(im.path)
    hashed = time.perf_counter() - start
    start = time.perf_counter()
    for im in images:
        pixel_hash.descriptor(im.path)
    described = time.perf_counter() - start
    cfg = make_config(data=str(root / "data" / "animals"))
    with CpuShare() as load:
        start = time.perf_counter()
        _, featured, state = data_check.image_features(cfg, images, index, 224)
        seconds = time.perf_counter() - start
    assert state == "computed" and len(featured) == len(images)
    return {
        "sample": len(images),
        "feature_seconds": round(seconds, 2),
        "images_per_s": round(len(images) / seconds, 1),
        "files_hashed_per_s": round(len(images) / hashed),
        "pixel_descriptors_per_s": round(len(images) / described),
        "others": round(load.others, 2),
    }


# --- 3. the near-copy threshold ---------------------------------------------------------------


def _copy_path(path: Path, i: int) -> Path:
    return path.with_name(f"{path.stem}.copy{i}.png")


def calibrate(root: Path, per_class: int) -> dict:
    out = {}
    write_demo_data(root / "cal", datasets=("animals", "digits"), per_class=per_class)
    for name in ("animals", "digits"):
        folder = root / "cal" / name
        for path in sorted(folder.glob("*/*.png")):
            im = Image.open(path).convert("RGB")
            for i, make in enumerate(COPIES.values()):
                make(im).save(_copy_path(path, i))
        index = folders.scan_dataset(folder)
        images = [data_check.Image(it.path, "train", it.label) for it in index.items["all"]]
        x, featured, _ = data_check.image_features(make_config(data=str(folder)), images, index, 224)
        unit = duplicates.unit_rows(x)
        paths = [images[i].path for i in featured]
        labels = np.asarray([images[i].label for i in featured])
        row = {p: k for k, p in enumerate(paths)}
        originals = [k for k, p in enumerate(paths) if ".copy" not in p]
        content = [Path(paths[k]).read_bytes() for k in originals]
        distinct = np.triu(np.array([[a != b for b in content] for a in content]), k=1)  # the demo holds copies
        same = labels[originals][:, None] == labels[originals][None, :]
        out[name] = {"originals": len(originals), "distinct_pairs": int(distinct.sum())}
        pixels = {p: pixel_hash.descriptor(p) for p in paths}
        for measure, vec, thresholds in (
            ("embeddings", lambda k: unit[k], THRESHOLDS),
            ("pixels", lambda k: pixels[paths[k]], PIXEL_THRESHOLDS),
        ):
            copies = {
                kind: np.asarray([vec(k) @ vec(row[str(_copy_path(Path(paths[k]), i))]) for k in originals])
                for i, kind in enumerate(COPIES)
            }
            o = np.stack([vec(k) for k in originals])
            sims = o @ o.T
            out[name][measure] = {
                "copies_lowest": {kind: round(float(v.min()), 4) for kind, v in copies.items()},
                "distinct_highest": round(float(sims[distinct].max()), 4),
                "distinct_same_class_highest": round(float(sims[distinct & same].max()), 4),
                "at": {
                    f"{t:g}": {
                        "copies_found": {kind: round(float((v >= t).mean()), 3) for kind, v in copies.items()},
                        "distinct_pairs_above": int((sims[distinct] >= t).sum()),
                        "distinct_same_class_pairs_above": int((sims[distinct & same] >= t).sum()),
                    }
                    for t in thresholds
                },
            }
    return out


# --- the report --------------------------------------------------------------------------------


def write_section(path: Path, result: dict) -> None:
    """Replace this bench's section of BENCHMARKS.md (or append it); bench.py keeps it."""
    import torch

    check, feats = result["check"], result["features"]
    parts = check["parts"]
    lines = [
        START,
        "## Checking the data (check-data)",
        "",
        f"Written by `python bench/check_data.py` on {time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads).",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| The check of 10,000 images on cached features under 30 s | {check['seconds']:.1f} s for "
        f"{check['images']:,} x {check['dim']} features, {check['classes']} classes: label issues (5-fold logistic "
        f"regression and cleanlab) {parts['label_issues']:.1f} s, exact and near copies {parts['duplicates']:.1f} s, "
        f"outliers {parts['outliers']:.2f} s; other processes took {check['others']:.0%} of the CPU meanwhile | "
        f"**{'met' if check['seconds'] < 30 else 'missed'}** |",
        "",
        f"The features are synthetic (bench/check_data.py: {check['classes']} non-negative clusters, 5% of the "
        f"labels flipped, 1% exact or near copies): {check['flipped_in_top']:.0%} of the flipped images are among "
        f"the first {check['images'] // 20:,} label issues; found: {check['found']}. "
        f"Beside it, what the check reuses, computed once per folder and backbone (then a cache hit): "
        f"efficientnet_lite0's frozen features at 224 px with the cache cold, {feats['images_per_s']:.1f} images/s "
        f"({feats['sample']} demo images in {feats['feature_seconds']:.1f} s; other processes took "
        f"{feats['others']:.0%} of the CPU meanwhile): 10,000 images about {10000 / feats['images_per_s'] / 60:.0f} "
        f"min; the files' content digests, {feats['files_hashed_per_s']:,} files/s; their pixel descriptors "
        f"(96 px PNGs), {feats['pixel_descriptors_per_s']:,} images/s.",
        END,
    ]
    new = "\n".join(lines)
    replace_section(path, START, END, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--sample", type=int, default=200, help="demo images whose features are computed (default 200)")
    ap.add_argument("--calibrate", action="store_true", help="measure the near-copy threshold's figures instead")
    ap.add_argument("--per-class", type=int, default=30, help="--calibrate: demo images per class (default 30)")
    ap.add_argument(
        "--wait", type=float, default=120, help="seconds to wait at most for a quiet CPU before each measurement"
    )
    ap.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"), help="the report to write into ('' for none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TL_RUNS_DIR"] = str(Path(tmp) / "runs")  # its feature cache: cold
        if args.calibrate:
            print(json.dumps(calibrate(Path(tmp), args.per_class), indent=1))
            return
        wait_until_quiet(args.wait)
        result = {"check": time_check(args.images, args.dim, args.classes)}
        print(json.dumps(result["check"]), flush=True)
        wait_until_quiet(args.wait)
        result["features"] = time_features(Path(tmp), args.sample)
        print(json.dumps(result["features"]), flush=True)
    if args.report:
        write_section(Path(args.report), result)


if __name__ == "__main__":
    main()
