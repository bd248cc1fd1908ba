"""On a CUDA machine: ResNet-50 at 224 px in fp32 vs bf16 autocast + channels_last, then
TransferLab's own runs on the GPU; writes the "## GPU" section of BENCHMARKS.md.

    python bench/gpu.py                 # about 5 minutes on one H100
    python bench/gpu.py --quick         # a smoke test of every measurement

1. The model alone on a batch already on the GPU (the compute limit): images per second and
   peak allocated memory for inference and for a training step (AdamW), in three precisions:
   strict fp32 (TF32 off), PyTorch's default fp32 (cuDNN convolutions may use TF32), and
   bf16 autocast with channels_last (what TransferLab runs on a GPU).
2. TransferLab's runs (train_run, as the worker runs them) on the animal demo set at 224 px:
   ResNet-50 trained in full (random init: no download here), EfficientNet-Lite0 fine-tuned
   in full and used as a frozen feature extractor. Their img/s is set against (1).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import faulthandler
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision  # noqa: E402

from tl_core import backbones  # noqa: E402
from tl_core.config import make_config  # noqa: E402
from tl_core.demo_data import write_demo_data  # noqa: E402
from tl_core.store import Store  # noqa: E402
from tl_core.train import train_run  # noqa: E402

SIZE = 224
PRECISIONS = {  # name: (TF32 allowed, autocast dtype, channels_last)
    "fp32 (TF32 off)": (False, None, False),
    "fp32 (PyTorch default: TF32 convolutions)": (True, None, False),
    "bf16 autocast + channels_last": (True, torch.bfloat16, True),
}
START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"


def _timed(fn, steps: int) -> float:
    """Seconds per call of fn(), after warm-up (cudnn.benchmark picks its algorithms there)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def model_limits(make_model, batch: int, steps: int) -> dict[str, dict[str, float]]:
    """img/s and peak GPU memory (GiB) of make_model() on one batch in GPU memory, per precision."""
    torch.backends.cudnn.benchmark = True
    out = {}
    for name, (tf32, dtype, channels_last) in PRECISIONS.items():
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        row = {}
        for kind in ("inference", "training"):
            torch.manual_seed(0)
            model = make_model().cuda().to(memory_format=fmt)
            x = torch.randn(batch, 3, SIZE, SIZE, device="cuda").contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (batch,), device="cuda")
            opt = torch.optim.AdamW(model.parameters(), 1e-4)
            loss_fn = torch.nn.CrossEntropyLoss()

            def infer():
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    model(x)

            def train():
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            model.train(kind == "training")
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            seconds = _timed(train if kind == "training" else infer, steps)
            row[f"{kind} img/s"] = batch / seconds
            row[f"{kind} peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
            del model, x, y, opt
            torch.cuda.empty_cache()
        out[name] = row
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # PyTorch's defaults
    return out


def tl_run(store: Store, **settings) -> dict:
    """One TransferLab run through train_run, as the worker runs it."""
    cfg = make_config(**settings)
    run = store.create_run(cfg.model_dump(), "bench-gpu", status="running")
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()) as log:
        result = train_run(store, run.id, progress=False)
    print(log.getvalue()[-1500:], flush=True)
    seconds = time.perf_counter() - t
    if result.status != "completed":
        raise RuntimeError(f"run {run.id} {result.status}: {result.error}\n{log.getvalue()[-3000:]}")
    r = store.get_run(run.id)
    epochs = store.epoch_metrics([run.id])[run.id]
    later = [m for e, m in epochs.items() if e > 0] or list(epochs.values())
    return {"settings": settings, "seconds": seconds, "best_val_acc": r.best_val_acc,
            "first_epoch_img_s": epochs[0]["images_per_sec"],
            "img_s": sum(m["images_per_sec"] for m in later) / len(later),
            "peak_gib": max(m["peak_memory_mb"] for m in epochs.values()) / 1024,
            "epoch_seconds": [round(m["epoch_seconds"], 2) for m in epochs.values()],
            "feature_cache": r.summary.get("feature_cache"), "device": r.environment.get("gpu")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the report whose GPU section is rewritten")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    ap.add_argument("--deadline", type=float, default=None, help="seconds after which to print every "
                    "thread's stack and exit (to see where a run hangs)")
    args = ap.parse_args()
    if args.deadline:
        faulthandler.dump_traceback_later(args.deadline, exit=True)
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU is visible; run it on a GPU machine", file=sys.stderr)
        return 2
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    batch, steps, per_class, epochs = (32, 5, 40, 2) if args.quick else (128, 30, 500, 4)
    work = Path(tempfile.mkdtemp(prefix="tl-gpu-"))
    os.environ["TL_RUNS_DIR"], os.environ["TL_CACHE_DIR"] = str(work / "runs"), str(work / "cache")
    r: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "torchvision": torchvision.__version__,
               "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "batch": batch}

    say(f"{r['gpu']}: ResNet-50 at {SIZE} px, batch {batch}, on tensors already on the GPU")
    r["resnet50"] = model_limits(lambda: torchvision.models.resnet50(), batch, steps)
    for name, row in r["resnet50"].items():
        say(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
    say("EfficientNet-Lite0, the same")
    r["lite0"] = model_limits(lambda: backbones.create_backbone("efficientnet_lite0", 10).model, batch, steps)

    say(f"data: the animal demo set, {per_class} per class, {SIZE} px PNGs")
    write_demo_data(work / "data", datasets=("animals",), per_class=per_class, size=SIZE)
    store = Store(f"sqlite:///{work / 'gpu.db'}")
    common = {"data": str(work / "data" / "animals"), "image_size": SIZE, "batch_size": batch}
    runs = {
        "ResNet-50, trained in full (random init)": dict(backbone="resnet50", strategy="scratch", epochs=epochs),
        "EfficientNet-Lite0, full fine-tuning": dict(backbone="efficientnet_lite0", strategy="full", epochs=epochs),
        "EfficientNet-Lite0, feature extraction (cached frozen features)":
            dict(backbone="efficientnet_lite0", strategy="feature_extraction", epochs=10),
    }
    r["runs"] = {}
    for label, settings in runs.items():
        say(f"TransferLab: {label}")
        r["runs"][label] = run = tl_run(store, **common, **settings)
        say(f"  {run['img_s']:.0f} img/s after the first epoch ({run['first_epoch_img_s']:.0f} in it), "
            f"peak {run['peak_gib']:.2f} GiB, {run['seconds']:.1f} s, best val acc {run['best_val_acc']:.1%}")
    store.close()

    write_section(Path(args.out), r, args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str))
    say(f"wrote the GPU section of {args.out}")
    return 0


def section(r: dict, quick: bool) -> str:
    bf16 = "bf16 autocast + channels_last"
    lines = [START, "## GPU", "",
             f"Written by `python bench/gpu.py{' --quick' if quick else ''}` on {r['date']}: {r['gpu']}, torch "
             f"{r['torch']}, torchvision {r['torchvision']}; batch {r['batch']}, {SIZE} px. Model alone: a batch "
             "already in GPU memory, AdamW for training; peak memory is PyTorch's `max_memory_allocated`.", "",
             "ResNet-50:", "",
             "| precision | inference img/s | training img/s | inference peak GiB | training peak GiB |",
             "|---|---|---|---|---|"]
    for name, row in r["resnet50"].items():
        lines.append(f"| {name} | {row['inference img/s']:,.0f} | {row['training img/s']:,.0f} | "
                     f"{row['inference peak GiB']:.2f} | {row['training peak GiB']:.2f} |")
    base, fast = r["resnet50"]["fp32 (TF32 off)"], r["resnet50"][bf16]
    lines += ["", f"bf16 + channels_last against strict fp32: training {fast['training img/s'] / base['training img/s']:.1f}x "
              f"the img/s in {fast['training peak GiB'] / base['training peak GiB']:.2f}x the memory; inference "
              f"{fast['inference img/s'] / base['inference img/s']:.1f}x.", "",
              "TransferLab's own runs on the GPU (train_run, as the worker runs them: bf16 autocast, channels_last, "
              "cudnn.benchmark, pinned memory and non-blocking copies from the decode cache), the animal demo set "
              f"at {SIZE} px. img/s is the training throughput of the epochs after the first (the first decodes "
              "each image once, or computes the frozen features); the limit is the same model's bf16 + channels_last "
              "training step above.", "",
              "| run | img/s | of the limit | first epoch img/s | peak GiB | epoch seconds | best val acc |",
              "|---|---|---|---|---|---|---|"]
    for label, run in r["runs"].items():
        model = r["resnet50"] if "ResNet" in label else r["lite0"]
        limit = model[bf16]["training img/s"]
        of_limit = "n/a (head only)" if "feature" in label else f"{run['img_s'] / limit:.2f}x of {limit:,.0f}"
        lines.append(f"| {label} | {run['img_s']:,.0f} | {of_limit} | {run['first_epoch_img_s']:,.0f} | "
                     f"{run['peak_gib']:.2f} | {', '.join(map(str, run['epoch_seconds']))} | {run['best_val_acc']:.1%} |")
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, r: dict, quick: bool) -> None:
    """Replace the GPU section of the report (or append it); the CPU bench keeps it (bench.py)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    new = section(r, quick)
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
