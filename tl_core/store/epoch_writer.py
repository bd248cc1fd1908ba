"""The background epoch writer: the training loop's epochs recorded while the loop goes on.

It writes through anything with Store.log_epoch (`EpochLog`), so it depends on nothing else of
the store's: the Store sits above it, not beside it.
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol


class EpochLog(Protocol):
    """What the writer writes through: Store.log_epoch."""

    def log_epoch(
        self, run_id: int, epoch: int, metrics: dict[str, float], best: tuple[float, int] | None = None
    ) -> None: ...


class EpochWriter:
    """Store.log_epoch on a background thread, as MLflow's and W&B's asynchronous logging: the
    training loop hands an epoch's metrics over and goes on while they are written (about 1 ms of
    SQLite), so a short epoch does not wait on the database. Rows are written in order; close()
    (or flush()) waits for all of them, and an error in a write is raised there, or at the next
    hand-over. An epoch handed over just before the process is killed may be lost: the training
    loop keeps each epoch's metrics in its checkpoint too, and a resume writes them again.
    """

    def __init__(self, store: EpochLog):
        self.store = store
        self.pending: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="epoch-writer", daemon=True)
        self.thread.start()

    def log_epoch(
        self, run_id: int, epoch: int, metrics: dict[str, float], best: tuple[float, int] | None = None
    ) -> None:
        self._raise()
        self.pending.put((run_id, epoch, dict(metrics), best))

    def flush(self) -> None:
        self.pending.join()
        self._raise()

    def close(self) -> None:
        """Wait for every handed-over epoch, then stop the thread."""
        try:
            self.flush()
        finally:
            self.pending.put(None)
            self.thread.join()

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _write(self) -> None:
        while (item := self.pending.get()) is not None:
            try:
                if self.error is None:  # after a failed write, the rest wait for the error to be seen
                    self.store.log_epoch(*item)
            except BaseException as e:  # noqa: BLE001 (raised in the training thread)
                self.error = e
            finally:
                self.pending.task_done()
        self.pending.task_done()
