"""What every executor shares (the worker, worker.py; the Ray executor, ray_executor.py): a loop
that a signal stops, gracefully at the first and at once at the second, and that rides out a failed
step; how long a stopping run is given; and the words for a run that lost its process."""

from __future__ import annotations

import time

from sqlalchemy.engine import make_url

from ..logs import logger

log = logger(__name__)  # timed lines (logs.py): the service's output, worker.log

PROCESS_LOST = "process lost: its training process stopped without recording an end"
RESUMABLE = "(resumable from its last checkpoint)"
STOP_GRACE_S = 30.0  # a training process asked to stop has this long to reach its next batch


def masked_url(url: str) -> str:
    """A database URL with its password hidden, for a log."""
    return make_url(url).render_as_string(hide_password=True)


class Serving:
    """What the worker and the Ray executor (ray_executor.py) share: a signal asks them to stop (a
    second one, to stop at once), and their loop steps until then, riding out a failed step (the
    database away for a moment: the runs train on), then stops."""

    name = "worker"
    stopping = False
    signals = 0  # SIGTERM/SIGINT received: one stops gracefully, two at once
    poll_seconds = 1.0

    def step(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _signal(self, signum, _frame) -> None:
        self.signals += 1
        self.stopping = True

    def loop(self) -> None:
        try:
            while not self.stopping:
                try:
                    self.step()
                except Exception as e:  # the database away for a moment: the runs train on; try again
                    log.warning(f"{self.name}: {type(e).__name__}: {e}")
                time.sleep(self.poll_seconds)
        finally:
            self.stop()
