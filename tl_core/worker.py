"""The worker: takes queued runs from the database and trains each in a process of its own.

It is detached from the browser: closing the tab or restarting Streamlit stops nothing.
At most TL_MAX_CONCURRENT runs train at once (default: one per GPU, one on a CPU machine).
Each run's process is started without a shell and records its own pid in the run; if the
worker dies, the kernel stops its runs too (PR_SET_PDEATHSIG), and a worker that starts again
marks runs left `running` by a dead process as failed.

Starting a Python process that imports torch, torchvision and timm takes seconds, so the worker
keeps one such process ready ahead of need (a standby: `train-run --standby`, which has done
its imports and waits for a run id on stdin) and hands the next queued run to it. It is started
while no run of this worker is still starting up (they would compete for the CPU) and replaced
once used. TL_STANDBY=0 turns it off: every run then starts a fresh process.

The worker imports no torch (nor anything that does): starting and supervising processes needs
the database and the settings only, and it counts GPUs from the driver, not through CUDA.

A worker serves one database. Its files (pid, log, the standby's log) sit in a folder named
by that database's instance id (runfiles.py), so several databases can share a runs folder,
each with its own worker, and a dashboard only ever finds the worker of its own database.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .runfiles import run_folder, worker_folder
from .store import Run, Store

PROCESS_LOST = "process lost: its training process stopped without recording an end"


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
    visible = settings.current().cuda_visible_devices
    if visible is None:
        return present
    chosen = []
    for device in visible.split(","):  # CUDA stops at the first invalid entry
        device = device.strip()
        if not device or device.startswith("-"):
            break
        chosen.append(device)
    return min(present, len(chosen))


def max_concurrent() -> int:
    """Runs at once: TL_MAX_CONCURRENT, else one per GPU, one on a CPU machine."""
    return settings.current().max_concurrent or max(1, gpu_count())


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: stop this run if the worker dies


@dataclass
class Child:
    run: Run
    proc: subprocess.Popen
    started: bool = False  # its process has done its imports and started the run


class Worker:
    def __init__(self, db_url: str, concurrency: int | None = None, poll_seconds: float = 1.0):
        self.db_url = db_url
        self.store = Store(db_url)
        self.files = worker_folder(self.store.instance_id)
        self.concurrency = concurrency or max_concurrent()
        self.poll_seconds = poll_seconds
        self.children: dict[int, Child] = {}
        self.host = socket.gethostname()
        self.stopping = False
        self.standby: subprocess.Popen | None = None  # a training process, imported and waiting for a run id
        self.standby_retry_at = 0.0  # after a standby that died unused: not before then

    def recover(self) -> list[int]:
        """Mark runs whose process is gone as failed (left over from a dead worker or run)."""
        lost = []
        for run in self.store.list_runs(statuses=["running"]):
            if run.id in self.children or (run.host not in (None, self.host)):
                continue
            owner_alive = pid_alive(run.pid) or (run.pid is None and pid_alive(run.worker_pid)
                                                 and run.worker_pid != os.getpid())
            if not owner_alive:
                self.store.finish_run(run.id, "failed", error=PROCESS_LOST + " (resumable from its last checkpoint)")
                lost.append(run.id)
        return lost

    def _start(self, run: Run | None) -> subprocess.Popen:
        """The training process of `run`, or (None) a standby that waits for a run id on stdin;
        either is stopped by the kernel if this worker dies."""
        if run is None:
            args, log_path, stdin = ["--standby"], self.files / "standby.log", subprocess.PIPE
        else:
            args, log_path, stdin = [str(run.id)], run_folder(run) / "train.log", subprocess.DEVNULL
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "tl_core", "train-run", *args, "--db", self.db_url],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=stdin,
                                    preexec_fn=_die_with_parent, cwd=os.getcwd())

    def _hand_to_standby(self, run_id: int) -> subprocess.Popen | None:
        """Give run_id to the standby process; None if there is none alive to take it."""
        proc, self.standby = self.standby, None
        if proc is None:
            return None
        try:
            if proc.poll() is not None:
                raise OSError(f"exited with {proc.returncode}")
            proc.stdin.write(f"{run_id}\n".encode())
            proc.stdin.close()
            return proc
        except OSError as e:
            print(f"worker: the standby process is gone ({e}); starting run {run_id} in a new process", flush=True)
            self.standby_retry_at = time.monotonic() + 30
            proc.kill()
            return None

    def _keep_standby(self) -> None:
        """Start a standby process if there is none and no run of ours is still starting."""
        if self.stopping or not settings.current().standby or time.monotonic() < self.standby_retry_at:
            return
        if self.standby is not None:
            if self.standby.poll() is None:
                return
            print(f"worker: the standby process exited unused ({self.standby.returncode}); see "
                  f"{self.files / 'standby.log'}", flush=True)
            self.standby, self.standby_retry_at = None, time.monotonic() + 30
            return
        for child in self.children.values():
            if not child.started:
                child.started = self.store.get_run(child.run.id).started_at is not None
            if not child.started:
                return
        self.standby = self._start(None)

    def launch(self, run: Run) -> None:
        proc = self._hand_to_standby(run.id) or self._start(run)
        self.store.update_run(run.id, pid=proc.pid, host=self.host)
        self.children[run.id] = Child(run, proc)

    def reap(self) -> None:
        for run_id, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[run_id]
            if self.store.get_run(run_id).status in ("running", "queued"):
                self.store.finish_run(run_id, "failed", error=f"{PROCESS_LOST} (exit code {code})")

    def step(self) -> None:
        self.reap()
        self.recover()
        while not self.stopping and len(self.children) < self.concurrency:
            run = self.store.claim_next_queued(os.getpid())
            if run is None:
                break
            self.launch(run)
        self._keep_standby()

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        self.files.mkdir(parents=True, exist_ok=True)
        pidfile(self.store).write_text(str(os.getpid()))
        print(f"worker {os.getpid()}: up to {self.concurrency} runs at once, db {self.db_url}", flush=True)
        try:
            while not self.stopping:
                self.step()
                time.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            pass
        finally:
            self._stop()

    def _stop(self) -> None:
        self.stopping = True
        for child in self.children.values():
            child.proc.terminate()
        if self.standby is not None:
            self.standby.terminate()
        if running_worker(self.store) == os.getpid():
            pidfile(self.store).unlink(missing_ok=True)


# --- one worker per database, started on demand by the dashboard ----------------------------


def pidfile(store: Store) -> Path:
    """Where the pid of the worker of `store`'s database is kept."""
    return worker_folder(store.instance_id) / "worker.pid"


def running_worker(store: Store) -> int | None:
    """The pid of the live worker of `store`'s database, or None."""
    try:
        pid = int(pidfile(store).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def ensure_worker(store: Store) -> int:
    """The pid of the worker of `store`'s database, starting a detached one if none is alive."""
    pid = running_worker(store)
    if pid:
        return pid
    folder = worker_folder(store.instance_id)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tl_core", "worker", "--db", store.url], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile(store).write_text(str(proc.pid))
    return proc.pid
