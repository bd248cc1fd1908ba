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
import subprocess
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


def _timed(fn, steps: int) -> tuple[float, float]:
    """(seconds of the first call: cudnn.benchmark's search for this shape, seconds per call after warm-up)."""
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t
    for _ in range(4):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return first, (time.perf_counter() - t) / steps


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
            first, seconds = _timed(train if kind == "training" else infer, steps)
            row[f"{kind} img/s"] = batch / seconds
            row[f"{kind} first call s"] = first
            row[f"{kind} peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
            del model, x, y, opt
            torch.cuda.empty_cache()
        out[name] = row
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # PyTorch's defaults
    return out


def cudnn_probe(benchmark: bool, batch: int, steps: int) -> dict:
    """EfficientNet-Lite0's bf16 channels_last training step with cudnn.benchmark on or off: the
    first step at `batch` and at a new shape (a smaller last batch), then steady img/s. Run in a
    process of its own (`--cudnn-probe on|off`): the algorithm choices are cached per process."""
    torch.backends.cudnn.benchmark = benchmark
    model = backbones.create_backbone("efficientnet_lite0", 10).model.cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step(b: int):
        x = torch.randn(b, 3, SIZE, SIZE, device="cuda").contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (b,), device="cuda"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    torch.zeros(1, device="cuda")
    out = {}
    for name, b in (("first step s", batch), ("first step at a new shape s", batch // 4)):
        torch.cuda.synchronize()
        t = time.perf_counter()
        step(b)
        torch.cuda.synchronize()
        out[name] = time.perf_counter() - t
    out["img/s"] = batch / _timed(lambda: step(batch), steps)[1]
    return out


def decode_pass(root: str, batch: int, cache: Path, device: torch.device = torch.device("cuda")) -> dict:
    """The decode cache on its own: one cold pass (PNG decode, resize, store), then one warm pass
    (read back, pinned, copied to the GPU), through TransferLab's loaders with their default workers."""
    from tl_core import data, decoded
    from tl_core.train import _default_workers

    os.environ["TL_CACHE_DIR"], runs_cache = str(cache), os.environ.get("TL_CACHE_DIR")  # not the runs' cache
    index = data.scan_dataset(root)
    splits = data.split_dataset(index, 0.2, 1.0, 0)
    pipeline = decoded.Pipeline(backbones.preprocessing("efficientnet_lite0"), SIZE)
    workers = _default_workers(device)
    train, _, _ = decoded.make_loaders(splits, decoded.DatasetRows.of(index), pipeline, batch, 0, workers, device,
                                       channels_last=True)
    out = {"workers": workers}
    for name in ("img_s", "warm_img_s"):
        t, n = time.perf_counter(), 0
        for x, _ in train:
            n += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = n / (time.perf_counter() - t)
    os.environ["TL_CACHE_DIR"] = runs_cache
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
    ap.add_argument("--cudnn-probe", choices=["on", "off"], help=argparse.SUPPRESS)  # one probe, as JSON
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
    if args.cudnn_probe:
        print(json.dumps(cudnn_probe(args.cudnn_probe == "on", batch, steps)))
        return 0
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

    r["cudnn"] = {}
    for setting in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--cudnn-probe", setting] + (["--quick"] if args.quick else []),
                             capture_output=True, text=True, check=True).stdout
        r["cudnn"][setting] = json.loads(out.strip().splitlines()[-1])
        say(f"  EfficientNet-Lite0 with cudnn.benchmark {setting}: {r['cudnn'][setting]}")
    say(f"data: the animal demo set, {per_class} per class, {SIZE} px PNGs")
    write_demo_data(work / "data", datasets=("animals",), per_class=per_class, size=SIZE)
    r["decode"] = decode_pass(str(work / "data" / "animals"), batch, work / "decode-cache")
    say(f"  decoding into the decode cache: {r['decode']['img_s']:.0f} img/s with {r['decode']['workers']} "
        f"workers; reading it back: {r['decode']['warm_img_s']:.0f} img/s")
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
             "| precision | inference img/s | training img/s | inference peak GiB | training peak GiB | "
             "first training step s |",
             "|---|---|---|---|---|---|"]
    for name, row in r["resnet50"].items():
        lines.append(f"| {name} | {row['inference img/s']:,.0f} | {row['training img/s']:,.0f} | "
                     f"{row['inference peak GiB']:.2f} | {row['training peak GiB']:.2f} | "
                     f"{row['training first call s']:.1f} |")
    base, fast = r["resnet50"]["fp32 (TF32 off)"], r["resnet50"][bf16]
    lines += ["", f"bf16 + channels_last against strict fp32: training {fast['training img/s'] / base['training img/s']:.1f}x "
              f"the img/s in {fast['training peak GiB'] / base['training peak GiB']:.2f}x the memory; inference "
              f"{fast['inference img/s'] / base['inference img/s']:.1f}x.", "",
              "TransferLab's own runs on the GPU (train_run, as the worker runs them: bf16 autocast, channels_last, "
              "cudnn.benchmark, pinned memory and non-blocking copies from the decode cache), the animal demo set "
              f"at {SIZE} px. img/s is the training throughput of the epochs after the first (the first decodes "
              "each image once, or computes the frozen features); the limit is the same model's bf16 + channels_last "
              "training step above.", "",
              *_cudnn_lines(r), f"The decode cache on its own (EfficientNet-Lite0's preprocessing, {r['decode']['workers']} "
              f"DataLoader workers): a cold pass decodes and stores {r['decode']['img_s']:,.0f} img/s; a warm pass "
              f"reads, pins and copies to the GPU {r['decode']['warm_img_s']:,.0f} img/s. EfficientNet-Lite0's "
              f"first bf16 training step (cudnn.benchmark's search) takes "
              f"{r['lite0']['bf16 autocast + channels_last']['training first call s']:.1f} s, ResNet-50's "
              f"{r['resnet50']['bf16 autocast + channels_last']['training first call s']:.1f} s; each new batch "
              "shape (a last partial batch, validation's) searches again.", "",
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


def _cudnn_lines(r: dict) -> list[str]:
    on, off = r["cudnn"]["on"], r["cudnn"]["off"]
    return [f"cudnn.benchmark (EfficientNet-Lite0, bf16, channels_last, batch {r['batch']}; each setting in a fresh "
            f"process): steady {on['img/s']:,.0f} img/s on, {off['img/s']:,.0f} off "
            f"({on['img/s'] / off['img/s']:.2f}x); the first step takes {on['first step s']:.1f} s on, "
            f"{off['first step s']:.1f} s off, and the first at a new batch shape {on['first step at a new shape s']:.1f} "
            f"s on, {off['first step at a new shape s']:.1f} s off. `--cudnn-benchmark off` trades one for the "
            "other; it is on by default.", ""]


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
