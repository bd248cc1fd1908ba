"""Placement: which GPU a run (or a page's job) trains on, so that small runs share one.

A feature-extraction head or a small backbone uses a few GiB of an 80 GiB GPU: one run per GPU
leaves most of it idle. Unless TL_MAX_CONCURRENT fixes the number of runs, the worker packs runs
onto its GPUs by memory, measured through NVML (`gpus`: nvidia-ml-py's `pynvml`, the library
nvidia-smi itself reads; torch-free: the worker never initialises CUDA) and expected from what
finished runs of the same kind used (`peaks`, `kind`). `place` holds the rule; the worker gives
the chosen GPU to the run's process alone (settings.gpu_environment), where it is that process's
cuda:0. A page's jobs (an LR range test, a probe, a prediction, an export: service/jobs.py) are
placed by the same rule, with their own need (`job_need`).

The devices are CUDA's: a whole GPU, named to CUDA_VISIBLE_DEVICES by its index (NVML's, which is
nvidia-smi's: PCI bus order, which the processes the worker starts are told to count in), or, on a
GPU in MIG mode, each of its MIG devices, named by its MIG UUID (a CUDA process enumerates one MIG
device, so each is a GPU of its own here, with its own memory). Without an NVIDIA driver (NVML
cannot start) there are none: runs train on the CPU.

A run *settles* once it has recorded its first epoch: by then its peak is in the memory NVML
reports (even a strategy that unfreezes more later: its probe step, training/gpu_memory.py, has run the widest
phase at start, and PyTorch's allocator keeps what that took; the optimizer's state for groups
unfrozen later is what TL_GPU_MARGIN_MB is also for). Until then its GPU takes no other run, or
two runs starting together could each see the other's memory as free. A job counts as settling
until it ends (it lasts seconds to a minute). Runs placed by other workers of the same host count
through the measured memory only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pynvml

from .. import settings
from ..config import default
from ..store import Store

# The settings that decide how much GPU memory a run takes: runs equal in these are of one kind.
MEMORY_FIELDS = (
    "backbone",
    "image_size",
    "batch_size",
    "strategy",
    "in_channels",
    "accumulate",
    "checkpointing",
    "compile",
    "regularizer",
    "adapt",
)
# A probe, a prediction or an export never measured: a forward pass without gradients (a model's
# weights, one batch's activations at a time, cuDNN's workspace), well under this for the models
# offered; TL_GPU_MARGIN_MB comes on top, as for a run. Once one job of its kind has ended, its
# measured peak replaces this.
SMALL_JOB_MB = 1024.0
MiB = 2**20


@dataclass(frozen=True)
class GPU:
    id: str  # what CUDA_VISIBLE_DEVICES names it by, alone: its index ("1"), or a MIG device's UUID
    total_mb: float
    used_mb: float  # by every process on it, ours and others'

    @property
    def free_mb(self) -> float:
        return self.total_mb - self.used_mb


@dataclass(frozen=True)
class _Device:
    """A device CUDA can be given, as NVML lists it."""

    id: str  # as GPU.id
    uuid: str  # GPU-… for a whole GPU, MIG-… for a MIG device
    gpu: int  # the index of its GPU (itself, for a whole GPU)
    gpu_uuid: str
    memory: tuple[float, float] | None  # total and used MiB; None where NVML cannot say


_nvml_started = False  # NVML is started once per process and left running (starting it can take a second)


def _nvml() -> bool:
    """Whether NVML is up (started now if not): False without an NVIDIA driver or its library."""
    global _nvml_started
    if not _nvml_started:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:  # no libnvidia-ml (a CPU machine, a container without --gpus), no driver
            return False
        _nvml_started = True
    return True


def _memory(handle) -> tuple[float, float] | None:
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except pynvml.NVMLError:
        return None
    return info.total / MiB, info.used / MiB


def _mig_devices(handle) -> list | None:
    """The MIG devices of a GPU in MIG mode (those made: a slot may be empty); None when it is not in MIG mode."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:  # not supported: a GPU without MIG
        return None
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return None
    found = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            found.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
        except pynvml.NVMLError:  # NotFound: no MIG device in this slot
            continue
    return found


def _devices() -> list[_Device]:
    """Every device CUDA could be given on this machine (whole GPUs and MIG devices), in NVML's order;
    [] without a driver, or if NVML fails on the way (a GPU fallen off the bus: nothing is placed
    on a list that may be wrong)."""
    if not _nvml():
        return []
    found: list[_Device] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            migs = _mig_devices(handle)
            if migs is None:
                found.append(_Device(str(index), uuid, index, uuid, _memory(handle)))
                continue
            for mig in migs:
                mig_uuid = pynvml.nvmlDeviceGetUUID(mig)
                found.append(_Device(mig_uuid, mig_uuid, index, uuid, _memory(mig)))
    except pynvml.NVMLError:
        return []
    return found


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


def _named(entry: str, devices: Sequence[_Device]) -> list[_Device]:
    """The devices one CUDA_VISIBLE_DEVICES entry names: an index or a GPU UUID (or a prefix that
    names one GPU, as CUDA accepts) names a GPU, or all its MIG devices in MIG mode; a MIG UUID (or
    prefix) one MIG device. [] for an entry that names nothing, or more than one GPU."""
    if entry.isdigit():
        return [d for d in devices if d.gpu == int(entry)]
    if entry.startswith("MIG-GPU-"):  # the format of drivers before R470 (MIG-GPU-<uuid>/<gi>/<ci>): not read
        return []
    if entry.startswith("MIG-"):
        found = [d for d in devices if d.uuid.startswith(entry) and d.uuid != d.gpu_uuid]
        return found if len(found) == 1 else []
    found = [d for d in devices if d.gpu_uuid.startswith(entry)]
    return found if len({d.gpu for d in found}) == 1 else []


def _visible_devices() -> list[_Device]:
    """The devices CUDA would see, in CUDA_VISIBLE_DEVICES's order (CUDA stops at the first entry
    that names no device)."""
    devices = _devices()
    visible = _visible(settings.current().cuda_visible_devices)
    if visible is None:
        return devices
    chosen: list[_Device] = []
    for entry in visible:
        named = _named(entry, devices)
        if not named:
            break
        chosen += [d for d in named if d not in chosen]
    return chosen


def gpu_count() -> int:
    """The GPUs CUDA would see (a MIG device counts as one), narrowed by CUDA_VISIBLE_DEVICES, without
    initialising CUDA (or importing torch): 0 without an NVIDIA driver."""
    return len(_visible_devices())


def gpus() -> list[GPU]:
    """Each GPU CUDA would see, with its memory now (MiB), in CUDA_VISIBLE_DEVICES's order (entries
    by index, GPU UUID or MIG UUID; an index counts as nvidia-smi counts); [] without a driver. A
    device whose memory NVML cannot read is left out (nothing is placed on it)."""
    return [GPU(d.id, *d.memory) for d in _visible_devices() if d.memory is not None]


def kind(config: Mapping) -> tuple:
    """What sets a run's memory, from its stored config (a field it predates: at its default)."""
    return tuple(config.get(name, default(name)) for name in MEMORY_FIELDS)


def peaks(store: Store) -> dict[tuple, float]:
    """The GPU memory (MiB, PyTorch's allocations) each kind of run took, from the completed runs
    that recorded it: summary.gpu_memory's training peak (`peak_mb`) or, where larger, what its
    probe step predicted (`predicted_mb`, training/gpu_memory.py): the probe's blocks stay in the allocator's
    cache, so NVML counts them for the whole run, even where training peaks lower (a head on
    cached features). The largest where runs of a kind differ (their datasets do)."""
    found: dict[tuple, float] = {}
    for run in store.list_runs(statuses=["completed"]):
        measured = run.summary.gpu_memory
        if measured is None:  # a CPU run, or one from before runs recorded it
            continue
        numbers = [v for v in (measured.peak_mb, measured.predicted_mb) if v is not None and math.isfinite(v) and v > 0]
        if numbers:
            k = kind(run.config)
            found[k] = max(found.get(k, 0.0), *numbers)
    return found


def job_peaks(store: Store) -> dict[tuple, float]:
    """The GPU memory (MiB, what PyTorch's allocator reserved) each kind of job took: (command, the
    kind of its run's settings) -> the largest peak its completed jobs recorded (service/jobs.py)."""
    found: dict[tuple, float] = {}
    for job in store.jobs(statuses=["completed"]):
        if job.peak_mb is not None and math.isfinite(job.peak_mb) and job.peak_mb > 0:
            k = (job.command, kind(job.config))
            found[k] = max(found.get(k, 0.0), job.peak_mb)
    return found


def job_need(
    command: str, config: Mapping, run_peaks: Mapping[tuple, float], measured: Mapping[tuple, float]
) -> float | None:
    """What a job of `command` on a run's settings `config` needs (MiB): what jobs like it took
    (`job_peaks`), else for an LR range test what runs of its kind took (`peaks`: it trains the same
    model at the same batch size, under the same freezing; None, never measured, if none did), else
    SMALL_JOB_MB (a forward pass: a probe, a prediction, an export)."""
    if (found := measured.get((command, kind(config)))) is not None:
        return found
    if command == "lr-find":
        return run_peaks.get(kind(config))
    return SMALL_JOB_MB


def open_gpus(ids: Iterable[str], placed: Sequence[tuple[str, bool]], per_gpu: int) -> list[str]:
    """The GPUs that may take another run, whatever its need: none of their runs still settling,
    fewer than `per_gpu` runs on them. `placed`: (GPU, settled) of each run (or job) already placed."""
    runs = Counter(gpu for gpu, _ in placed)
    settling = {gpu for gpu, settled in placed if not settled}
    return [i for i in ids if i not in settling and runs[i] < per_gpu]


def place(
    gpus: Sequence[GPU],
    placed: Sequence[tuple[str, bool]],
    need_mb: float | None,
    config: settings.Settings | None = None,
) -> str | None:
    """The GPU the next run trains on, or None: it waits. `placed`: (GPU, settled) of each run
    already placed; `need_mb`: its kind's peak (`peaks`; a job's: `job_need`), None if never measured.

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
    candidates = set(open_gpus([g.id for g in gpus], placed, config.runs_per_gpu))

    def fits(gpu: GPU) -> bool:
        if not runs[gpu.id]:
            return True
        if need_mb is None:
            return gpu.free_mb >= config.gpu_unknown_share * gpu.total_mb
        return need_mb + config.gpu_margin_mb <= gpu.free_mb

    fitting = [g for g in gpus if g.id in candidates and fits(g)]
    return max(fitting, key=lambda g: g.free_mb).id if fitting else None
