"""How a run is asked to stop: cancelled, its worker stopping, or taken by another worker.

A run is asked between batches (`stop_check`), never in the middle of one: a cancel requested in
the store (`RunCancelled`), a SIGTERM or SIGINT to the worker that started it (`RunInterrupted`: it
saves where it got to and goes back in the queue), or the run no longer this process's (`RunTaken`:
another worker failed it as orphaned or queued it again; it stops and records nothing). The
answers come from the store, so the question is asked at most every 0.2 s (`throttled`).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable

from ..store.store import Run, Store


class RunCancelled(Exception):
    """The run was cancelled (from a page or `cancel`): it stops at its next batch."""


class RunInterrupted(Exception):
    """SIGTERM or SIGINT to a run a worker started: its worker is stopping (the signal's name)."""


class RunTaken(Exception):
    """The run is no longer this process's: failed as orphaned, or put back in the queue, by another worker."""


def throttled(ask: Callable[[], bool], seconds: float) -> Callable[[], bool]:
    """`ask`, but asked at most once every `seconds` (the answer in between is False)."""
    last = -math.inf

    def asked() -> bool:
        nonlocal last
        if time.monotonic() - last < seconds:
            return False
        last = time.monotonic()
        return ask()

    return asked


def stop_check(store: Store, run: Run) -> Callable[[], bool]:
    """Asked between batches: True once a cancel was requested (asked at most every 0.2 s). For a run
    a worker started it also raises RunInterrupted after SIGTERM or SIGINT (the worker is stopping;
    a second signal stops the process at once), and RunTaken once the run is no longer this
    process's (asked every 2 s: another worker failed it as orphaned, or put it back in the queue)."""
    cancelled = throttled(lambda: store.cancel_requested(run.id), 0.2)
    if run.worker_pid is None or threading.current_thread() is not threading.main_thread():
        return cancelled  # trained in the foreground: Ctrl-C is the terminal's
    received: list[str] = []

    def on_signal(signum, _frame) -> None:
        if received:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        received.append(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def taken() -> bool:
        now = store.get_run(run.id)
        return now.status != "running" or now.pid != os.getpid()

    taken_yet = throttled(taken, 2.0)

    def should_stop() -> bool:
        if received:
            raise RunInterrupted(received[0])
        if taken_yet():
            raise RunTaken()
        return cancelled()

    return should_stop


def raising(should_stop: Callable[[], bool]) -> Callable[[], None]:
    """`should_stop` as a check that raises RunCancelled where it answers True: what work done
    between batches outside the loop (filling the feature cache) asks."""

    def check() -> None:
        if should_stop():
            raise RunCancelled()

    return check
