"""Four runs training at once while two dashboard sessions poll: no lock errors, no lost rows, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy.exc import OperationalError

from tl_core.config import make_config
from tl_core.store import Store
from ui import format as fmt

from .helpers import ROOT
from .test_worker import wait_for

EPOCHS = 3  # progressive unfreezes twice, two_phase once: every change of groups, at the least cost


def _poll_like_a_dashboard(url: str, stop: threading.Event, errors: list, polls: list) -> None:
    store = Store(url)  # a session of its own, as each browser tab's script has
    while not stop.is_set():
        try:
            runs = store.list_runs()
            fmt.runs_rows(runs)  # the Runs page's refresh
            metrics = store.epoch_metrics([r.id for r in runs])  # the Compare page's data
            for r in runs:
                store.class_metrics(r.id)
            polls.append(sum(len(e) for e in metrics.values()))
        except OperationalError as e:
            errors.append(str(e))
        stop.wait(0.05)  # ten times a second each, ten times a dashboard's rate: not a busy loop


def test_four_runs_and_two_pollers_share_the_database_without_lock_errors(tmp_path, tiny, db_url):
    url = db_url
    store = Store(url)
    ids = []
    for strategy in ("feature_extraction", "partial", "two_phase", "progressive"):
        cfg = make_config(
            data=tiny, strategy=strategy, epochs=EPOCHS, head_epochs=1, image_size=32, batch_size=4, workers=0
        )
        ids.append(store.create_run(cfg.model_dump(), "concurrency", status="queued").id)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TL_RUNS_DIR": str(tmp_path / "runs"),
        "TL_MAX_CONCURRENT": "4",
        "OMP_NUM_THREADS": "1",
        "TL_STANDBY": "0",
    }  # four processes, no spare imported beside them
    worker = subprocess.Popen(
        [sys.executable, "-m", "tl_core", "worker", "--db", url, "--poll", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stop, errors, polls = threading.Event(), [], []
    pollers = [threading.Thread(target=_poll_like_a_dashboard, args=(url, stop, errors, polls)) for _ in range(2)]
    for t in pollers:
        t.start()
    peak = 0
    try:

        def finished():
            nonlocal peak
            runs = store.list_runs(run_ids=ids)
            peak = max(peak, sum(r.status == "running" for r in runs))
            return all(r.status in ("completed", "failed") for r in runs)

        wait_for(finished, 300, "all four runs to finish")
    finally:
        stop.set()
        for t in pollers:
            t.join()
        worker.terminate()
        out = worker.communicate(timeout=30)[0].decode()
    runs = store.list_runs(run_ids=ids)
    assert [r.status for r in runs] == ["completed"] * 4, [r.error for r in runs]
    assert peak == 4, f"at most {peak} runs trained at once"
    assert errors == [] and len(polls) > 10
    logs = out + "".join((Path(r.run_dir) / "train.log").read_text() for r in runs)
    assert "database is locked" not in logs and "deadlock detected" not in logs
    epochs = store.epoch_metrics(ids)
    groups = {r.id: len(r.summary["groups"]) for r in runs}
    for r in runs:  # every epoch of every run, with every key it should have
        assert sorted(epochs[r.id]) == list(range(EPOCHS))
        for m in epochs[r.id].values():
            lrs = [k for k in m if k.startswith("lr/")]
            assert len(lrs) == m["trainable_groups"] <= groups[r.id]
            assert {"train_loss", "val_acc", "val_loss", "wall_seconds"} <= m.keys()
    assert sum(store.count_epoch_rows(i) for i in ids) == sum(len(m) for e in epochs.values() for m in e.values())
