"""Log lines of TransferLab's processes: the `tl_core` loggers, written to stderr.

Every module of the engine logs through `logger(__name__)`, a child of the `tl_core` logger,
which has one handler: stderr, as it is when a line is written (a run's process points it at its
train.log; tests capture it), above a progress bar when one is showing.

By default a line is its message alone, as a command prints it in a terminal (`python -m tl_core
run` in the foreground). A process whose output people read later, from a file or from a
container's log, calls `timed()` first: from then on every line carries its time (UTC), level,
module and process id, and Python's warnings come the same way:
    2025-06-01T12:00:03.123Z INFO train[4242]: epoch 1/3  train loss 1.234 ...
Those are the worker (its output: the service's, a container's log, or worker.log), its standby
and each run's process (train-run: standby.log, then the run's train.log), and the service
(supervisor.py). `python -m tl_core logs RUN` prints a run's train.log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

ROOT = "tl_core"
TIMED = "%(asctime)s %(levelname)s %(module)s[%(process)d]: %(message)s"


class _Stderr(logging.Handler):
    """sys.stderr as it is at each line, not as it was when the handler was made; through
    tqdm.write while a progress bar is showing, so the bar is drawn again below the line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
                tqdm.tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


class _UtcFormatter(logging.Formatter):
    converter: Callable[[float | None], time.struct_time] = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


_HANDLER = _Stderr()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def _install() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
        root.setLevel(logging.INFO)
        root.propagate = False  # a root handler someone else set up (Ray, Streamlit) does not print it twice
    return root


def logger(name: str) -> logging.Logger:
    """The logger of module `name` (pass __name__)."""
    _install()
    return logging.getLogger(name)


def timed() -> None:
    """Every line from now on with its time, level, module and process; warnings too."""
    _install()
    _HANDLER.setFormatter(_UtcFormatter(TIMED))
    logging.captureWarnings(True)
    warned = logging.getLogger("py.warnings")
    if _HANDLER not in warned.handlers:
        warned.addHandler(_HANDLER)
        warned.propagate = False
