"""Faults during a run: it ends failed with a reason a user can act on, and loses nothing."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tl_core.cli import main
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.service import check_run
from tl_core.store import Store
from tl_core.training import loop

from .helpers import train
from .test_worker import ROOT, _queue, wait_for


def test_out_of_memory_says_to_reduce_batch_or_image_size(tiny, store, monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "train_one_epoch", oom)
    result = train(store, data=tiny, epochs=1)
    assert result.status == "failed" and "reduce --batch-size or --image-size" in result.error


def test_disk_full_fails_the_run_clearly_and_leaves_no_half_checkpoint(tiny, store, monkeypatch):
    real_save = torch.save
    calls = []

    def fill_disk(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 3:  # best.pt and last.pt of epoch 1 are written; epoch 2's best.pt is not
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", fill_disk)
    result = train(store, data=tiny, epochs=3, lr=0.05)
    run = store.get_run(result.run_id)
    assert run.status == "failed" and "disk full" in run.error and "resume" in run.error
    assert sorted(p.name for p in Path(run.run_dir).iterdir()) == ["best.pt", "last.pt"]
    assert torch.load(Path(run.run_dir) / "last.pt", weights_only=True)["epoch"] == 0
    assert run.epochs_done == 1 and len(store.epoch_metrics([run.id])[run.id]) == 1


def test_a_read_only_database_is_a_clear_error(tmp_path, tiny, capsys):
    path = tmp_path / "ro.db"
    Store(f"sqlite:///{path}").close()
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    code = main(["run", "--data", tiny, "--epochs", "1", "--batch-size", "8", "--detach", "--db", url])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be used" in err and "writable" in err and "Traceback" not in err
    with sqlite3.connect(path) as c:
        assert c.execute("select count(*) from runs").fetchone() == (0,)


def test_weights_that_need_a_download_are_refused_offline_before_queueing(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="efficientnet_lite0, efficientnet_lite1") as e:
        check_run(make_config(data=tiny, backbone="resnet18", batch_size=8))
    assert "--weights PATH" in str(e.value)
    check_run(make_config(data=tiny, backbone="resnet18", strategy="scratch", batch_size=8))  # no weights needed


def test_when_the_worker_dies_its_runs_stop_and_the_next_worker_resumes_them(tmp_path, tiny):
    # kill -9 of the worker (a crash, a power cut): the kernel stops its runs with it; the next worker
    # started on this machine puts them back in the queue and continues each from its checkpoint
    # (TL_RESUME_ON_RESTART; off, they are failed, resumable: test_many_workers).
    db = f"sqlite:///{tmp_path / 'w.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TL_RUNS_DIR": str(tmp_path / "runs"),
        "TL_STANDBY": "0",
        "TL_HEARTBEAT_S": "0.5",
    }
    cmd = [sys.executable, "-m", "tl_core", "worker", "--db", db, "--poll", "0.3"]
    store = Store(db)
    doomed = _queue(store, tiny, epochs=10, strategy="full")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = wait_for(lambda: (r := store.get_run(doomed)).epochs_done >= 2 and r, 120, "the run to train")
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: not _alive(run.pid), 10, "the run's process to stop with its worker")
    left = store.get_run(doomed)
    assert left.status == "running" and left.epochs_done < 10  # nobody recorded its end
    second = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = wait_for(
            lambda: (r := store.get_run(doomed)).status in ("completed", "failed") and r,
            120,
            "the run to resume and complete",
        )
        assert done.status == "completed" and done.epochs_done == 10, done.error
        assert (
            done.worker_pid == second.pid and done.summary["resumed_from"]["epoch"] >= 1
        )  # the checkpoint may trail the recorded epochs by one
        assert len(store.epoch_metrics([doomed])[doomed]) == 10
    finally:
        second.terminate()
        second.wait(timeout=60)


def _alive(pid: int) -> bool:
    from tl_core.executors.processes import pid_alive

    return pid_alive(pid)
