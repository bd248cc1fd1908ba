"""Small helpers the tests share."""

from __future__ import annotations

from tl_core.config import make_config
from tl_core.store import Store
from tl_core.train import RunResult, train_run


def train(store: Store, **settings) -> RunResult:
    """Record and train one run in this process, as `python -m tl_core run` does."""
    settings.setdefault("image_size", 32)
    settings.setdefault("batch_size", 8)
    settings.setdefault("workers", 0)
    cfg = make_config(**settings)
    run = store.create_run(cfg.model_dump(), cfg.experiment, cfg.name, status="running")
    return train_run(store, run.id, progress=False)
