"""The service: a worker and the dashboard, started together and stopped together.

`python -m tl_core serve` is what `make start` and the container's entrypoint run:
  1. The worker starts first (`python -m tl_core worker`), whether or not anyone opens the
     dashboard: queued runs train, and runs a previous worker left running resume from their
     checkpoints (worker.py), right after a `docker restart` or a reboot. Its pid goes in the
     database's worker.pid before the dashboard starts, so the dashboard finds it and starts none.
  2. Then the dashboard (`streamlit run app.py`), unless --no-dashboard.
  3. A worker that dies (a non-zero exit, a signal) is started again: at once, then after 2, 4 ...
     60 s while it keeps dying within a minute. One that exits cleanly was stopped on purpose
     (`python -m tl_core worker --stop`) and stays stopped; the dashboard's sidebar can start one.
  4. The dashboard exiting ends the service, with its exit code (a container's restart policy
     then restarts the whole).
  5. SIGINT (Ctrl-C), SIGTERM (`docker stop`) or SIGHUP: the dashboard and the worker are told to
     stop, once. The worker asks each training run to stop at its next batch; the run goes back to
     the queue and continues from its last checkpoint on the next start. A second Ctrl-C kills
     what is left (those runs resume all the same: worker.py's recovery).

Why a process of our own, not a shell `&`, supervisord or systemd: a shell script restarts nothing
and forwards no signal to a background job; supervisord and systemd are a dependency and a
config file more, present neither on a laptop nor in a slim container, and neither knows that the
worker must be told once and then given time to checkpoint. This is Popen, signals and a poll loop.
Each child runs in a session of its own, so a Ctrl-C in the terminal reaches the supervisor only,
which tells each child once; and each dies with the supervisor if it is killed
(PR_SET_PDEATHSIG: SIGTERM, the graceful path). The image runs it under tini, which as PID 1 reaps
every orphaned process of the container at once (a killed run's DataLoader workers) and hands
it `docker stop`'s SIGTERM; run as PID 1 itself (an entrypoint overridden), it reaps the
orphans it finds every half second (_reap_orphans), a zombie's life at most that long.
Its lines and the worker's go to stderr with their time and level (logs.py): `docker logs`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .. import settings
from ..logs import logger
from ..store import Store
from .processes import pidfile
from .serving import STOP_GRACE_S

log = logger(__name__)  # timed lines (logs.py): what `docker logs` shows

APP = Path(__file__).resolve().parents[2] / "app.py"  # the checkout's, beside tl_core/
POLL_S = 0.5


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: told to stop if the supervisor dies


def _say(text: str) -> None:
    log.info(text)


class Supervisor:
    def __init__(self, db_url: str, dashboard: list[str] | None, max_concurrent: int | None = None):
        """`dashboard`: Streamlit's options (`--server.port ...`), or None for no dashboard."""
        self.db_url = db_url
        self.store = Store(db_url)  # made (or migrated) here once, before two processes open it at once
        self.dashboard_options = dashboard
        self.max_concurrent = max_concurrent
        self.worker: subprocess.Popen | None = None
        self.dashboard: subprocess.Popen | None = None
        self.worker_started_at = 0.0
        self.quick_deaths = 0  # the worker's exits within a minute of its start, in a row
        self.restart_at: float | None = None
        self.signals = 0

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=settings.child_environment(DATABASE_URL=self.db_url),
        )

    def start_worker(self) -> None:
        args = [sys.executable, "-m", "tl_core", "worker", "--db", self.db_url]
        if self.max_concurrent:
            args += ["--max-concurrent", str(self.max_concurrent)]
        self.worker = self._spawn(args)
        self.worker_started_at, self.restart_at = time.monotonic(), None
        pidfile(self.store).parent.mkdir(parents=True, exist_ok=True)
        pidfile(self.store).write_text(str(self.worker.pid))  # before the dashboard looks for it
        _say(f"worker started (pid {self.worker.pid})")

    def start_dashboard(self) -> None:
        assert self.dashboard_options is not None  # run() starts a dashboard only with its options
        self.dashboard = self._spawn([sys.executable, "-m", "streamlit", "run", str(APP), *self.dashboard_options])
        _say(f"dashboard started (pid {self.dashboard.pid})")

    def run(self) -> int:
        """Serve until a signal (0) or the dashboard's exit (its code)."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._signal)
        self.start_worker()
        if self.dashboard_options is not None:
            self.start_dashboard()
        code = 0
        try:
            while not self.signals:
                if self.dashboard is not None and (exited := self.dashboard.poll()) is not None:
                    code = exited
                    _say(f"the dashboard exited ({code}); stopping the worker")
                    break
                self._watch_worker()
                if self.worker is None and self.restart_at is None and self.dashboard is None:
                    _say("the worker was stopped and there is no dashboard: done")
                    break
                _reap_orphans({p.pid for p in (self.worker, self.dashboard) if p is not None})
                time.sleep(POLL_S)
        finally:
            self.stop()
        return code

    def _watch_worker(self) -> None:
        if self.worker is not None and (code := self.worker.poll()) is not None:
            self.worker = None
            if code == 0:
                _say("the worker was stopped (worker --stop); it stays stopped (the dashboard's sidebar starts one)")
                return
            lived = time.monotonic() - self.worker_started_at
            self.quick_deaths = self.quick_deaths + 1 if lived < 60 else 0
            delay = min(60, 2**self.quick_deaths) if self.quick_deaths > 1 else 0
            _say(
                f"the worker exited ({code}) after {lived:.0f} s; starting another"
                + (f" in {delay} s" if delay else "")
            )
            self.restart_at = time.monotonic() + delay
        if self.worker is None and self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.start_worker()

    def _signal(self, signum, _frame) -> None:
        self.signals += 1
        if self.signals > 1:  # asked again while stopping: kill what is left
            for proc in (self.dashboard, self.worker):
                if proc is not None and proc.poll() is None:
                    proc.kill()

    def stop(self) -> None:
        """Tell the dashboard and the worker to stop (once) and wait: the worker's runs checkpoint."""
        for proc in (self.dashboard, self.worker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        if self.worker is not None:
            _say("stopping: training runs stop at their next batch and continue on the next start")
        for proc, grace in ((self.dashboard, 15), (self.worker, STOP_GRACE_S + 15)):
            if proc is None:
                continue
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _say("stopped")


def _reap_orphans(ours: set[int]) -> None:
    """As PID 1 (a container without --init), wait for processes orphaned to us (not `ours`, which
    Popen waits for), so none stays a zombie."""
    if os.getpid() != 1:
        return
    for child in psutil.Process().children():
        try:
            zombie = child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue
        if zombie and child.pid not in ours:
            try:
                os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def serve(db_url: str, host: str, port: int, dashboard: bool = True, max_concurrent: int | None = None) -> int:
    """The worker and (unless `dashboard` is False) the dashboard on host:port, until stopped."""
    options = [
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    return Supervisor(db_url, options if dashboard else None, max_concurrent).run()
