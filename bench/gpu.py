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
3. A comparison as New run launches it (every strategy x 3 seeds, EfficientNet-Lite0, 10,000
   images at 224 px), trained by a worker as `make start` runs it: one run after another
   (--max-concurrent 1), then packed onto the GPU by memory (placement.py). Wall time of each.
4. Queued run to its first training batch, through a worker with its standby process ready
   (weights local, images decoded): the seconds, and where the run says they went.

Each part can run alone (`--only comparison` ...), writing its measurements as JSON (`--json`),
for a machine lent in calls of a few minutes; `--report A.json B.json ...` writes the section
from several such files.

    python bench/gpu.py --cpu-smoke     # parts 3 and 4 on the CPU at toy sizes: the plumbing only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import faulthandler
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision  # noqa: E402
from report import replace_section  # noqa: E402  (this folder is on the path as the script's own)

from tl_core.config import make_config  # noqa: E402
from tl_core.data.demo import write_demo_data  # noqa: E402
from tl_core.models import backbones  # noqa: E402
from tl_core.service.runs import queue_run, queue_runs  # noqa: E402
from tl_core.store import Store  # noqa: E402
from tl_core.training.run import train_run  # noqa: E402
from tl_core.training.strategies import list_strategies  # noqa: E402

SIZE = 224
PARTS = ["limits", "runs", "comparison", "first-batch"]
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
            model = x = y = opt = None  # freed before the next model is built (the closures are done with them)
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


def decode_pass(root: str, batch: int, cache: Path, device: torch.device | None = None) -> dict:
    """The decode cache on its own: one cold pass (PNG decode, resize, store), then one warm pass
    (read back, pinned, copied to the GPU), through TransferLab's loaders with their default workers."""
    from tl_core.data import decode_cache, folders
    from tl_core.data.splits import split_dataset
    from tl_core.training.run_data import default_workers

    device = device or torch.device("cuda")
    os.environ["TL_CACHE_DIR"], runs_cache = str(cache), os.environ.get("TL_CACHE_DIR")  # not the runs' cache
    index = folders.scan_dataset(root)
    splits = split_dataset(index, 0.2, 1.0, 0)
    pipeline = decode_cache.Pipeline(backbones.preprocessing("efficientnet_lite0"), SIZE)
    workers = default_workers(device)
    train, _, _ = decode_cache.make_loaders(
        splits, decode_cache.DatasetRows.of(index), pipeline, batch, 0, workers, device, channels_last=True
    )
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
    return {
        "settings": settings,
        "seconds": seconds,
        "best_val_acc": r.best_val_acc,
        "first_epoch_img_s": epochs[0]["images_per_sec"],
        "img_s": sum(m["images_per_sec"] for m in later) / len(later),
        "peak_gib": max(m["peak_memory_mb"] for m in epochs.values()) / 1024,
        "epoch_seconds": [round(m["epoch_seconds"], 2) for m in epochs.values()],
        "feature_cache": r.summary.get("feature_cache"),
        "device": r.environment.get("gpu"),
    }


# --- 3. a comparison, one run after another and packed -------------------------------------


def _worker(store: Store, log: Path, *args: str, **env: str) -> subprocess.Popen:
    """A worker on `store`, as `make start` starts it (its standby process included)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tl_core", "worker", "--db", store.url, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def _most_at_once(runs) -> int:
    """The most runs that trained at the same moment, from their start and end times."""
    edges = sorted([(r.started_at, 1) for r in runs] + [(r.ended_at, -1) for r in runs], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def comparison(
    work: Path,
    data: str,
    size: int,
    batch: int,
    epochs: int,
    packed: bool,
    device: str,
    seeds: tuple[int, ...] = (0, 1, 2),
    name: str | None = None,
) -> dict:
    """Every strategy x `seeds`, queued at once and trained by one worker: one after another, or
    packed (the worker's placement by GPU memory). Wall time from the worker's start to the last
    run's end."""
    name = name or ("packed" if packed else "sequential")
    # One database for every pass, as a user's: the packed pass places runs by the peaks its kinds
    # recorded in the passes before (a new database would know none, and pack only by share).
    store = Store(f"sqlite:///{work / 'comparison.db'}")
    base = dict(
        data=data,
        backbone="efficientnet_lite0",
        image_size=size,
        batch_size=batch,
        epochs=epochs,
        device=device,
        experiment=f"comparison, {name}",
    )
    runs = queue_runs(store, base, list_strategies(), seeds=list(seeds))
    t = time.perf_counter()
    proc = _worker(store, work / f"{name}.log", *([] if packed else ["--max-concurrent", "1"]))
    try:
        while any(store.get_run(r.id).status in ("queued", "running") for r in runs):
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({proc.returncode}); see {work / f'{name}.log'}")
            time.sleep(0.5)
        wall = time.perf_counter() - t
    finally:
        _stop(proc)
    done = [store.get_run(r.id) for r in runs]
    if failed := [f"run {r.id} ({r.config['strategy']}): {r.error}" for r in done if r.status != "completed"]:
        raise RuntimeError("\n".join(failed))
    out = {
        "wall_s": wall,
        "runs": len(done),
        "most_at_once": _most_at_once(done),
        "train_s": sum((r.ended_at - r.started_at).total_seconds() for r in done),
        "gpu_peak_gib": {r.config["strategy"]: r.summary.get("gpu_memory", {}).get("peak_mb", 0) / 1024 for r in done},
    }
    store.close()
    return out


# --- 4. queued run to first batch -----------------------------------------------------------


def _standby_ready(worker_pid: int) -> bool:
    """Whether the worker's standby process (`train-run --standby`, a child of it) is up."""
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and b"--standby" in (proc / "cmdline").read_bytes()
                and f"PPid:\t{worker_pid}\n" in (proc / "status").read_text()
            ):
                return True
        except OSError:
            continue
    return False


def first_batch(work: Path, data: str, size: int, batch: int, device: str, tries: int = 3) -> dict:
    """Seconds from queueing a run to its first training batch, with the worker's standby ready
    and the data decoded (a run like it trained before); the run's own record of where they went."""
    store = Store(f"sqlite:///{work / 'first.db'}")
    cfg = make_config(
        data=data,
        backbone="efficientnet_lite0",
        image_size=size,
        batch_size=batch,
        epochs=1,
        strategy="full",
        device=device,
        experiment="first batch",
    )
    proc = _worker(store, work / "first.log")
    out = []
    try:
        for i in range(tries + 1):  # the first decodes the images and loads the weights from disk once
            deadline = time.monotonic() + 120
            while not _standby_ready(proc.pid):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"no standby process; see {work / 'first.log'}")
                time.sleep(0.2)
            time.sleep(1.0)  # its imports done
            queued = time.time()
            run = queue_run(store, cfg)
            while (r := store.get_run(run.id)).status in ("queued", "running"):
                time.sleep(0.1)
            if r.status != "completed":
                raise RuntimeError(f"run {r.id}: {r.status}: {r.error}")
            if i:
                out.append(
                    {
                        "seconds": r.summary["first_batch_at"] - queued,
                        "startup": r.summary.get("startup"),
                        "cudnn_benchmark": r.summary.get("cudnn_benchmark"),
                    }
                )
    finally:
        _stop(proc)
        store.close()
    seconds = sorted(o["seconds"] for o in out)
    return {"median_s": seconds[len(seconds) // 2], "tries": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the report whose GPU section is rewritten")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    ap.add_argument("--cudnn-probe", choices=["on", "off"], help=argparse.SUPPRESS)  # one probe, as JSON
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after which to print every thread's stack and exit (to see where a run hangs)",
    )
    ap.add_argument("--only", choices=PARTS, action="append", help="this part alone (repeatable); with --json")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="write the section from these parts' JSON files")
    ap.add_argument("--cpu-smoke", action="store_true", help="parts 3 and 4 on the CPU at toy sizes (no report)")
    args = ap.parse_args()
    if args.deadline:
        faulthandler.dump_traceback_later(args.deadline, exit=True)
    if args.report:
        r = {}
        for f in args.report:
            r.update(json.loads(Path(f).read_text()))
        write_section(Path(args.out), r, r.get("quick", False))
        print(f"wrote the GPU section of {args.out} from {', '.join(args.report)}")
        return 0
    if args.cpu_smoke:
        work = Path(tempfile.mkdtemp(prefix="tl-gpu-smoke-"))
        os.environ["TL_RUNS_DIR"], os.environ["TL_CACHE_DIR"] = str(work / "runs"), str(work / "cache")
        write_demo_data(work / "data", datasets=("animals",), per_class=6, size=48)
        data = str(work / "data" / "animals")
        comparison(work, data, 32, 8, 3, False, "cpu", seeds=(9,), name="warm-up")
        r = {
            "comparison": {
                m: comparison(work, data, 32, 8, 3, m == "packed", "cpu", seeds=(0,)) for m in ("sequential", "packed")
            },
            "first_batch": first_batch(work, data, 32, 8, "cpu", tries=1),
        }
        print(json.dumps(r, indent=1, default=str))
        return 0
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
    r: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "batch": batch,
        "quick": args.quick,
    }
    parts = args.only or PARTS
    if "limits" in parts:
        limits(r, batch, steps, args.quick, say)
    if {"runs", "comparison", "first-batch"} & set(parts):
        say(f"data: the animal demo set, {per_class} per class, {SIZE} px PNGs")
        write_demo_data(work / "data", datasets=("animals",), per_class=per_class, size=SIZE)
    if "runs" in parts:
        runs(r, work, batch, epochs, say)
    if "comparison" in parts:  # 10,000 images (1,000 a class), every strategy x 3 seeds, 3 epochs
        big = work / "comparison"
        write_demo_data(big, datasets=("animals",), per_class=100 if args.quick else 1_000, size=SIZE)
        data, r["comparison"] = str(big / "animals"), {}
        say("the comparison's caches warmed (decoded images, each strategy's frozen features): one seed, in turn")
        r["comparison"]["warm-up"] = comparison(work, data, SIZE, batch, 3, False, "cuda", seeds=(9,), name="warm-up")
        for mode in ("sequential", "packed"):
            say(f"the comparison, {mode}")
            r["comparison"][mode] = comparison(work, data, SIZE, batch, 3, mode == "packed", "cuda")
            say(f"  {r['comparison'][mode]}")
    if "first-batch" in parts:
        say("queued run to first batch, with the standby ready")
        r["first_batch"] = first_batch(work, str(work / "data" / "animals"), SIZE, batch, "cuda")
        say(f"  {r['first_batch']}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str))
    if args.only:
        say(f"wrote {args.json or 'nothing (give --json)'}; `--report` writes the section from the parts")
        return 0
    write_section(Path(args.out), r, args.quick)
    say(f"wrote the GPU section of {args.out}")
    return 0


def limits(r: dict, batch: int, steps: int, quick: bool, say) -> None:
    """Part 1: the models alone, and cuDNN's search on and off."""
    say(f"{r['gpu']}: ResNet-50 at {SIZE} px, batch {batch}, on tensors already on the GPU")
    r["resnet50"] = model_limits(lambda: torchvision.models.resnet50(), batch, steps)
    for name, row in r["resnet50"].items():
        say(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
    say("EfficientNet-Lite0, the same")
    r["lite0"] = model_limits(lambda: backbones.create_backbone("efficientnet_lite0", 10).model, batch, steps)

    r["cudnn"] = {}
    for setting in ("off", "on"):
        out = subprocess.run(
            [sys.executable, __file__, "--cudnn-probe", setting] + (["--quick"] if quick else []),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r["cudnn"][setting] = json.loads(out.strip().splitlines()[-1])
        say(f"  EfficientNet-Lite0 with cudnn.benchmark {setting}: {r['cudnn'][setting]}")


def runs(r: dict, work: Path, batch: int, epochs: int, say) -> None:
    """Part 2: TransferLab's own runs against the models alone."""
    r["decode"] = decode_pass(str(work / "data" / "animals"), batch, work / "decode-cache")
    say(
        f"  decoding into the decode cache: {r['decode']['img_s']:.0f} img/s with {r['decode']['workers']} "
        f"workers; reading it back: {r['decode']['warm_img_s']:.0f} img/s"
    )
    store = Store(f"sqlite:///{work / 'gpu.db'}")
    common = {"data": str(work / "data" / "animals"), "image_size": SIZE, "batch_size": batch}
    runs = {
        "ResNet-50, trained in full (random init)": dict(backbone="resnet50", strategy="scratch", epochs=epochs),
        "EfficientNet-Lite0, full fine-tuning": dict(backbone="efficientnet_lite0", strategy="full", epochs=epochs),
        "EfficientNet-Lite0, feature extraction (cached frozen features)": dict(
            backbone="efficientnet_lite0", strategy="feature_extraction", epochs=10
        ),
    }
    r["runs"] = {}
    for label, settings in runs.items():
        say(f"TransferLab: {label}")
        r["runs"][label] = run = tl_run(store, **common, **settings)
        say(
            f"  {run['img_s']:.0f} img/s after the first epoch ({run['first_epoch_img_s']:.0f} in it), "
            f"peak {run['peak_gib']:.2f} GiB, {run['seconds']:.1f} s, best val acc {run['best_val_acc']:.1%}"
        )
    store.close()


def section(r: dict, quick: bool) -> str:
    """The GPU section of BENCHMARKS.md from the parts measured (all of them, or those in the JSON
    files given to --report)."""
    bf16 = "bf16 autocast + channels_last"
    lines = [
        START,
        "## GPU",
        "",
        f"Written by `python bench/gpu.py{' --quick' if quick else ''}` on {r['date']}: {r['gpu']}, torch "
        f"{r['torch']}, torchvision {r['torchvision']}; batch {r['batch']}, {SIZE} px.",
        "",
    ]
    if "resnet50" in r:
        lines += [
            "Model alone: a batch already in GPU memory, AdamW for training; peak memory is PyTorch's "
            "`max_memory_allocated`. ResNet-50:",
            "",
            "| precision | inference img/s | training img/s | inference peak GiB | training peak GiB | "
            "first training step s |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in r["resnet50"].items():
            lines.append(
                f"| {name} | {row['inference img/s']:,.0f} | {row['training img/s']:,.0f} | "
                f"{row['inference peak GiB']:.2f} | {row['training peak GiB']:.2f} | "
                f"{row['training first call s']:.1f} |"
            )
        base, fast = r["resnet50"]["fp32 (TF32 off)"], r["resnet50"][bf16]
        lines += [
            "",
            f"bf16 + channels_last against strict fp32: training "
            f"{fast['training img/s'] / base['training img/s']:.1f}x the img/s in "
            f"{fast['training peak GiB'] / base['training peak GiB']:.2f}x the memory; inference "
            f"{fast['inference img/s'] / base['inference img/s']:.1f}x. EfficientNet-Lite0's first bf16 "
            f"training step (with cuDNN's search) takes {r['lite0'][bf16]['training first call s']:.1f} s, "
            f"ResNet-50's {fast['training first call s']:.1f} s.",
            "",
            *_cudnn_lines(r),
        ]
    if "runs" in r:
        lines += [
            "TransferLab's own runs on the GPU (train_run, as the worker runs them: bf16 autocast, "
            "channels_last, pinned memory and non-blocking copies from the decode cache), the animal demo set "
            f"at {SIZE} px. img/s is the training throughput of the epochs after the first (the first decodes "
            "each image once, or computes the frozen features); the limit is the same model's bf16 + "
            "channels_last training step above.",
            "",
            f"The decode cache on its own (EfficientNet-Lite0's preprocessing, {r['decode']['workers']} "
            f"DataLoader workers): a cold pass decodes and stores {r['decode']['img_s']:,.0f} img/s; a warm "
            f"pass reads, pins and copies to the GPU {r['decode']['warm_img_s']:,.0f} img/s.",
            "",
            "| run | img/s | of the limit | first epoch img/s | peak GiB | epoch seconds | best val acc |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, run in r["runs"].items():
            model = r.get("resnet50" if "ResNet" in label else "lite0")
            limit = model[bf16]["training img/s"] if model else None
            of_limit = (
                "n/a (head only)"
                if "feature" in label
                else f"{run['img_s'] / limit:.2f}x of {limit:,.0f}"
                if limit
                else "(limits not measured)"
            )
            lines.append(
                f"| {label} | {run['img_s']:,.0f} | {of_limit} | {run['first_epoch_img_s']:,.0f} | "
                f"{run['peak_gib']:.2f} | {', '.join(map(str, run['epoch_seconds']))} | "
                f"{run['best_val_acc']:.1%} |"
            )
        lines.append("")
    if "comparison" in r:
        seq, packed = r["comparison"]["sequential"], r["comparison"]["packed"]
        lines += [
            f"A comparison as New run launches it: every strategy x 3 seeds ({seq['runs']} runs), "
            f"EfficientNet-Lite0, 10,000 images at {SIZE} px, 3 epochs, queued at once and trained by one "
            "worker (its standby process on), the decoded images and frozen features already cached by a "
            f"first pass: one run after another (`--max-concurrent 1`) {seq['wall_s']:,.0f} s; packed onto "
            f"the GPU by memory (placement.py: up to {packed['most_at_once']} at once) {packed['wall_s']:,.0f} s, "
            f"{packed['wall_s'] / seq['wall_s']:.2f}x the time (target: at most 0.5x).",
            "",
        ]
    if "first_batch" in r:
        fb = r["first_batch"]
        where = fb["tries"][0].get("startup") or {}
        lines += [
            f"Queued run to its first training batch (EfficientNet-Lite0, full fine-tuning, batch {r['batch']}, "
            f"{SIZE} px; the worker's standby process ready, weights local, images decoded): median "
            f"{fb['median_s']:.1f} s of {len(fb['tries'])} (target: 5 s); the first of them: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in where.items())
            + f"; cudnn.benchmark {fb['tries'][0].get('cudnn_benchmark')}.",
            "",
        ]
    lines.append(END)
    return "\n".join(lines)


def _cudnn_lines(r: dict) -> list[str]:
    on, off = r["cudnn"]["on"], r["cudnn"]["off"]
    return [
        f"cudnn.benchmark (EfficientNet-Lite0, bf16, channels_last, batch {r['batch']}; each setting in a fresh "
        f"process): steady {on['img/s']:,.0f} img/s on, {off['img/s']:,.0f} off "
        f"({on['img/s'] / off['img/s']:.2f}x); the first step takes {on['first step s']:.1f} s on, "
        f"{off['first step s']:.1f} s off, and the first at a new batch shape {on['first step at a new shape s']:.1f} "
        f"s on, {off['first step at a new shape s']:.1f} s off. Runs turn it on only when long enough to pay "
        "the search back (`--cudnn-benchmark auto`, training/startup.py).",
        "",
    ]


def write_section(path: Path, r: dict, quick: bool) -> None:
    """Replace the GPU section of the report (or append it); the CPU bench keeps it (bench.py)."""
    new = section(r, quick)
    replace_section(path, START, END, new)


if __name__ == "__main__":
    sys.exit(main())
