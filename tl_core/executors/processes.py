"""Processes on this host, as the worker sees them: which are alive, which are workers or training
processes (through psutil), the children it starts, and this host's workers of a database.

A child of the worker (a run's training process, the standby, a job) is started without a shell, in
a process group of its own: a Ctrl-C in the worker's terminal reaches the worker, which tells its
children once; the group is what is killed when the child ends (its DataLoader workers with it). If
the worker dies, the kernel stops its children too (PR_SET_PDEATHSIG).

Files. A database's worker files (the log of a worker the dashboard started, the standby's log,
worker.pid) sit in a folder named by its instance id (store/run_folders.py), so several databases
can share a runs folder and a dashboard only ever finds the workers of its own database. worker.pid
names *the* worker of this database on this host: the one the service started (the supervisor
writes it), else the one a dashboard started, else the first one started by hand. A dashboard that
finds it alive (or any other live worker of its database on this host, from the store) starts none.
Further workers of the same database on the same host are found through the store
(`local_workers`); `worker --stop` stops them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeGuard

import psutil

from .. import settings
from ..store.run_folders import worker_folder
from ..store.store import Store
from .serving import STOP_GRACE_S

# --- which processes are alive, and what they are -------------------------------------------


def pid_alive(pid: int | None) -> TypeGuard[int]:
    """Whether process `pid` exists and has not exited (a zombie, not yet reaped, is not alive)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's: it exists
        return True


def _args(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def is_worker_process(pid: int | None) -> bool:
    """Whether `pid` is a live `python -m tl_core worker` (not a stranger given a dead worker's pid,
    as after a reboot or a container restart)."""
    if not pid_alive(pid):
        return False
    args = _args(pid)
    return "tl_core" in args and "worker" in args and "--stop" not in args


def is_training_process(pid: int | None) -> bool:
    """Whether `pid` is a live `python -m tl_core train-run` (a run's process, or a standby)."""
    return pid_alive(pid) and "train-run" in _args(pid)


# --- the worker's children ------------------------------------------------------------------


def _own_group_dying_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgid(0, 0)  # a Ctrl-C in the worker's terminal reaches the worker only; it tells its runs once
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: stop this run if the worker dies


def start_child(
    args: list[str], log_path: Path, gpu: str | None = None, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen:
    """`python -m tl_core ARGS`, its output appended to `log_path`, in a process group of its own
    that the kernel stops if this process dies; it sees `gpu` alone if given (placement.py), else
    every GPU. Raises OSError when no process can be made."""
    env = None if gpu is None else settings.child_environment(**settings.gpu_environment(gpu))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tl_core", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            env=env,
            preexec_fn=_own_group_dying_with_parent,
            cwd=os.getcwd(),
        )


def kill_group(pid: int) -> None:
    """SIGKILL what is left of a child's process group (a training process's DataLoader workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def host_lock(folder: Path) -> Iterator[None]:
    """Held by one worker of this database on this host at a time (recovery passes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "recover.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- this host's workers of a database: found, started by a dashboard, stopped ------------


def pidfile(store: Store) -> Path:
    """Where the pid of this host's worker of `store`'s database is kept (see the module's docstring)."""
    return worker_folder(store.instance_id) / "worker.pid"


def pidfile_worker(store: Store) -> int | None:
    """The live worker worker.pid names, or None (no file, or a pid that is no worker now)."""
    try:
        pid = int(pidfile(store).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_worker_process(pid) else None


def local_workers(store: Store) -> list[int]:
    """Pids of the live workers of `store`'s database on this host: worker.pid's first, then the
    others registered in the store (heartbeating, and still a worker process)."""
    found = [pid] if (pid := pidfile_worker(store)) else []
    host = socket.gethostname()
    for w in store.workers(alive=True):
        if w.host == host and w.pid not in found and w.pid != os.getpid() and is_worker_process(w.pid):
            found.append(w.pid)
    return found


def running_worker(store: Store) -> int | None:
    """The pid of a live worker of `store`'s database on this host (worker.pid's first), or None."""
    return next(iter(local_workers(store)), None)


def ensure_worker(store: Store) -> int:
    """The pid of this host's worker of `store`'s database, starting a detached one only if none
    is alive (a dashboard started by hand, without the service)."""
    pid = running_worker(store)
    if pid:
        return pid
    folder = worker_folder(store.instance_id)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tl_core", "worker", "--db", store.url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pidfile(store).write_text(str(proc.pid))
    return proc.pid


def stop_workers(store: Store, timeout: float = STOP_GRACE_S + 15) -> list[int]:
    """Stop every worker of `store`'s database on this host (their runs stop at their next batch and
    go back to the queue; their standbys go); the pids stopped. One still alive after `timeout` is
    killed, and the kernel stops its processes with it."""
    pids = local_workers(store)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) worker must run to stop
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids
