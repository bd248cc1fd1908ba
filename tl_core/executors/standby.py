"""The standby: a training process the worker keeps ready ahead of need.

Starting a Python process that imports torch, torchvision and timm takes seconds, so the worker
(worker.py) keeps one such process ready (`python -m tl_core train-run --standby`) and hands the
next queued run to it. Two sides, one file:

- The worker's (`Standby`): one is started while no run of the worker is still starting up (they
  would compete for the CPU) and replaced once used. An unused standby is released after
  TL_STANDBY_IDLE_S without a run (its memory back) and made again once runs come; one that died
  unused is not made again for 30 s. TL_STANDBY=0 turns it off: every run then starts a fresh
  process. This side imports no torch: the worker never does.
- The standby process's own (`train_in_process`, what the CLI's `train-run` calls): it does its
  imports, starts CUDA where it sees one GPU, then waits on stdin for "<run id>", or "<run id>
  <gpu>" for a run placed on a GPU (placement.py). Where CUDA is not started yet, it pins that GPU
  (settings.pin_gpu) before anything asks CUDA for a device, so it sees that GPU alone as a fresh
  process would; then its output goes to the run's train.log, and it trains the run. An empty
  line (the worker stopped, or released it) ends it without a run. A process the worker starts
  for one run (no standby at hand) trains it at once, through the same function.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import settings
from ..logs import logger
from ..store.run_folders import run_folder
from ..store.store import Store
from .placement import gpu_count
from .processes import kill_group, start_child

if TYPE_CHECKING:
    from ..training.run import RunResult

log = logger(__name__)  # timed lines (logs.py): the worker's output; in the standby, its standby.log, then train.log

RETRY_S = 30.0  # after a standby that died unused, or would not take its run: none made before then


# --- the worker's side ----------------------------------------------------------------------


class Standby:
    """The worker's standby process: kept (`keep`), handed a run (`take`), released (`release`)."""

    def __init__(self, db_url: str, files: Path):
        self.db_url = db_url
        self.log_path = files / "standby.log"  # what it writes until it is handed a run
        self.proc: subprocess.Popen | None = None  # a training process, imported and waiting for a run id
        self.started_at = 0.0
        self.retry_at = 0.0  # after a standby that died unused: not before then

    def keep(self, idle: bool, busy_at: float, runs_started: Callable[[], bool]) -> None:
        """Start a standby if there is none and every run of the worker has started (`runs_started`);
        release it after TL_STANDBY_IDLE_S without a run (`idle`: the worker has none, since `busy_at`)."""
        config = settings.current()
        if not config.standby:
            return
        now = time.monotonic()
        if self.proc is not None:
            if self.proc.poll() is None:
                if idle and now - max(busy_at, self.started_at) >= config.standby_idle_s:
                    log.info(
                        f"standby {self.proc.pid} released after {config.standby_idle_s:g} s without a run; "
                        f"another is made when runs come"
                    )
                    self.release()
                return
            log.warning(f"the standby process exited unused ({self.proc.returncode}); see {self.log_path}")
            self.proc, self.retry_at = None, time.monotonic() + RETRY_S
            return
        if (idle and now - busy_at >= config.standby_idle_s) or now < self.retry_at:
            return  # idle: none until runs come
        if runs_started():
            self.proc = start_child(
                ["train-run", "--standby", "--db", self.db_url], self.log_path, stdin=subprocess.PIPE
            )
            self.started_at = now

    def take(self, run_id: int, gpu: str | None) -> subprocess.Popen | None:
        """Give run_id to the standby process ("<run id> <gpu>" when placed: it has not initialised
        CUDA, so it can still be given that GPU alone); None if there is none alive to take it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        assert proc.stdin is not None  # started with stdin=PIPE
        try:
            if proc.poll() is not None:
                raise OSError(f"exited with {proc.returncode}")
            proc.stdin.write((f"{run_id}\n" if gpu is None else f"{run_id} {gpu}\n").encode())
            proc.stdin.close()
            return proc
        except OSError as e:
            log.warning(f"the standby process is gone ({e}); starting run {run_id} in a new process")
            self.retry_at = time.monotonic() + RETRY_S
            proc.kill()
            return None

    def release(self) -> None:
        """Stop the standby, if there is one (the worker stops, or has had no run for a while)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None  # started with stdin=PIPE
        with contextlib.suppress(OSError):
            proc.stdin.close()  # no run for it: it exits by itself; a signal makes sure
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_group(proc.pid)


# --- the training process's side ------------------------------------------------------------


def train_in_process(store: Store, run_id: int | None) -> RunResult | None:
    """Train run `run_id` in this process, or (None) be the standby: wait for the run
    (`wait_for_run`), then train it. None: the worker stopped without handing one over."""
    # torch, torchvision and timm: imported in the training process only (the worker imports this
    # module for `Standby`, and never torch); the seconds a standby saves.
    from ..training.run import train_run  # torch: see above

    if run_id is None and (run_id := wait_for_run(store)) is None:
        return None
    if (visible := settings.current().cuda_visible_devices) is not None:
        log.info(f"run {run_id}: the GPUs it may use are CUDA_VISIBLE_DEVICES={visible}")
    return train_run(store, run_id, progress=False)


def wait_for_run(store: Store) -> int | None:
    """In the standby: import everything and start CUDA where it can (warm_cuda), read the run (and
    its GPU) from stdin, pin that GPU, and write the run's train.log from then on. The run's id, or
    None when the worker closed stdin without one."""
    import timm  # noqa: F401  (models are built by timm: imported here, not after the run is handed over)

    from ..training.startup import warm_cuda  # torch: in the standby process only, never the worker's

    warmed = warm_cuda(gpu_count())  # on its one GPU: CUDA started before the run comes
    log.info(f"standby {os.getpid()}: imports done, waiting for a run")
    line = sys.stdin.readline().split()  # "<run id>", or "<run id> <gpu>" for a run placed on a GPU
    if not line:  # the worker stopped without a run for us
        return None
    run_id = int(line[0])
    if len(line) > 1 and not warmed:  # nothing here has asked CUDA for a device yet: it still reads which
        settings.pin_gpu(line[1])
    train_log = run_folder(store.get_run(run_id)) / "train.log"
    train_log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    with open(train_log, "ab") as f:  # from here on, this process writes the run's log
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    return run_id
