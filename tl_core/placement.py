"""Placement: which GPU a run trains on, so that small runs share one.

A feature-extraction head or a small backbone uses a few GiB of an 80 GiB GPU: one run per GPU
leaves most of it idle. Unless TL_MAX_CONCURRENT fixes the number of runs, the worker packs runs
onto its GPUs by memory, measured with nvidia-smi (`gpus`, torch-free: the worker never
initialises CUDA) and expected from what finished runs of the same kind used (`peaks`, `kind`).
`place` holds the rule; the worker gives the chosen GPU to the run's process alone
(settings.gpu_environment), where it is that process's cuda:0.

A run *settles* once it has recorded its first epoch: by then its peak is in the memory
nvidia-smi reports (even a strategy that unfreezes more later: its probe step, memory.py, has run
the widest phase at start, and PyTorch's allocator keeps what that took; the optimizer's state for
groups unfrozen later is what TL_GPU_MARGIN_MB is also for). Until then its GPU takes no other
run, or two runs starting together could each see the other's memory as free. Runs placed by
other workers of the same host count through the measured memory only.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .config import default
from .store import Store

# The settings that decide how much GPU memory a run takes: runs equal in these are of one kind.
MEMORY_FIELDS = ("backbone", "image_size", "batch_size", "strategy", "in_channels", "accumulate", "checkpointing",
                 "compile", "regularizer", "adapt")


@dataclass(frozen=True)
class GPU:
    index: int  # as nvidia-smi numbers it (PCI bus order)
    total_mb: float
    used_mb: float  # by every process on it, ours and others'

    @property
    def free_mb(self) -> float:
        return self.total_mb - self.used_mb


def _visible(entries: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: its entries up to the first invalid one (or repeated
    one); None: all GPUs."""
    if entries is None:
        return None
    chosen: list[str] = []
    for entry in entries.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-") or entry in chosen:
            break
        chosen.append(entry)
    return chosen


def gpu_count() -> int:
    """The GPUs CUDA would see, without initialising CUDA (or importing torch): the NVIDIA driver's
    list (/proc/driver/nvidia/gpus, else `nvidia-smi -L`), narrowed by CUDA_VISIBLE_DEVICES."""
    driver = Path("/proc/driver/nvidia/gpus")
    if driver.is_dir():
        present = len(list(driver.iterdir()))
    elif shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        present = sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
    else:
        return 0
    visible = _visible(settings.current().cuda_visible_devices)
    return present if visible is None else min(present, len(visible))


def gpus() -> list[GPU]:
    """Each GPU CUDA would see, with its memory now (MiB), in CUDA_VISIBLE_DEVICES's order (entries
    by index or UUID; an index counts as nvidia-smi counts); [] without a GPU or nvidia-smi, or
    where nvidia-smi cannot say (a MIG slice: its memory is not in --query-gpu)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.total,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    found: list[tuple[str, GPU]] = []
    for line in out.stdout.splitlines():
        try:
            index, uuid, total, used = (f.strip() for f in line.split(","))
            found.append((uuid, GPU(int(index), float(total), float(used))))
        except ValueError:  # "[N/A]" memory, or not a GPU's line
            continue
    visible = _visible(settings.current().cuda_visible_devices)
    if visible is None:
        return [gpu for _, gpu in found]
    chosen = []
    for entry in visible:
        match = next((gpu for uuid, gpu in found if entry == str(gpu.index) or uuid.startswith(entry)), None)
        if match is None:  # CUDA stops at the first entry that names no GPU
            break
        chosen.append(match)
    return chosen


def kind(config: Mapping) -> tuple:
    """What sets a run's memory, from its stored config (a field it predates: at its default)."""
    return tuple(config.get(name, default(name)) for name in MEMORY_FIELDS)


def peaks(store: Store) -> dict[tuple, float]:
    """The GPU memory (MiB, PyTorch's allocations) each kind of run took, from the completed runs
    that recorded it: summary["gpu_memory"]'s training peak (`peak_mb`) or, where larger, what its
    probe step predicted (`predicted_mb`, memory.py): the probe's blocks stay in the allocator's
    cache, so nvidia-smi counts them for the whole run, even where training peaks lower (a head on
    cached features). The largest where runs of a kind differ (their datasets do)."""
    found: dict[tuple, float] = {}
    for run in store.list_runs(statuses=["completed"]):
        measured = run.summary.get("gpu_memory")
        if not isinstance(measured, dict):  # a CPU run, or one from before runs recorded it
            continue
        numbers = [v for v in (measured.get("peak_mb"), measured.get("predicted_mb"))
                   if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
        if numbers:
            k = kind(run.config)
            found[k] = max(found.get(k, 0.0), *numbers)
    return found


def open_gpus(indices: Iterable[int], placed: Sequence[tuple[int, bool]], per_gpu: int) -> list[int]:
    """The GPUs that may take another run, whatever its need: none of their runs still settling,
    fewer than `per_gpu` runs on them. `placed`: (GPU, settled) of each run already placed."""
    runs = Counter(gpu for gpu, _ in placed)
    settling = {gpu for gpu, settled in placed if not settled}
    return [i for i in indices if i not in settling and runs[i] < per_gpu]


def place(gpus: Sequence[GPU], placed: Sequence[tuple[int, bool]], need_mb: float | None,
          config: settings.Settings | None = None) -> int | None:
    """The GPU the next run trains on, or None: it waits. `placed`: (GPU, settled) of each run
    already placed; `need_mb`: its kind's peak (`peaks`), None if never measured.

    Of the open GPUs (`open_gpus`, at most TL_RUNS_PER_GPU runs each), the one with the most free
    memory where the run fits:
      - a GPU with none of our runs takes any run, as one run per GPU always did: a run never
        waits for memory no GPU of this host has free;
      - beside other runs, a known need must fit in the free memory less TL_GPU_MARGIN_MB (the
        CUDA context, cuDNN's workspaces and the allocator's slack, which the peak leaves out);
      - beside other runs, a run never measured needs TL_GPU_UNKNOWN_SHARE of the GPU free. A
        share, not a size: people size batches and images to the GPU they have, so what an
        unknown run may take grows with the GPU; half leaves room for most runs sized for that
        GPU, on an 80 GiB card and a 16 GiB one alike. Once one run of its kind completes, its
        peak is known and the next are packed by it.
    """
    config = config or settings.current()
    runs = Counter(gpu for gpu, _ in placed)
    candidates = set(open_gpus([g.index for g in gpus], placed, config.runs_per_gpu))

    def fits(gpu: GPU) -> bool:
        if not runs[gpu.index]:
            return True
        if need_mb is None:
            return gpu.free_mb >= config.gpu_unknown_share * gpu.total_mb
        return need_mb + config.gpu_margin_mb <= gpu.free_mb

    fitting = [g for g in gpus if g.index in candidates and fits(g)]
    return max(fitting, key=lambda g: g.free_mb).index if fitting else None
