"""Shared fixtures: real demo images (subsampled), temporary databases and run folders."""

from __future__ import annotations

import os
import uuid

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


@pytest.fixture(params=["sqlite", "postgresql"])
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
