"""Shared memory for DataLoader workers: what they hold in /dev/shm, fitted to what it has free.

A DataLoader worker hands each batch to the training process through shared memory: /dev/shm,
a tmpfs (torch's file_descriptor sharing strategy). Docker gives a container 64 MB of it unless
told otherwise (`docker run --shm-size`, compose's `shm_size`, or `--ipc=host`), and a GPU host's
defaults hold far more: 8 workers, 2 batches each, of 128 images at 224 px (uint8 from the decode
cache: 19 MB a batch) need about 330 MB. Three things keep a run from stalling on it:

  1. Before a loader starts, `fit` compares what its workers will hold (workers x prefetch_factor
     batches in flight, and the one being handed over) with /dev/shm's free space, and lowers
     prefetch_factor to 1, then the workers, until it fits. The run says so (its summary's
     `loader` and warnings, its log) and names --shm-size. Where not even one worker's batches
     fit, the run loads in its own process (0 workers: nothing goes through /dev/shm) rather than
     being refused: slower, never stuck.
  2. A worker moves each batch into shared memory itself (`share`), as torch's default_collate
     does. Should that fail anyway (other runs of the host took the space since the check), the
     error travels to the training process as the batch would have, and the run fails at once,
     resumable, with `explain`'s message. Without it the worker's queue feeder thread moves the
     tensor while pickling it; an error there is printed and the batch dropped
     (multiprocessing.Queue._on_queue_feeder_error), so the training process waits forever for a
     batch that never comes, with every worker alive: the stall seen with a 64 MB /dev/shm
     ("unable to allocate shared memory(shm) ... No space left on device", then nothing;
     pytorch/pytorch#1355 is the same hang).
  3. A worker that dies (killed, the kernel's OOM killer, a Bus error) is noticed by torch's
     SIGCHLD handler at once, and the run fails with `explain`'s message, resumable.
No DataLoader `timeout=`: it bounds every batch (a slow first epoch decoding large images would
trip it) and, once set, the loader looks at its workers' liveness only when it expires.

Pinned memory (pin_memory, on a GPU) is page-locked host memory, not /dev/shm: the pin thread
copies each batch out of shared memory as it arrives, freeing it, so the count above holds with
pinning too (its batches count against the container's memory limit instead).
Several runs of one host share /dev/shm: each fits itself to what is free when its loader starts,
and one that finds the space taken later fails fast (2.), never stalls.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

SHM = Path("/dev/shm")
PREFETCH = 2  # torch's default prefetch_factor
USABLE = 0.9  # of the free space: the rest for labels, semaphores and whatever else shares it
SHM_ADVICE = (
    "give the container more shared memory (docker run --shm-size=8g, or shm_size in "
    "docker-compose.yml) or lower --workers or --batch-size"
)


@dataclass(frozen=True)
class LoaderPlan:
    """The workers and prefetch a loader starts with, and what they were fitted to."""

    workers: int
    prefetch_factor: int
    asked: int  # the workers the run asked for (--workers, or the machine's default)
    batch_mb: float
    free_mb: float | None  # /dev/shm's free space; None where there is none to measure

    @property
    def lowered(self) -> bool:
        return self.workers < self.asked or (self.workers > 0 and self.prefetch_factor < PREFETCH)

    def loader_args(self) -> dict:
        """num_workers (and prefetch_factor, which torch takes only with workers) for a DataLoader."""
        return {"num_workers": self.workers, **({"prefetch_factor": self.prefetch_factor} if self.workers else {})}

    def note(self) -> str | None:
        """One line for the run's log and warnings when the loader was made smaller; else None."""
        if not self.lowered:
            return None
        batches = f"{self.prefetch_factor} batch{'es' * (self.prefetch_factor > 1)}"
        now = (
            f"{self.workers} DataLoader workers with {batches} in flight each"
            if self.workers
            else "no DataLoader workers (images loaded in the training process)"
        )
        return (
            f"{now} instead of {self.asked} with {PREFETCH}: /dev/shm has {self.free_mb:.0f} MB free and a batch "
            f"takes {self.batch_mb:.1f} MB there; to load with {self.asked}, {SHM_ADVICE}"
        )

    def summary(self) -> dict:
        """The run's summary["loader"]."""
        return {
            "workers": self.workers,
            "prefetch_factor": self.prefetch_factor if self.workers else None,
            "asked_workers": self.asked,
            "batch_mb": round(self.batch_mb, 2),
            "shm_free_mb": None if self.free_mb is None else round(self.free_mb, 1),
            **({"why": self.note()} if self.lowered else {}),
        }


def free_bytes() -> int | None:
    """Free space of /dev/shm; None where it does not exist (not Linux)."""
    usage = _usage()
    return None if usage is None else usage.free


def _usage():
    try:
        return shutil.disk_usage(SHM)
    except OSError:
        return None


def held_bytes(workers: int, prefetch: int, batch_bytes: int) -> int:
    """Shared memory a loader holds at most: each worker's batches in flight, and one being handed over."""
    return (workers * prefetch + 1) * batch_bytes if workers else 0


def fit(workers: int, batch_bytes: int, free: int | None = None) -> LoaderPlan:
    """`workers` with torch's prefetch, or fewer of either, so that their batches fit in /dev/shm's
    free space (`free`: measured when not given). Prefetch goes first (workers decode in parallel;
    prefetch only evens out their pace), down to no workers at all."""
    free = free_bytes() if free is None else free
    mb = batch_bytes / 2**20
    if free is None or workers == 0:
        return LoaderPlan(workers, PREFETCH, workers, mb, None if free is None else free / 2**20)
    room = free * USABLE
    for w, p in [(workers, PREFETCH), *((n, 1) for n in range(workers, 0, -1))]:
        if held_bytes(w, p, batch_bytes) <= room:
            return LoaderPlan(w, p, workers, mb, free / 2**20)
    return LoaderPlan(0, PREFETCH, workers, mb, free / 2**20)


def share(*tensors: torch.Tensor) -> None:
    """In a DataLoader worker: move `tensors` (a batch) into shared memory here, where a failure
    becomes the batch's error in the training process (2. above); elsewhere nothing."""
    if torch.utils.data.get_worker_info() is None:
        return
    for t in tensors:
        t.share_memory_()


def explain(e: BaseException) -> str | None:
    """What to tell a user whose run failed for want of shared memory or on a DataLoader worker
    that died; None for other errors (an exception raised in a worker reads as itself)."""
    text = str(e)
    if (
        "unable to allocate shared memory" in text
        or "out of shared memory" in text
        or ("shared memory" in text and "No space left" in text)
    ):
        what = "out of shared memory: a DataLoader worker could not hand over its batch"
    elif re.search(r"DataLoader worker \(pid", text):  # torch's word for a worker that exited or was killed
        what = (
            "a DataLoader worker died: the machine ran out of memory (the kernel's OOM killer) or of "
            "shared memory (a Bus error), or the worker was killed"
        )
    else:
        return None
    usage = _usage()
    where = (
        f"/dev/shm: {usage.free / 2**20:.0f} MB free of {usage.total / 2**20:.0f} MB now" if usage else "no /dev/shm"
    )
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), text)
    return f"{what} ({where}); {SHM_ADVICE}, then resume the run ({last})"
