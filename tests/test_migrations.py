"""Schema migrations (Alembic): new databases, databases of earlier releases, several openers at once.

Each test runs on SQLite and on PostgreSQL (tests/postgres.py). The old databases are made by the
old release's own table models (tests/fixtures/old_store.py), filled, then opened with today's Store.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine, inspect, text

from tl_core.store import ClassMetric, Prediction, Store, migrations
from tl_core.store import engine as store_engine
from tl_core.store.tables import Base

from .fixtures import old_store
from .helpers import ROOT


def _differences(store: Store) -> list:
    """What Alembic's autogenerate would change to make the database match the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)


def _revision(store: Store) -> list[str]:
    with store.engine.connect() as c:
        return list(c.execute(text("SELECT version_num FROM alembic_version")).scalars())


def test_head_is_the_newest_revision_in_the_scripts():
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrations.config())
    assert scripts.get_heads() == [migrations.HEAD], "bump tl_core.store.migrations.HEAD with a new revision"
    assert [s.revision for s in scripts.walk_revisions()][::-1] == ["0001", "0002", "0003", "0004"]


def test_a_new_database_gets_every_table_as_the_models_have_them(db_url):
    store = Store(db_url)
    assert _revision(store) == [migrations.HEAD]
    assert set(inspect(store.engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert _differences(store) == []
    run = store.create_run({"strategy": "full"}, launched_by="ada@example.org")
    worker = store.register_worker("box", 42)
    assert store.claim_next_queued(42, worker).worker_id == worker
    assert store.get_run(run.id).launched_by == "ada@example.org"
    job = store.create_job("a" * 32, "probe", "default", ["--data", "pets"], {"backbone": "resnet18"})
    assert store.claim_job(job.id, worker, "box", "MIG-1111") and not store.claim_job(job.id, worker, "box", "0")
    assert store.finish_job(job.id, "completed", peak_mb=812.5)
    assert store.jobs(statuses=["completed"]) == [store.get_job(job.id)] and store.get_job(job.id).gpu == "MIG-1111"
    store.set_exclusion("/data/pets", "cat/1.jpg", "exclude", added_by="ada")
    store.set_exclusion("/data/pets", "cat/1.jpg", "relabel", "dog")  # replaces the entry
    assert [(e.path, e.action, e.to, e.added_by) for e in store.exclusions("/data/pets")] == [
        ("cat/1.jpg", "relabel", "dog", None)
    ]
    assert store.remove_exclusion("/data/pets", "cat/1.jpg") and not store.remove_exclusion("/data/pets", "cat/1.jpg")
    store.close()


@pytest.mark.parametrize("era", old_store.ERAS)
def test_an_older_database_is_upgraded_in_place_keeping_every_row(db_url, era):
    engine = create_engine(db_url)
    uids = old_store.make(engine, era)
    engine.dispose()
    store = Store(db_url)
    assert _revision(store) == [migrations.HEAD]
    assert _differences(store) == []  # as if made new: uid NOT NULL and unique, the new columns and table

    runs = {r.id: r for r in store.list_runs()}
    assert sorted(runs) == sorted(old_store.RUNS)
    for i, (exp, name, status, best, best_epoch, done, cancel) in old_store.RUNS.items():
        r = runs[i]
        assert (r.experiment, r.name, r.status, r.best_val_acc, r.best_epoch, r.epochs_done, r.cancel_requested) == (
            old_store.EXPERIMENTS[exp],
            name,
            status,
            best,
            best_epoch,
            done,
            cancel,
        )
        assert r.config == {**old_store.CONFIG, "seed": i} and r.summary["groups"] == ["stem", "head"]
        assert r.created_at == old_store.T0 + __import__("datetime").timedelta(minutes=i)
        assert (r.worker_id, r.executor, r.launched_by) == (None, None, None)  # the new columns, empty
        assert len(r.uid) == 32 and (uids[i] is None or r.uid == uids[i])  # a uid kept, or one made
    assert len({r.uid for r in runs.values()}) == len(runs)
    if era == "b3e9f4b":
        assert (runs[1].notes, runs[1].tags, runs[3].resume) == ("kept", ["baseline", "kept"], True)
    else:
        assert not any(r.resume or r.notes or r.tags for r in runs.values())

    assert store.epoch_metrics(old_store.EPOCHS) == old_store.EPOCHS  # run 1 from curves, run 2 from rows
    assert store.count_epoch_rows(1) == sum(len(m) for m in old_store.EPOCHS[1].values())
    assert store.class_metrics(1) == [ClassMetric(*row) for row in old_store.CLASSES]
    if era != "before-uids":  # the release before uids had no predictions, artifacts or store_info
        assert store.predictions(1) == [Prediction(*row) for row in old_store.PREDICTIONS]
        assert [(a.kind, a.data) for a in store.artifacts("baseline")] == [
            (old_store.ARTIFACT["kind"], old_store.ARTIFACT["data"])
        ]
        assert store.instance_id == old_store.INSTANCE_ID

    # It works as a new one does, and opening it again changes nothing.
    new = store.create_run({"strategy": "full"}, "baseline", launched_by="ada")
    assert new.id == max(old_store.RUNS) + 1 and new.uid not in {r.uid for r in runs.values()}
    store.log_epoch(new.id, 0, {"val_acc": 0.25})
    assert store.epoch_metrics([new.id]) == {new.id: {0: {"val_acc": 0.25}}}
    worker = store.register_worker("box", 7)
    assert store.claim_next_queued(7, worker).id == 4  # the old queued run, claimed the new way
    store.close()
    again = Store(db_url)
    assert {r.id: r.uid for r in again.list_runs()} == {**{i: r.uid for i, r in runs.items()}, new.id: new.uid}
    again.close()


def test_opening_a_database_at_head_runs_no_migration(db_url, monkeypatch):
    Store(db_url).close()
    from alembic import command

    def refuse(*args, **kwargs):
        raise AssertionError("migrated a database already at head")

    monkeypatch.setattr(command, "upgrade", refuse)
    store = Store(db_url)
    assert store.list_runs() == [] and _revision(store) == [migrations.HEAD]
    store.close()


def test_a_database_of_a_newer_release_is_refused_with_what_to_do(db_url):
    from tl_core.errors import UserError

    store = Store(db_url)
    with store.engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    store.close()
    with pytest.raises(UserError, match="schema revision 0099, which this TransferLab does not know .* Upgrade"):
        Store(db_url)


def test_a_downgraded_database_comes_back_to_head_with_its_runs(db_url):
    store = Store(db_url)
    run = store.create_run({"strategy": "full"}, launched_by="ada")
    store.log_epoch(run.id, 0, {"val_acc": 0.5})
    migrations.downgrade(store.engine, "0001")  # on SQLite: runs copied, its epochs kept
    assert not {"workers", "jobs", "exclusions"} & set(inspect(store.engine).get_table_names())
    store.close()
    store = Store(db_url)
    assert _revision(store) == [migrations.HEAD] and _differences(store) == []
    back = store.get_run(run.id)
    assert (back.uid, back.launched_by) == (run.uid, None)  # launched_by went with its column
    assert store.epoch_metrics([run.id]) == {run.id: {0: {"val_acc": 0.5}}}
    store.close()


OPENER = """
import os, sys, time
from pathlib import Path
from tl_core.store import Store
url, ready, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < n:  # a barrier: every process opens the new database at the same moment
    time.sleep(0.001)
store = Store(url)
run = store.create_run({"strategy": "full"})  # and writes at once, as a worker or a run does
worker = store.register_worker("box", os.getpid())
store.claim_next_queued(os.getpid(), worker)
print(run.uid)
"""


def test_several_processes_opening_a_new_database_at_once_migrate_it_once(db_url, tmp_path):
    # SQLite's race (a new file's switch to WAL) shows only with many openers at once; PostgreSQL's
    # advisory lock shows with four, and its openers cost more (each about 1 s of a test on 2 cores).
    n, ready = (8 if db_url.startswith("sqlite") else 4), tmp_path / "ready"
    ready.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, db_url, str(ready), str(n)],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in outs]
    store = Store(db_url)
    assert _revision(store) == [migrations.HEAD] and _differences(store) == []
    assert sorted(r.uid for r in store.list_runs()) == sorted(out.strip() for out, _ in outs)
    store.close()


def test_a_new_sqlite_file_is_opened_while_another_connection_holds_its_write_lock(tmp_path, monkeypatch):
    """Switching a new file to WAL reads it, then writes it, and SQLite refuses that at once when
    another connection holds the write lock, busy_timeout or not: what a process opening a new
    database meets while another makes it. The Store waits for the lock, as busy_timeout would, and
    past that says which file."""
    from sqlalchemy.exc import OperationalError

    def held(path):  # another process, making the same new database this moment
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        return other

    other = held(tmp_path / "experiments.db")
    release = threading.Timer(0.5, other.rollback)
    release.start()
    started = time.monotonic()
    store = Store(str(tmp_path / "experiments.db"))
    assert time.monotonic() - started > 0.3  # it waited for the lock rather than failing
    release.join()
    other.close()
    assert store.create_run({"strategy": "full"}).id == 1
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()

    path = tmp_path / "held.db"
    other = held(path)
    monkeypatch.setattr(store_engine, "_BUSY_TIMEOUT_S", 0.2)
    with pytest.raises(
        OperationalError, match=f"could not switch {re.escape(str(path))} to WAL .* its write lock for 0.2 s"
    ):
        Store(str(path))
    other.close()
