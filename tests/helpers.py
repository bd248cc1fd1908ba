"""Small helpers the tests share."""

from __future__ import annotations

import inspect
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tl_core.config import make_config
from tl_core.store.store import Store
from tl_core.training.run import RunResult, train_run


def train(store: Store, **settings) -> RunResult:
    """Record and train one run in this process, as `python -m tl_core run` does."""
    settings.setdefault("image_size", 32)
    settings.setdefault("batch_size", 8)
    settings.setdefault("workers", 0)
    cfg = make_config(**settings)
    run = store.create_run(cfg.model_dump(), cfg.experiment, cfg.name, status="running")
    return train_run(store, run.id, progress=False)


def stop_before_epoch(monkeypatch, epoch: int) -> None:
    """Make training stop as epoch `epoch` (0-based) begins, as a cancel request would."""
    from tl_core.training import loop
    from tl_core.training.stopping import RunCancelled

    original = loop.train_one_epoch

    def stopping(*args, **kwargs):
        if inspect.signature(original).bind(*args, **kwargs).arguments["epoch"] == epoch:
            raise RunCancelled()
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", stopping)


def stop_in_epoch(monkeypatch, epoch: int, batch: int) -> None:
    """Make training stop in the middle of epoch `epoch` (0-based), as its worker's SIGTERM would:
    asked whether to stop for the `batch`+1-th time in that epoch, it is told the worker stops."""
    from tl_core.training import loop
    from tl_core.training.stopping import RunInterrupted

    original = loop.train_one_epoch

    def stopping(*args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        if bound.arguments["epoch"] == epoch:
            asked, ask = [], bound.arguments["should_stop"]

            def should_stop() -> bool:
                asked.append(1)
                if len(asked) > batch:
                    raise RunInterrupted("SIGTERM")
                return ask()

            bound.arguments["should_stop"] = should_stop
        return original(*bound.args, **bound.kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", stopping)


ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float, what: str, every: float = 0.3):
    """predicate()'s first true value, asked every `every` s; fails after `timeout` s naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:port; returns once it answers its health check."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            pass
        assert proc.poll() is None, log_path.read_text()
        assert time.time() < deadline, "streamlit did not come up in 60 s"
        time.sleep(0.3)


def job_result(at, key: str, store: Store, timeout: float = 180) -> dict:
    """The result of the job an AppTest page keeps in session_state[key], once its process stored it."""
    from tl_core.service import jobs

    job = at.session_state[key]
    deadline = time.monotonic() + timeout
    while (found := jobs.result(store, job)) is None:
        assert (why := jobs.failure(store, job)) is None, why
        assert time.monotonic() < deadline, f"{job.command} took over {timeout} s"
        time.sleep(0.3)
    return found
