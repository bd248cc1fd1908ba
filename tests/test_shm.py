"""Shared memory and DataLoader workers (tl_core/data/shared_memory.py): a run under a small /dev/shm trains with
fewer workers; a worker that cannot hand its batch over, or dies, fails the run at once, never a stall.

The runs under a small /dev/shm train in a private mount namespace whose /dev/shm is a tmpfs of a
few hundred KB (Docker's 64 MB is small for the same reason at 224 px and batch 128); that takes
root (unshare -m), as on the build machines and in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tl_core.data.shared_memory import PREFETCH, LoaderPlan, explain, fit, held_bytes
from tl_core.store import Store

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20
BATCH = 8 * 3 * 96 * 96  # the runs below: 8 images of 96 px, uint8 from the decode cache


def test_fit_keeps_what_fits_then_lowers_the_prefetch_then_the_workers():
    batch = 128 * 3 * 224 * 224  # 19 MB: a GPU host's batch at 224 px
    assert fit(8, batch, free=1024 * MB) == LoaderPlan(8, PREFETCH, 8, batch / MB, 1024)
    assert not fit(8, batch, free=1024 * MB).lowered and fit(8, batch, free=1024 * MB).note() is None
    assert (fit(8, batch, free=190 * MB).workers, fit(8, batch, free=190 * MB).prefetch_factor) == (8, 1)
    docker = fit(8, batch, free=64 * MB)  # Docker's default /dev/shm
    assert (docker.workers, docker.prefetch_factor) == (2, 1) and docker.lowered
    assert held_bytes(2, 1, batch) <= 64 * MB < held_bytes(3, 1, batch)
    assert "--shm-size" in docker.note() and "instead of 8" in docker.note()
    assert docker.loader_args() == {"num_workers": 2, "prefetch_factor": 1}
    none = fit(8, batch, free=30 * MB)  # not even one worker's batch and the one handed over
    assert none.workers == 0 and none.loader_args() == {"num_workers": 0} and "--shm-size" in none.note()
    assert fit(0, batch, free=0).note() is None  # no workers, nothing through /dev/shm


def test_a_shared_memory_error_or_a_dead_worker_is_explained_with_what_to_do():
    alloc = RuntimeError(
        "Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        "call last):\n  ...\nRuntimeError: unable to allocate shared memory(shm) for file "
        "</torch_1_2_3>: No space left on device (28)\n"
    )
    said = explain(alloc)
    assert said.startswith("out of shared memory") and "--shm-size" in said and "resume" in said
    assert said.endswith("No space left on device (28))")  # the error's own last line, not its traceback
    died = explain(RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "))
    assert died.startswith("a DataLoader worker died") and "--shm-size" in died and "resume" in died
    assert explain(RuntimeError("Caught ValueError in DataLoader worker process 0.\nValueError: bad")) is None
    assert explain(ValueError("unrelated")) is None


def _can_unshare() -> str | None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1): a private mount namespace with a small /dev/shm"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"unshare -m refused here: {probe.stderr.decode().strip()}"


needs_namespace = pytest.mark.skipif(_can_unshare() is not None, reason=str(_can_unshare()))


def _run(code: str, env: dict, shm: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Python `code` in a process of its own; with `shm`, in a private mount namespace whose /dev/shm
    is a tmpfs of that size. A stalled loader shows as the timeout, failing the test."""
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    if shm is not None:
        cmd = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs -o size="$0",mode=1777 tmpfs /dev/shm && exec "$@"',
            shm,
            *cmd,
        ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "TL_OFFLINE": "1", "TL_RUNS_DIR": str(tmp_path / "runs")}


def _train(tiny: str, db: str, *extra: str) -> str:
    """The code of `python -m tl_core run` on the tiny images with 96 px batches of 8, its JSON printed."""
    args = [
        "run",
        "--data",
        tiny,
        "--db",
        db,
        "--epochs",
        "1",
        "--image-size",
        "96",
        "--batch-size",
        "8",
        "--strategy",
        "full",
        "--json",
        "--no-progress",
        *extra,
    ]
    return f"import sys; from tl_core.cli import main; sys.exit(main({args!r}))"


@needs_namespace
def test_a_run_under_a_small_dev_shm_trains_with_fewer_workers_and_says_so(tiny, tmp_path):
    db = f"sqlite:///{tmp_path / 'shm.db'}"
    # 1 MB: 4 workers with 2 batches of 0.2 MB in flight each do not fit; 3 with one each do.
    r = _run(_train(tiny, db, "--workers", "4"), _env(tmp_path), shm="1m")
    assert r.returncode == 0, r.stderr[-3000:]
    run = Store(db).get_run(json.loads(r.stdout.splitlines()[-1])["run_id"])
    assert run.status == "completed" and run.epochs_done == 1
    loader = run.summary["loader"]
    assert (loader["workers"], loader["prefetch_factor"], loader["asked_workers"]) == (3, 1, 4), loader
    assert held_bytes(3, 1, BATCH) <= loader["shm_free_mb"] * MB < held_bytes(4, 1, BATCH)
    said = [w for w in run.summary["warnings"] if "/dev/shm" in w]
    assert said and "--shm-size" in said[0] and said[0] in r.stderr  # in the run's record and its log


@needs_namespace
def test_a_worker_that_cannot_allocate_its_batch_fails_the_run_at_once_not_a_stall(tiny, tmp_path):
    db = f"sqlite:///{tmp_path / 'alloc.db'}"
    # The fitting bypassed (as when other runs of the host take the space after it): the workers'
    # batches of 0.2 MB meet a /dev/shm of 128 KB.
    code = """
        from tl_core.data import shared_memory as shm
        shm.fit = lambda workers, batch_bytes, free=None: shm.LoaderPlan(workers, 2, workers, batch_bytes / 2**20, 0.1)
        """ + _train(tiny, db, "--workers", "2")
    started = time.monotonic()
    r = _run(code, _env(tmp_path), shm="128k", timeout=240)
    assert r.returncode == 1, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["status"] == "failed" and out["error"].startswith("out of shared memory"), out["error"]
    assert "--shm-size" in out["error"] and "resume" in out["error"] and "No space left on device" in out["error"]
    assert time.monotonic() - started < 200  # torch's import and the tiny run; a stall would run into the timeout


KILLER = """
    import os, signal, time, torch
    from tl_core.data import decode_cache as decoded
    original = decoded.PixelDataset.__getitems__
    calls = []

    def dying(self, indices):  # in a DataLoader worker: its second batch kills it, mid-epoch
        if torch.utils.data.get_worker_info() is not None:
            calls.append(1)
            if len(calls) == 2:
                open({stamp!r}, "w").write(str(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, indices)

    decoded.PixelDataset.__getitems__ = dying
    """


def test_a_loader_worker_killed_mid_epoch_fails_the_run_within_seconds_resumable(tiny, tmp_path):
    db, stamp = f"sqlite:///{tmp_path / 'kill.db'}", tmp_path / "killed-at"
    r = _run(KILLER.format(stamp=str(stamp)) + _train(tiny, db, "--workers", "2"), _env(tmp_path), timeout=240)
    ended = time.time()
    assert r.returncode == 1, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["status"] == "failed" and out["error"].startswith("a DataLoader worker died"), out["error"]
    # torch's word for it: "killed by signal: Killed" (its SIGCHLD handler) or "exited unexpectedly" (its watchdog)
    assert re.search(r"DataLoader worker \(pid.*(killed by signal|exited unexpectedly)", out["error"]), out["error"]
    assert "--shm-size" in out["error"] and "resume" in out["error"]
    assert ended - float(stamp.read_text()) < 60  # noticed at once (torch's SIGCHLD handler), not waited for
    # Failed, resumable: the same run trains to the end once its workers live.
    resumed = _run(
        f"import sys; from tl_core.cli import main; sys.exit(main(['resume', '{out['run_id']}', "
        f"'--db', {db!r}, '--json', '--no-progress']))",
        _env(tmp_path),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.splitlines()[-1])["status"] == "completed"
