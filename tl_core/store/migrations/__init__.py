"""The store's schema, revision by revision (Alembic), and bringing a database up to it.

`Store(url)` calls `upgrade(engine)` when it opens a database: a brand-new one gets every table, a
database made by an earlier release (tables, but no `alembic_version`) is upgraded in place with
every row kept. Opening a database that is already at `HEAD` costs two small queries and imports
no Alembic. When several processes open a new database at once, one migrates and the others wait
for it (PostgreSQL: a transaction-scoped advisory lock; SQLite: the database's write lock, taken
with BEGIN IMMEDIATE and waited on for up to the busy timeout), then find it at head.

Alembic is configured here, without an alembic.ini: `script_location` is this folder, so it works
from any working folder and inside the Docker image. The revisions are in `versions/`:

  0001  the schema of the release before the team setup (experiments, store_info, runs with uid,
        resume, notes and tags, artifacts, epoch_metrics, run_curves, class_metrics, predictions);
        it also brings an even older database up (runs without those columns: every run gets a uid)
  0002  workers, and runs' worker_id, executor and launched_by
  0003  jobs: a page's LR range tests, probes, predictions and exports, queued for the workers
  0004  exclusions: datasets' exclusion lists (images left out of training, or moved to another class)

A new revision: change the models in tables.py, then write `versions/vNNNN_<what>.py` by hand or
start it with `new_revision("what changed", url)` (autogenerate against a database at head), and
bump `HEAD`. tests/test_migrations.py checks that the migrated schema and the models agree.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ...errors import UserError

FOLDER = Path(__file__).resolve().parent
HEAD = "0004"  # the newest revision in versions/ (a test checks the two agree)

_ADVISORY_KEY = 7_461_616_273  # PostgreSQL's lock on "this database is being migrated"
_in_process = threading.Lock()  # Alembic's `op` and `context` are process-wide: one migration at a time


def config(connection: Connection | None = None):
    """Alembic's Config, made in code: the scripts in this folder, run on `connection`."""
    from alembic.config import Config  # Alembic: loaded only when a database is checked or upgraded

    cfg = Config()
    cfg.set_main_option("script_location", str(FOLDER).replace("%", "%%"))
    cfg.set_main_option("file_template", "v%%(rev)s_%%(slug)s")  # an importable module name
    cfg.attributes["connection"] = connection
    return cfg


def current(connection: Connection) -> str | None:
    """The database's revision; None for a new database or one made before migrations."""
    if not connection.dialect.has_table(connection, "alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Bring the database to HEAD, keeping every row: nothing to do (and no Alembic) when it is there."""
    with engine.connect() as c:
        if current(c) == HEAD:
            return
    with _in_process, _exclusive(engine) as c:
        found = current(c)
        if found != HEAD:  # another process may have migrated it while this one waited
            from alembic import command
            from alembic.script import ScriptDirectory

            if found is not None and found not in {
                s.revision for s in ScriptDirectory.from_config(config()).walk_revisions()
            }:
                raise UserError(
                    f"{engine.url.render_as_string(hide_password=True)} is at schema revision "
                    f"{found}, which this TransferLab does not know (its newest is {HEAD}): a newer "
                    f"release made it. Upgrade TransferLab (git pull; pip install -r "
                    f"requirements.txt) to open it."
                )
            command.upgrade(config(c), "head")


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database back to `revision`, under the same lock and with SQLite's foreign keys off
    (a batch-mode table copy with them on would delete every row that refers to the table)."""
    from alembic import command

    with _in_process, _exclusive(engine) as c:
        command.downgrade(config(c), revision)


class _exclusive:
    """A connection in a transaction that no other process migrates beside: on PostgreSQL a
    transaction-scoped advisory lock (DDL is transactional there), on SQLite the write lock. SQLite
    runs with foreign keys off meanwhile, as Alembic's batch mode needs: it copies a table, drops
    the old one and renames the copy, and a drop with foreign keys on deletes the rows that refer to it."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __enter__(self) -> Connection:
        self.c = c = self.engine.connect()
        self.sqlite = c.dialect.name == "sqlite"
        if self.sqlite:
            c.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: before BEGIN
            c.exec_driver_sql("BEGIN IMMEDIATE")  # waits out another writer for the busy timeout
        else:
            c.begin()
            if c.dialect.name == "postgresql":
                c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
        return c

    def __exit__(self, kind, error, tb) -> None:
        c = self.c
        try:
            if kind is None and self.sqlite:
                broken = c.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"the migration left rows whose foreign keys point nowhere: {broken[:5]}")
            if kind is None:
                c.commit()
            else:
                c.rollback()
        finally:
            if self.sqlite:
                c.exec_driver_sql("PRAGMA foreign_keys=ON")
            c.close()


def new_revision(message: str, url: str) -> None:
    """Start the next revision file from the models' differences with `url` (a database at HEAD)."""
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            command.revision(config(c), message=message, autogenerate=True, rev_id=f"{int(HEAD) + 1:04d}")
    finally:
        engine.dispose()
