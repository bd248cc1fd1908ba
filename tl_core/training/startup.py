"""A run's start-up, before its first batch: the device it trains on (`pick_device`) and what it is
(`environment`), its precision (`amp_for`), on a GPU cuDNN's mode (`cudnn_benchmark`) and whether
the run fits (`ready_gpu`), CUDA started ahead of a run (`warm_cuda`), and what start-up cost,
step by step (`StartupClock`).
"""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import version

import torch
from torch import nn

from ..config import RunConfig
from ..errors import UserError
from . import gpu_memory
from .finetuning import Finetuning
from .run_data import CHANNELS_LAST, RunData


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible; use --device auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "timm": version("timm"),
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def amp_for(device: torch.device):
    """Autocast dtype and grad scaler: bf16 where the GPU has it, fp16 + scaling otherwise, none on CPU."""
    if device.type != "cuda":
        return None, torch.amp.GradScaler("cpu", enabled=False)
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, torch.amp.GradScaler("cuda", enabled=False)
    return torch.float16, torch.amp.GradScaler("cuda")


# cuDNN's search (cudnn.benchmark) costs seconds per new input shape and buys little for these
# models: measured on an H100 (BENCHMARKS.md), EfficientNet-Lite0's steady step 1.01x faster with
# it, its first step 16 s slower and each new shape 9 s slower. That pays back only after about
# 100,000 steps of ~30 ms; "auto" turns it on from there.
BENCHMARK_MIN_STEPS = 100_000


def cudnn_benchmark(cfg: RunConfig, steps: int) -> tuple[bool, str]:
    """(cudnn.benchmark on?, why) for a run of `steps` training steps."""
    if cfg.cudnn_benchmark != "auto":
        return cfg.cudnn_benchmark == "on", f"{cfg.cudnn_benchmark} (--cudnn-benchmark)"
    on = steps >= BENCHMARK_MIN_STEPS
    return on, (
        f"{'on' if on else 'off'} (auto: {steps:,} training steps, {'at least' if on else 'under'} the "
        f"{BENCHMARK_MIN_STEPS:,} its search pays back in)"
    )


def ready_gpu(
    cfg: RunConfig,
    model: nn.Module,
    plan: Finetuning,
    d: RunData,
    loss_fn: nn.Module,
    amp: torch.dtype | None,
    device: torch.device,
) -> dict:
    """On a GPU, before the frozen features are computed: cuDNN's mode for this run, and one probe step
    at the widest the strategy will train (gpu_memory.probe_step). A run that would not fit is
    refused here, with a batch size that would. Returns what the run's summary records of both."""
    torch.backends.cudnn.benchmark, why = cudnn_benchmark(cfg, cfg.epochs * len(d.train))
    probe = gpu_memory.probe_step(
        model,
        plan.groups,
        plan.widest(),
        (d.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size),
        loss_fn,
        amp,
        cfg.optimizer,
        device,
        CHANNELS_LAST,
        forwards=2 if cfg.adapt != "none" else 1,
        trains=plan.strategy.trains,
    )
    if not probe.fits():
        raise UserError(probe.advice(torch.cuda.get_device_name(device)))
    return {"cudnn_benchmark": why, "gpu_memory": probe.summary()}


class StartupClock:
    """What a run's start-up cost, and where it went: `mark` after each step, `summary` once the
    first epoch is about to train. A resumed run counts its own start-up, not the time before its stop."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._last = self.started
        self.steps: dict[str, float] = {}

    def mark(self, step: str) -> None:
        """`step` ended now: the seconds since the previous mark are its."""
        now = time.perf_counter()
        self.steps[step], self._last = round(now - self._last, 3), now

    def summary(self, last_step: str) -> dict:
        """What the run's summary records, with `last_step` the one ending now: start-up's seconds,
        the time of the first batch, and each step's seconds."""
        self.mark(last_step)
        return {
            "startup_seconds": round(self._last - self.started, 3),
            "first_batch_at": time.time(),
            "startup": dict(self.steps),
        }


def warm_cuda(visible_gpus: int) -> bool:
    """Start CUDA ahead of a run, in the worker's standby process, where this process sees one GPU
    (`visible_gpus`, the driver's count, which the standby reads without asking CUDA; with several,
    the standby waits to be told its GPU: CUDA, once started, could not change it):
    the context, cuBLAS's and cuDNN's handles and the kernels of a small bf16 convolution step, the
    start-up the run's first batch then does not pay. Returns whether it did."""
    if visible_gpus != 1 or not torch.cuda.is_available():
        return False
    device = torch.device("cuda")
    amp, _ = amp_for(device)
    # Module.to takes memory_format beside a device; torch's stubs have no such overload.
    conv = nn.Conv2d(3, 8, 3).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(4, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=amp):
        loss = conv(x).float().mean() + (x.flatten(1) @ x.flatten(1).T).float().mean()
    loss.backward()
    torch.cuda.synchronize(device)
    del conv, x, loss
    torch.cuda.empty_cache()
    return True
