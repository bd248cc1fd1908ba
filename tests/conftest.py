"""Shared fixtures: real demo images (subsampled), temporary databases and run folders.

`make test` runs the suite in two processes (pytest-xdist, `-n 2 --dist loadgroup`): each has its
own session, so a session fixture is made once per process. Tests that must not run beside one
another share an `xdist_group` (one process runs a group's tests one after another): the browser
tests, the Ray cluster's. The markers (pyproject.toml): `browser`, `postgres` (set here, on the
`db_url` fixture's PostgreSQL case), `slow` (over ~10 s). Every test process runs torch on one
thread (OMP_NUM_THREADS, set in tests/__init__.py, before anything imports torch).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest

from tl_core.data.demo import write_demo_data
from tl_core.store.store import Store

from . import postgres


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches the network: weights that need a download count as unobtainable."""
    monkeypatch.setenv("TL_OFFLINE", "1")


@pytest.fixture(autouse=True)
def own_runs_dir(tmp_path_factory, monkeypatch):
    """No test writes run folders or caches into the repository: a runs folder of its own by
    default (tests that need a particular one set TL_RUNS_DIR themselves)."""
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))


@pytest.fixture(autouse=True)
def cpu_bf16(monkeypatch):
    """TL_TEST_CPU_BF16=native or emulated: run the suite as on a CPU that computes bf16 natively
    (AVX512-BF16 or AMX: --feature-precision auto then caches frozen features in bf16) or on one
    that does not (fp32), whatever this CPU is; unset, as this CPU is. Every float comparison must
    hold both ways (`make test` runs on either kind of machine). Runs in other processes (the
    CLI's subprocesses, a worker) see this CPU as it is."""
    _force_cpu_bf16(monkeypatch)


def _force_cpu_bf16(monkeypatch) -> None:
    forced = os.environ.get("TL_TEST_CPU_BF16", "")
    if forced:
        assert forced in ("native", "emulated"), f"TL_TEST_CPU_BF16={forced!r}: native or emulated"
        from tl_core.training import feature_cache  # torch: only where asked, not in every test's process start

        monkeypatch.setattr(feature_cache, "cpu_computes_bf16", lambda: forced == "native")


@pytest.fixture(scope="session")
def animals(tmp_path_factory) -> str:
    """The animal silhouettes, 30 per class, 64 px: 240 train / 60 val images."""
    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, datasets=("animals",), per_class=30, size=64)
    return str(out / "animals")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """Four animal classes, 8 per class, 32 px: for tests that check plumbing, not accuracy."""
    out = tmp_path_factory.mktemp("tiny")
    write_demo_data(out, datasets=("animals",), per_class=8, size=32)
    for extra in ("elephant", "giraffe", "horse", "sheep", "zebra", "dog"):
        for f in (out / "animals" / extra).iterdir():
            f.unlink()
        (out / "animals" / extra).rmdir()
    return str(out / "animals")


class TrainedRun(NamedTuple):
    store: Store
    run_id: int


@pytest.fixture(scope="session")
def _tiny_run_template(tmp_path_factory, tiny) -> tuple[Path, int, str]:
    """The run `tiny_run` copies, trained once per test process: its folder (experiments.db and
    runs/), its id and its uid."""
    from .helpers import train  # torch: only in the processes whose tests ask for a trained run

    home = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as mp:  # what the function-scoped autouse fixtures give a test
        mp.setenv("TL_OFFLINE", "1")
        mp.setenv("TL_RUNS_DIR", str(home / "runs"))
        _force_cpu_bf16(mp)
        store = Store(f"sqlite:///{home / 'experiments.db'}")
        result = train(store, data=tiny, strategy="feature_extraction", epochs=1)
        uid = store.get_run(result.run_id).uid
        store.close()
    assert result.status == "completed", result.error
    return home, result.run_id, uid


@pytest.fixture
def tiny_run(_tiny_run_template, tmp_path, monkeypatch) -> TrainedRun:
    """A completed run of the test's own, as `train(store, data=tiny, strategy="feature_extraction",
    epochs=1)` leaves it (checkpoints, epochs, predictions), in the `store` fixture's layout
    (tmp_path/experiments.db, TL_RUNS_DIR=tmp_path/runs): a copy of a run trained once per test
    process, for tests that read a trained run or change their copy of it, not how it trained."""
    home, run_id, uid = _tiny_run_template
    with sqlite3.connect(home / "experiments.db") as src, sqlite3.connect(tmp_path / "experiments.db") as dst:
        src.backup(dst)  # a consistent copy, whatever is still in SQLite's write-ahead log
    src.close()
    dst.close()
    shutil.copytree(home / "runs" / uid, tmp_path / "runs" / uid)
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    s = Store(f"sqlite:///{tmp_path / 'experiments.db'}")
    s.update_run(run_id, run_dir=str(tmp_path / "runs" / uid))  # the only place a run records its folder
    yield TrainedRun(s, run_id)
    s.close()


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    s = Store(f"sqlite:///{tmp_path / 'experiments.db'}")
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of this test session (tests/postgres.py), stopped at its end."""
    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    server = postgres.PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A new, empty database of each backend: a SQLite file, or a database of its own on the
    session's PostgreSQL server (dropped after the test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'experiments.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield server.create_database(name)
    server.drop_database(name)


@pytest.fixture
def db_store(db_url, tmp_path, monkeypatch) -> Store:
    """The `store` fixture on each backend."""
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    s = Store(db_url)
    yield s
    s.close()


def pytest_collection_modifyitems(config, items):
    """Where xdist spreads the tests over processes (`make test`), the slow ones are handed out
    first and the quick ones fill in behind them: a long test started last would keep one process
    busy after the other ran out of tests. Run in one process, the order stays the files'."""
    if hasattr(config, "workerinput"):  # an xdist worker: each collects alike, the controller hands out
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within each
