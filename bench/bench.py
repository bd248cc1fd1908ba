"""TransferLab against the textbook loop, measured side by side in one run; writes BENCHMARKS.md.

    python bench/bench.py            # the default: about 15-20 minutes on a 2-core CPU
    python bench/bench.py --quick    # a smoke test of every measurement (a few minutes; not the targets)

Every number comes from this one process (and the subprocesses it starts), on the same data,
model (EfficientNet-Lite0), image size (96 px), batch size (32) and seed; see bench/reference.py
for the reference loop. Ratios are what the targets are about: absolute times depend on the
machine and on whatever else runs on it (the report gives the CPU share other processes took).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tl_core; this folder (bench/) is on the path as the script's own

import bookkeeping  # noqa: E402
import torch  # noqa: E402
from reference import run_reference  # noqa: E402

from tl_core.config import make_config  # noqa: E402
from tl_core.data import folders
from tl_core.data.demo import write_demo_data  # noqa: E402
from tl_core.data.splits import split_dataset
from tl_core.executors.worker import pid_alive  # noqa: E402
from tl_core.models import backbones
from tl_core.store import Store  # noqa: E402
from tl_core.training.run import train_run  # noqa: E402

BACKBONE, SIZE, BATCH = "efficientnet_lite0", 96, 32


# --- the machine ------------------------------------------------------------------------------


class CpuShare:
    """The share of the machine's CPU time that other processes used while a block ran."""

    def __init__(self):
        self.start = None

    @staticmethod
    def _ticks() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        own = os.times()
        mine = (own.user + own.system + own.children_user + own.children_system) * os.sysconf("SC_CLK_TCK")
        return busy, int(mine)

    def __enter__(self):
        self.start = (self._ticks(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        (busy0, mine0), t0 = self.start
        busy1, mine1 = self._ticks()
        wall = (time.perf_counter() - t0) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        self.others = max(0.0, (busy1 - busy0) - (mine1 - mine0)) / max(wall, 1)


def wait_until_quiet(max_wait: float = 900, threshold: float = 0.1) -> float:
    """Wait (up to max_wait s) until other processes use under `threshold` of the CPU for 5 s.

    This machine may be shared; measuring while someone else's test suite runs says little.
    Returns the seconds waited.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        with CpuShare() as load:
            time.sleep(5)
        if load.others < threshold:
            break
    return time.perf_counter() - start


def quietly(measure, *args, retries: int = 1, threshold: float = 0.2, **kwargs) -> dict:
    """measure(...) after waiting for a quiet machine; again (up to `retries`) if others took
    more than `threshold` of the CPU meanwhile. Keeps the least disturbed result."""
    best = None
    for _ in range(1 + retries):
        wait_until_quiet()
        result = measure(*args, **kwargs)
        if best is None or result["others"] < best["others"]:
            best = result
        if best["others"] < threshold:
            break
    return best


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


# --- TransferLab runs, in this process -----------------------------------------------------------


def tl_run(store: Store, cache: Path, **settings) -> dict:
    """One TransferLab run through train_run, as `python -m tl_core run` does; the caches under `cache`."""
    os.environ["TL_CACHE_DIR"] = str(cache)
    settings = {"backbone": BACKBONE, "image_size": SIZE, "batch_size": BATCH, **settings}
    cfg = make_config(**settings)
    run = store.create_run(cfg.model_dump(), "bench", status="running")
    called = time.time()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()) as log, CpuShare() as load:
        result = train_run(store, run.id, progress=False)
    seconds = time.perf_counter() - t0
    if result.status != "completed":
        raise RuntimeError(f"run {run.id} {result.status}: {result.error}\n{log.getvalue()[-2000:]}")
    r = store.get_run(run.id)
    epochs = store.epoch_metrics([run.id])[run.id]
    return {
        "seconds": seconds,
        "best_val_acc": r.best_val_acc,
        "summary": r.summary,
        "epochs": epochs,
        "to_first_batch": r.summary["first_batch_at"] - called,
        "run_id": run.id,
        "final_val_acc": epochs[max(epochs)]["val_acc"],
        "others": load.others,
    }


def reference(*args, **kwargs) -> dict:
    """bench/reference.py's loop, with the CPU share other processes took meanwhile."""
    with CpuShare() as load:
        r = run_reference(*args, **kwargs)
    return {**r.__dict__, "best_val_acc": r.best_val_acc, "images_per_sec": r.images_per_sec, "others": load.others}


def cold_run(store: Store, cache: Path, **settings) -> dict:
    """tl_run with empty caches (a retry must not find what the first try computed)."""
    shutil.rmtree(cache, ignore_errors=True)
    return tl_run(store, cache, **settings)


def _split(root: str) -> tuple[list[str], list[str]]:
    splits = split_dataset(folders.scan_dataset(root), 0.2, seed=0)
    return [it.path for it in splits.train], [it.path for it in splits.val]


# --- measurements ----------------------------------------------------------------------------


def _compute_limit(n_batches: int) -> dict:
    """The model alone on tensors already in memory: forward (eval) and forward+backward (train)."""
    torch.manual_seed(0)
    out = {}
    for layout in ("nchw", "channels_last"):
        bb = backbones.create_backbone(BACKBONE, 10)
        model = bb.model
        x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
        if layout == "channels_last":
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        model.eval()
        for dtype in (None, torch.bfloat16):
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                out[f"forward {layout} {'bf16' if dtype else 'fp32'}"] = _rate(lambda: model(x), n_batches)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        out[f"train step {layout} fp32"] = _rate(step, n_batches)
    return out


def train_limit(n_steps: int) -> dict:
    """TransferLab's own full fine-tuning step (channels_last, its param groups and optimizer, loss
    read back every step) on one batch already in memory: images per second over n_steps."""
    from tl_core.training.finetuning import freeze_to, sync_param_groups

    with CpuShare() as load:
        torch.manual_seed(0)
        bb = backbones.create_backbone(BACKBONE, 10)
        model = bb.model.to(memory_format=torch.channels_last).train()
        cfg = make_config(data=".", strategy="full")
        freeze_to(bb.groups, 0)  # everything trains
        opt = sync_param_groups(None, cfg, bb.groups, 0, [1.0] * len(bb.groups))
        x = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (BATCH,))
        loss_fn = torch.nn.CrossEntropyLoss()
        for step in range(n_steps + 3):
            if step == 3:
                t = time.perf_counter()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        ips = n_steps * BATCH / (time.perf_counter() - t)
    return {"images_per_sec": ips, "others": load.others}


def bracketed_run(store: Store, cache: Path, steps: int, **settings) -> dict:
    """A cold TransferLab run with the compute limit (train_limit, `steps` steps) measured right
    before each of its epochs and once after the last: this machine's speed drifts by 10-20% over
    minutes, so each epoch is set against the limit measured around it. An epoch's img/s is timed
    around train_one_epoch itself (the limit's own time is not in it)."""
    from tl_core.training import loop

    limits, ips, original = [], [], loop.train_one_epoch

    def bracketed(*args, **kwargs):
        limits.append(train_limit(steps)["images_per_sec"])
        t = time.perf_counter()
        out = original(*args, **kwargs)
        ips.append(out[2] / (time.perf_counter() - t))
        return out

    loop.train_one_epoch = bracketed
    try:
        tl = cold_run(store, cache, **settings)
    finally:
        loop.train_one_epoch = original
    limits.append(train_limit(steps)["images_per_sec"])
    ratios = [ips[e] / ((limits[e] + limits[e + 1]) / 2) for e in range(len(ips))]
    return {**tl, "ips": ips, "limits": limits, "ratios": ratios}


def _limits(n_batches: int) -> dict:
    with CpuShare() as load:
        out = _compute_limit(n_batches)
    return {**out, "others": load.others}


def _rate(fn, n: int) -> float:
    """Images per second of fn() on one batch, best-of-3 medians after a warm-up."""
    fn()
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return BATCH / times[len(times) // 2]


def compiled_step(n_batches: int) -> dict:
    """torch.compile of the training step: compile time, then steady images per second."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # a cold compile
    torch.manual_seed(0)
    model = backbones.create_backbone(BACKBONE, 10).model.to(memory_format=torch.channels_last).train()
    x = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    compiled = torch.compile(model)

    def step():
        loss = loss_fn(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    return {"compile_seconds": first, "images_per_sec": _rate(step, n_batches)}


def memory_run(root: str, cache: Path, db: Path, epochs: int) -> dict:
    """A cold feature-extraction run in a fresh process (`python -m tl_core run`): its peak memory."""
    env = {
        **os.environ,
        "TL_CACHE_DIR": str(cache),
        "PYTHONPATH": str(ROOT),
        "TL_RUNS_DIR": str(db.with_suffix(".runs")),
    }
    t = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tl_core",
            "run",
            "--data",
            root,
            "--backbone",
            BACKBONE,
            "--strategy",
            "feature_extraction",
            "--epochs",
            str(epochs),
            "--image-size",
            str(SIZE),
            "--batch-size",
            str(BATCH),
            "--db",
            f"sqlite:///{db}",
            "--json",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=db.parent,
    )
    # Resident memory in two parts, sampled: anonymous (tensors, arrays, the heap) and file-backed
    # (shared libraries, torch's CUDA ones included, and the memory-mapped caches).
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in peak:
                    peak[key] = max(peak[key], int(value.split()[0]) // 1024)
        except OSError:
            pass
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    run_id = json.loads(stdout)["run_id"]
    store = Store(f"sqlite:///{db}")
    epochs_m = store.epoch_metrics([run_id])[run_id]
    run = store.get_run(run_id)
    store.close()
    return {
        "seconds": seconds,
        "peak_memory_mb": max(m["peak_memory_mb"] for m in epochs_m.values()),
        "epoch_seconds": _median([m["epoch_seconds"] for e, m in epochs_m.items() if e]),
        "peak_anon_mb": peak["RssAnon"],
        "peak_file_mb": peak["RssFile"],
        "peak_sampled_mb": peak["VmRSS"],
        "best_val_acc": run.best_val_acc,
        "images": run.summary["train_images"] + run.summary["val_images"],
    }


def _standby_ready(worker_pid: int, timeout: float = 120) -> float:
    """Seconds until the worker's standby process (worker.py) has done its imports and waits."""
    import psutil

    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        standby = [p for p in psutil.Process(worker_pid).children() if "--standby" in p.cmdline()]
        if standby:
            busy = sum(standby[0].cpu_times()[:2])
            time.sleep(0.5)
            if sum(standby[0].cpu_times()[:2]) - busy < 0.01:  # idle: blocked on reading its run id
                return time.perf_counter() - t
        else:
            time.sleep(0.1)
    raise RuntimeError("the worker's standby process did not become ready")


def queued_to_first_batch(db: Path, cache: Path, runs: list[dict], standby: bool = True) -> list[dict]:
    """Queue runs for a worker (started here, default poll) and time queued -> first batch; with
    `standby`, as a user finds a worker that has been up a while: its standby process ready."""
    env = {
        **os.environ,
        "TL_CACHE_DIR": str(cache),
        "PYTHONPATH": str(ROOT),
        "TL_RUNS_DIR": str(db.with_suffix(".runs")),
        "TL_STANDBY": "1" if standby else "0",
    }
    store = Store(f"sqlite:///{db}")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--db", f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=db.parent,
        text=True,
    )
    out = []
    try:
        t = time.perf_counter()
        worker.stdout.readline()  # "worker PID: up to N runs at once": up and idle, as when a user queues a run
        worker_start = time.perf_counter() - t
        for settings in runs:
            standby_s = _standby_ready(worker.pid) if standby else None
            time.sleep(1)
            cfg = make_config(backbone=BACKBONE, batch_size=BATCH, **settings)
            run = store.create_run(cfg.model_dump(), "bench-queue", status="queued")
            queued = run.created_at.replace(tzinfo=dt.UTC).timestamp()
            deadline = time.time() + 300
            while time.time() < deadline:
                r = store.get_run(run.id)
                if "first_batch_at" in r.summary or r.status in ("failed", "cancelled", "completed"):
                    break
                time.sleep(0.05)
            r = store.get_run(run.id)
            if "first_batch_at" not in r.summary:
                raise RuntimeError(f"queued run {run.id}: {r.status} {r.error}")
            started = r.started_at.replace(tzinfo=dt.UTC).timestamp()  # by the run's process, after imports
            out.append(
                {
                    **settings,
                    "seconds": r.summary["first_batch_at"] - queued,
                    "to_process_ready": started - queued,
                    "startup_in_process": r.summary["startup_seconds"],
                    "worker_start": worker_start,
                    "standby_ready": standby_s,
                    "standby": standby,
                }
            )
            store.request_cancel(run.id)
            while store.get_run(run.id).status == "running" or pid_alive(store.get_run(run.id).pid):
                time.sleep(0.1)
            time.sleep(2)  # the worker has reaped it and is idle again
    finally:
        worker.terminate()
        worker.wait(30)
        store.close()
    return out


# --- the report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def write_report(path: Path, r: dict) -> None:
    """The CPU report; the sections bench/gpu.py and bench/compare_browser.py wrote into the same file are kept."""
    old = path.read_text() if path.exists() else ""
    # Sections other benches own (bench/gpu.py, bench/compare_browser.py), between their markers: kept.
    gpu = "\n\n".join(m.group(0) for m in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", old, re.S))
    m, q = r["machine"], r["quick"]
    fe, aug, ft = r["fe"], r["aug"], r["full"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python bench/bench.py{' --quick' if q else ''}` on {m['date']}: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']} ({m['threads']} threads), Python {m['python']}, no GPU. Every number below comes from "
        f"that one run: TransferLab and the reference loop (bench/reference.py: ImageFolder + PIL transforms per "
        f"item + DataLoader, a full fp32 forward every epoch, `model.train()` on the whole model) on the same "
        f"data (the animal demo set, {SIZE} px PNGs), model ({BACKBONE}, ImageNet weights), image size {SIZE}, "
        f"batch size {BATCH}, optimizer, LR schedule and seed. Other processes on this machine took "
        f"{r['others']:.0%} of its CPU time over the whole run, waits included"
        f"{' (the machine was shared)' if r['others'] > 0.05 else ''}; "
        f"ratios are measured side by side, but absolute times move with such load. Each measurement waits "
        f"for a quiet machine (other processes under 10% of the CPU for 5 s) and is taken again once if they "
        f"took more than 20% during it; the tables give the share they took.",
        "",
        "The GPU numbers (ResNet-50 at 224 px in fp32 vs bf16/channels_last: img/s and peak GPU memory; "
        "TransferLab's own runs on a GPU) are in the GPU section at the end, written by `python bench/gpu.py` "
        "on a GPU machine" + ("." if gpu else ": **not measured yet**."),
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| Feature extraction, {fe['epochs']} epochs, no augmentation: >= 10x faster end to end, accuracy no more "
        f"than 1 point below | {fe['speedup']:.1f}x ({fe['tl']['seconds']:.1f} s vs {fe['ref']['seconds']:.0f} s); "
        f"best val acc {fe['tl']['best_val_acc']:.1%} vs {fe['ref']['best_val_acc']:.1%} | "
        f"{verdict(fe['speedup'] >= 10 and fe['tl']['best_val_acc'] >= fe['ref']['best_val_acc'] - 0.01)} |",
        f"| Feature extraction, light augmentation ({aug['views']} cached views): >= 3x | {aug['speedup']:.1f}x "
        f"({aug['tl']['seconds']:.1f} s vs {aug['ref']['seconds']:.0f} s); best val acc "
        f"{aug['tl']['best_val_acc']:.1%} vs {aug['ref']['best_val_acc']:.1%} | {verdict(aug['speedup'] >= 3)} |",
        f"| Full fine-tuning: training throughput >= 0.9x the compute limit | {ft['vs_limit']:.2f}x: the median, "
        f"over epochs 2-{len(ft['epoch_ips'])}, of each epoch's img/s over the limit measured right before and "
        f"right after it (ratios {', '.join(f'{x:.2f}' for x in ft['ratios'][1:])}); the limit is TransferLab's own "
        f"training step on a batch in memory ({', '.join(f'{x:.0f}' for x in ft['limits'])} img/s around the "
        f"epochs). {ft['tl_ips']:.0f} img/s is {ft['vs_limit_nchw']:.2f}x the textbook fp32 NCHW step "
        f"({ft['limit_nchw']:.0f} img/s) | {verdict(ft['vs_limit'] >= 0.9)} |",
        f"| Full fine-tuning: >= 1.3x the reference loop | {ft['vs_ref']:.2f}x ({ft['tl_ips']:.0f} vs "
        f"{ft['ref_ips']:.0f} img/s) | {verdict(ft['vs_ref'] >= 1.3)} |",
        f"| A second feature-extraction run (other head, seed) starts training its head within 2 s | "
        f"{r['second']['to_first_batch']:.2f} s from the call to the first batch (cache hit: "
        f"{r['second']['summary']['feature_cache']['hit']}) | {verdict(r['second']['to_first_batch'] < 2)} |",
    ]
    for qrun, cold in zip(r["queued"], r["queued_cold"]):
        lines.append(
            f"| Queued run to first batch under 5 s ({qrun['label']}) | {qrun['seconds']:.2f} s on a worker "
            f"that is up, its standby process (imported ahead of need) ready; a new worker's is ready "
            f"{r['queued'][0]['worker_start'] + r['queued'][0]['standby_ready']:.1f} s after the worker is "
            f"started: {qrun['to_process_ready']:.2f} s until "
            f"the run's process has it (the worker polls every 1 s), then {qrun['startup_in_process']:.2f} s "
            f"to the first batch. Without the standby (TL_STANDBY=0) a new process imports torch, torchvision "
            f"and timm first: {cold['seconds']:.2f} s | {verdict(qrun['seconds'] < 5)} |"
        )
    mem = r["memory"]
    bk = r["bookkeeping"]
    lines += [
        f"| Peak memory of a CPU feature-extraction run on {mem['images']:,} images at {SIZE} px < 2 GB | "
        f"{mem['peak_sampled_mb']} MB resident at most (sampled every 0.1 s; cold caches, {mem['seconds']:.0f} s): "
        f"anonymous memory (tensors, arrays, heap) peaked at {mem['peak_anon_mb']} MB, file-backed pages (shared "
        f"libraries, the memory-mapped caches) at {mem['peak_file_mb']} MB. (The run's own `peak_memory_mb`, "
        f"ru_maxrss, says {mem['peak_memory_mb']:.0f} MB: started from this bench, it inherits the forking "
        f"parent's size) | {verdict(mem['peak_sampled_mb'] < 2048)} |",
        f"| Writing one epoch's metrics < 1% of the epoch | the training loop hands them to a background writer "
        f"(store.EpochWriter) in {bk['handover_ms'] * 1000:.0f} µs (median of 30): "
        f"{bk['handover_ms'] / 1000 / fe['tl_epoch_seconds']:.2%} of the shortest epoch here (cached features, "
        f"{fe['images']:,} images, {fe['tl_epoch_seconds']:.2f} s). The write itself, {bk['log_epoch_ms']:.1f} ms of "
        f"SQLite on that thread (median of 30, on the generated database), would be "
        f"{bk['log_epoch_ms'] / 1000 / fe['tl_epoch_seconds']:.1%} of it and "
        f"{bk['log_epoch_ms'] / 1000 / ft['tl_epoch_seconds']:.2%} of a fine-tuning epoch's training "
        f"({ft['tl_epoch_seconds']:.0f} s) | "
        f"{verdict(bk['handover_ms'] / 1000 < 0.01 * fe['tl_epoch_seconds'])} |",
        f"| The Runs page's refresh does not reload every metric row | {bk['runs_refresh_ms']:.0f} ms for "
        f"{bk['runs']} runs; {bk['runs_refresh_metric_queries']} queries touch the metric tables | "
        f"{verdict(bk['runs_refresh_metric_queries'] == 0)} |",
        f"| Loading the Compare page's data, {bk['runs']} runs x {bk['epochs']} epochs, < 300 ms | "
        f"{bk['compare_ms']:.0f} ms (median of 3; {bk['rows']:,} metric values) | {verdict(bk['compare_ms'] < 300)} |",
        "",
    ]
    lines += _details(r)
    path.write_text("\n".join(lines) + "\n" + (f"\n{gpu}\n" if gpu else ""))


def _details(r: dict) -> list[str]:
    fe, aug, ft, lim = r["fe"], r["aug"], r["full"], r["limit"]
    fc = fe["tl"]["summary"]["feature_cache"]
    lines = [
        "## How the time is spent",
        "",
        f"Feature extraction, no augmentation ({fe['images']:,} images, {fe['epochs']} epochs, caches cold):",
        "",
        "| | seconds | best val acc | final val acc | CPU taken by other processes meanwhile |",
        "|---|---|---|---|---|",
        f"| reference loop | {fe['ref']['seconds']:.1f} | {fe['ref']['best_val_acc']:.1%} | {fe['ref']['val_acc'][-1]:.1%} "
        f"| {fe['ref']['others']:.0%} |",
        f"| TransferLab (frozen features in bf16, cached) | {fe['tl']['seconds']:.1f} | {fe['tl']['best_val_acc']:.1%} | "
        f"{fe['tl']['final_val_acc']:.1%} | {fe['tl']['others']:.0%} |",
        f"| TransferLab, features computed in fp32 | {fe['tl_fp32']['seconds']:.1f} | "
        f"{fe['tl_fp32']['best_val_acc']:.1%} | {fe['tl_fp32']['final_val_acc']:.1%} | {fe['tl_fp32']['others']:.0%} |",
        f"| TransferLab, second run (cache hit, MLP head, seed 1) | {r['second_small']['seconds']:.1f} | "
        f"{r['second_small']['best_val_acc']:.1%} | {r['second_small']['final_val_acc']:.1%} | "
        f"{r['second_small']['others']:.0%} |",
        "",
        f"In TransferLab's cold run, computing the frozen features (decoding each image once on the way) took "
        f"{fe['tl_phase_seconds']:.1f} s; each epoch after it {fe['tl_epoch_seconds']:.2f} s (training the head on "
        f"cached features, validation, metrics, checkpoints). The reference spends about "
        f"{fe['ref']['seconds'] / fe['epochs']:.0f} s on every epoch. Its frozen BatchNorm statistics drift under "
        f"`model.train()`: its best val accuracy ends "
        f"{(fe['tl_fp32']['best_val_acc'] - fe['ref']['best_val_acc']) * 100:.1f} points below TransferLab's with the "
        f"same fp32 features (frozen BatchNorm in eval mode). Computing the "
        f"frozen features in bf16 (native on this CPU: AVX512-BF16) changes TransferLab's accuracy by "
        f"{fe['tl']['best_val_acc'] - fe['tl_fp32']['best_val_acc']:+.1%} and its time by "
        f"{fe['tl']['seconds'] / fe['tl_fp32']['seconds']:.2f}x; the run records the precision "
        f"(`summary.feature_cache`: {json.dumps({k: fc[k] for k in ('used', 'boundary', 'views', 'hit', 'precision')})}).",
        "",
        f"Light augmentation: TransferLab caches {aug['views']} augmented views of every training image "
        f"(and one plain view of every validation image) and samples one view per image each epoch; "
        f"the reference augments every image afresh every epoch. TransferLab {aug['tl']['seconds']:.1f} s "
        f"(computing the views: {aug['tl']['summary']['feature_cache']['seconds']:.1f} s), reference "
        f"{aug['ref']['seconds']:.1f} s ({aug['images']:,} images, {aug['epochs']} epochs; other processes took "
        f"{aug['tl']['others']:.0%} and {aug['ref']['others']:.0%} of the CPU meanwhile).",
        "",
        "Full fine-tuning (every layer trains; no frozen features to cache), steady-state training throughput:",
        "",
        "| | img/s |",
        "|---|---|",
        f"| compute limit: forward+backward on tensors in memory, fp32 NCHW | {lim['train step nchw fp32']:.0f} |",
        f"| compute limit: the same, channels_last (TransferLab's layout) | {lim['train step channels_last fp32']:.0f} |",
        f"| compute limit: TransferLab's own step (channels_last, its param groups), before, between and after "
        f"its epochs | {', '.join(f'{x:.0f}' for x in ft['limits'])} |",
        f"| TransferLab, epochs 2-{len(ft['epoch_ips'])} (decode cache warm; epoch 1 decodes as it goes: "
        f"{ft['tl_first_ips']:.0f} img/s) | {', '.join(f'{x:.0f}' for x in ft['epoch_ips'][1:])} |",
        f"| reference loop (PIL decode + transforms every epoch, NCHW) | {ft['ref_ips']:.0f} |",
    ]
    if r.get("compiled"):
        c = r["compiled"]
        lines.append(
            f"| `torch.compile` (`--compile on`) training step on tensors in memory, channels_last, after "
            f"{c['compile_seconds']:.0f} s of compiling | {c['images_per_sec']:.0f} |"
        )
    lines += [
        "",
        "The compute limit, forward only (eval mode, tensors in memory):",
        "",
        "| layout | fp32 img/s | bf16 img/s |",
        "|---|---|---|",
        f"| NCHW | {lim['forward nchw fp32']:.0f} | {lim['forward nchw bf16']:.0f} |",
        f"| channels_last | {lim['forward channels_last fp32']:.0f} | {lim['forward channels_last bf16']:.0f} |",
        "",
        "## How epoch time grows with images and image size",
        "",
        "Feature extraction with TransferLab, caches cold: the first epoch computes the features (its time "
        "grows with images x pixels), later epochs train the head on them (they grow with images only). "
        "Full fine-tuning: an epoch is images / throughput.",
        "",
        "| images | image size | FE first epoch (s) | FE later epoch (s) | full fine-tuning img/s | full FT epoch (s, est.) |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["scaling"]:
        lines.append(
            f"| {row['images']:,} | {row['size']} | {row['first']:.1f} | {row['later']:.2f} | "
            f"{row['ft_ips']:.0f} | {row['images'] * 0.8 / row['ft_ips']:.0f} |"
        )
    lines += ["", "## Settings of this run", "", "```", json.dumps(r["settings"], indent=1), "```"]
    return lines


# --- the bench ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small and short: checks the bench, not the targets")
    ap.add_argument(
        "--images", type=int, default=None, help="images in the side-by-side comparisons (default 2,000; --quick 600)"
    )
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the comparisons (default 10; --quick 3)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement (~2 min on CPU)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--work", default=None, help="folder for data, caches and databases (default: a temp folder)")
    args = ap.parse_args()
    quick = args.quick
    n_images = args.images or (600 if quick else 2000)
    epochs = args.epochs or (3 if quick else 10)
    big = 2000 if quick else 10_000
    work = Path(args.work or tempfile.mkdtemp(prefix="tl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["TL_RUNS_DIR"] = str(work / "runs")
    os.chdir(work)  # runs/, caches and databases all under it
    report: dict = {
        "machine": machine(),
        "quick": quick,
        "settings": {"images": n_images, "epochs": epochs, "big": big, "work": str(work)},
    }
    say = lambda *a: print(*a, flush=True)  # noqa: E731

    with CpuShare() as whole:
        say(f"data: writing the animal demo set ({big:,} and {n_images:,} images, {SIZE} px) under {work}")
        big_root = _dataset(work / "data-big", big)
        root = _dataset(work / f"data-{n_images}", n_images)
        train_paths, val_paths = _split(root)
        store = Store(f"sqlite:///{work / 'bench.db'}")

        say("compute limit: the model alone on tensors in memory")
        report["limit"] = lim = quietly(_limits, 4 if quick else 20)
        say("  " + ", ".join(f"{k} {v:.2f}" for k, v in lim.items()))

        # 1. Feature extraction, no augmentation.
        say(f"feature extraction, no augmentation, {n_images:,} images x {epochs} epochs")
        ref = quietly(reference, root, train_paths, val_paths, epochs=epochs)
        say(f"  reference {ref['seconds']:.1f} s, best val acc {ref['best_val_acc']:.3f}")
        tl = quietly(cold_run, store, work / "cache-fe", data=root, strategy="feature_extraction", epochs=epochs)
        tl32 = quietly(
            cold_run,
            store,
            work / "cache-fe32",
            data=root,
            strategy="feature_extraction",
            epochs=epochs,
            feature_precision="fp32",
        )
        second_small = quietly(
            tl_run,
            store,
            work / "cache-fe",
            data=root,
            strategy="feature_extraction",
            epochs=epochs,
            head="mlp",
            seed=1,
        )
        ep = tl["epochs"]
        report["fe"] = {
            "images": n_images,
            "epochs": epochs,
            "ref": ref,
            "tl": tl,
            "tl_fp32": tl32,
            "speedup": ref["seconds"] / tl["seconds"],
            "tl_phase_seconds": tl["summary"]["feature_cache"]["seconds"],
            "tl_epoch_seconds": _median([m["epoch_seconds"] for e, m in ep.items() if e]),
        }
        report["second_small"] = second_small
        say(
            f"  TransferLab {tl['seconds']:.1f} s (fp32 features {tl32['seconds']:.1f} s), best val acc "
            f"{tl['best_val_acc']:.3f}: {report['fe']['speedup']:.1f}x"
        )

        # 2. Feature extraction, light augmentation.
        say(f"feature extraction, light augmentation, {n_images:,} images x {epochs} epochs")
        ref = quietly(reference, root, train_paths, val_paths, epochs=epochs, augment="light")
        say(f"  reference {ref['seconds']:.1f} s, best val acc {ref['best_val_acc']:.3f}")
        tl = quietly(
            cold_run,
            store,
            work / "cache-aug",
            data=root,
            strategy="feature_extraction",
            epochs=epochs,
            augment="light",
        )
        report["aug"] = {
            "images": n_images,
            "epochs": epochs,
            "views": tl["summary"]["feature_cache"]["views"],
            "ref": ref,
            "tl": tl,
            "speedup": ref["seconds"] / tl["seconds"],
        }
        say(
            f"  TransferLab {tl['seconds']:.1f} s, best val acc {tl['best_val_acc']:.3f}: "
            f"{report['aug']['speedup']:.1f}x"
        )

        # 3. Full fine-tuning throughput.
        ft_images = 500 if quick else 2000
        ft_root = _dataset(work / f"data-{ft_images}", ft_images)
        ft_train, ft_val = _split(ft_root)
        say(f"full fine-tuning, {ft_images:,} images: TransferLab 4 epochs, reference 1 epoch")
        # Each epoch against the compute limit measured right before and right after it: TransferLab's
        # own training step on a batch in memory (about 5 s of steps).
        steps = 4 if quick else 16
        tl = quietly(bracketed_run, store, work / "cache-ft", steps, data=ft_root, strategy="full", epochs=4)
        ref = quietly(reference, ft_root, ft_train, ft_val, strategy="full", epochs=1, lr=1e-4)
        ep = tl["epochs"]
        steady = range(1, len(tl["ips"]))  # epoch 1 decodes each image as it goes
        report["full"] = {
            "tl_ips": _median([tl["ips"][e] for e in steady]),
            "tl_first_ips": tl["ips"][0],
            "ref_ips": ref["images_per_sec"],
            "epoch_ips": tl["ips"],
            "limits": tl["limits"],
            "ratios": tl["ratios"],
            "vs_limit": _median([tl["ratios"][e] for e in steady]),
            "limit_cl": _median(tl["limits"]),
            "limit_nchw": lim["train step nchw fp32"],
            # its training part (the epoch's own record also holds the limit measured in it)
            "tl_epoch_seconds": len(ft_train) / _median([tl["ips"][e] for e in steady]),
            "others": max(tl["others"], ref["others"]),
        }
        f = report["full"]
        f["vs_limit_nchw"] = f["tl_ips"] / f["limit_nchw"]
        f["vs_ref"] = f["tl_ips"] / f["ref_ips"]
        say(
            f"  TransferLab {f['tl_ips']:.0f} img/s, reference {f['ref_ips']:.0f}, limit {f['limit_cl']:.0f} "
            f"(channels_last) / {f['limit_nchw']:.0f} (NCHW)"
        )
        if not args.no_compile and not quick:
            say("torch.compile of the training step (CPU inductor)")
            wait_until_quiet()
            report["compiled"] = compiled_step(10)
            say(f"  {report['compiled']}")

        # 4. Memory and a second run, on the big set.
        say(f"peak memory: cold feature extraction on {big:,} images in a fresh process")
        wait_until_quiet()
        report["memory"] = memory_run(big_root, work / "cache-big", work / "memory.db", epochs)
        say(f"  {report['memory']}")
        wait_until_quiet()
        second = tl_run(
            store,
            work / "cache-big",
            data=big_root,
            strategy="feature_extraction",
            epochs=2,
            head="mlp",
            seed=1,
            lr=3e-3,
        )
        report["second"] = second
        say(f"  second run on {big:,} images: first batch {second['to_first_batch']:.2f} s after the call")

        # 5. Queued run -> first batch, through a worker.
        say("queued run to first batch, through a worker")
        wait_until_quiet()
        queue_runs = [
            {"data": big_root, "strategy": "feature_extraction", "epochs": 5, "image_size": SIZE, "seed": 2},
            {"data": big_root, "strategy": "full", "epochs": 5, "image_size": 88},
        ]
        labels = [
            f"feature extraction, {big:,} images, features cached",
            f"full fine-tuning, {big:,} images, decode cache cold (decodes as it trains)",
        ]
        queued = queued_to_first_batch(work / "queue.db", work / "cache-big", queue_runs)
        queue_runs[1]["image_size"] = 80  # a decode cache of its own: cold again
        cold = queued_to_first_batch(work / "queue-cold.db", work / "cache-big", queue_runs, standby=False)
        for q, c, label in zip(queued, cold, labels):
            q["label"] = c["label"] = label
        report["queued"], report["queued_cold"] = queued, cold
        say(
            f"  {[(q['label'], round(q['seconds'], 2)) for q in queued]}; without the standby: "
            f"{[round(c['seconds'], 2) for c in cold]}"
        )

        # 6. Scaling.
        say("scaling: epoch time against images and image size")
        wait_until_quiet()
        report["scaling"] = scaling(work, store, quick)

        # 7. Bookkeeping.
        say("bookkeeping: metric writes, the Runs and Compare pages' reads on a generated database")
        wait_until_quiet()
        report["bookkeeping"] = bookkeeping.measure(work / "big.db", runs=100 if quick else 500, epochs=100)
        say(f"  {report['bookkeeping']}")
        store.close()
    report["others"] = whole.others
    write_report(Path(args.out), report)
    (work / "benchmarks.json").write_text(json.dumps(report, indent=1, default=str))
    say(f"wrote {args.out} (and every number in {work / 'benchmarks.json'})")
    return 0


def scaling(work: Path, store: Store, quick: bool) -> list[dict]:
    rows = []
    sizes = (64, 96) if quick else (64, 96, 128)
    counts = (200, 400) if quick else (1000, 2000, 4000)
    for n in counts:
        root = _dataset(work / f"data-{n}", n)
        for size in sizes:
            tl = tl_run(
                store,
                work / f"cache-scale-{n}-{size}",
                data=root,
                strategy="feature_extraction",
                epochs=2,
                image_size=size,
            )
            rows.append(
                {
                    "images": n,
                    "size": size,
                    "first": tl["epochs"][0]["epoch_seconds"],
                    "later": tl["epochs"][1]["epoch_seconds"],
                }
            )
    ft_root = _dataset(work / "data-500", 500)
    ips = {}
    for size in sizes:
        tl = tl_run(
            store,
            work / f"cache-scale-ft-{size}",
            data=ft_root,
            strategy="full",
            epochs=2,
            image_size=size,
            train_fraction=0.5,
        )
        ips[size] = tl["epochs"][1]["images_per_sec"]
    for row in rows:
        row["ft_ips"] = ips[row["size"]]
    return rows


def _dataset(folder: Path, n: int) -> str:
    if not (folder / "animals").is_dir():
        write_demo_data(folder, datasets=("animals",), per_class=n // 10, size=SIZE)
    return str(folder / "animals")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
