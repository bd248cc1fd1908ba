"""How the store talks to its database: the URL, the engine, SQLite's settings, JSON on PostgreSQL.

SQLite (the default, `experiments.db` in the working folder) gets WAL, so the dashboard reads
while a run writes; a busy timeout, so a writer waits out another instead of failing with
"database is locked"; and foreign keys, which SQLite enforces only when asked (the settings
mlflow's SQLAlchemy store gives it). The same code runs on PostgreSQL through `DATABASE_URL`;
there a float JSON cannot hold (NaN, infinity: a diverged run's summary has them) is written as
{"$float": "NaN"} and read back as the float.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url

from .. import settings

_BUSY_TIMEOUT_S = 30  # how long SQLite waits out another connection's write lock before "database is locked"


def default_db_url() -> str:
    """$DATABASE_URL, else SQLite experiments.db in the working folder."""
    return settings.current().database_url


def database_url(url: str | None) -> str:
    """`url` as SQLAlchemy takes it (default: default_db_url()); a plain file path is that SQLite file."""
    url = url or default_db_url()
    return url if "://" in url else f"sqlite:///{Path(url).expanduser().resolve()}"


def make_engine(url: str) -> Engine:
    """An engine on `url` (database_url's form) with the settings above; a SQLite file's folder made if missing."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        _make_folder(url)
    connect_args = {"timeout": _BUSY_TIMEOUT_S} if is_sqlite else {}
    # PostgreSQL's json type has no NaN or Infinity: there they are written as {"$float": "NaN"}
    # and read back as floats. SQLite keeps them as they are.
    codec = {} if is_sqlite else {"json_serializer": _json_dumps, "json_deserializer": _json_loads}
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not is_sqlite, **codec)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a load allocates its many small objects at once: each
    collection would walk every object made so far (it tripled a 500-run comparison's load)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def rows_matched(result: Result[Any]) -> int:
    """The rows an UPDATE matched. Session.execute is typed as returning a Result; for an UPDATE it is
    a CursorResult, which has the count."""
    return cast(CursorResult[Any], result).rowcount


def _make_folder(url: str) -> None:
    """The folder of a SQLite database file, made if missing (as the runs folder is): SQLite makes
    the file, not its folder. One that cannot be made is left to SQLite's own error."""
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        with contextlib.suppress(OSError):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


# --- JSON without NaN on PostgreSQL -------------------------------------------------------------

_NOT_FINITE = "$float"  # {"$float": "NaN" | "Infinity" | "-Infinity"}: a float JSON cannot hold


def _json_dumps(value: Any) -> str:
    """JSON without the NaN and Infinity tokens that PostgreSQL refuses."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # only when a float is not finite: the slow path
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {_NOT_FINITE: repr(value).replace("nan", "NaN").replace("inf", "Infinity")}
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_loads(text: str) -> Any:
    return json.loads(text, object_hook=_float_back)


def _float_back(d: dict) -> Any:
    return float(d[_NOT_FINITE]) if len(d) == 1 and _NOT_FINITE in d else d


# --- SQLite -------------------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the dashboard read while a run writes; busy_timeout waits out a writer
    # instead of failing with "database is locked"; SQLite enforces foreign keys only on ask.
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
    _switch_to_wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _switch_to_wal(cur: sqlite3.Cursor) -> None:
    """PRAGMA journal_mode=WAL, retried for up to the busy timeout while another connection holds
    the database's write lock. On a file not yet in WAL (a new one) the switch reads the header and
    then writes it, and SQLite refuses that read-to-write upgrade at once with SQLITE_BUSY, without
    waiting out busy_timeout (waiting could deadlock): several processes opening a new database at
    the same moment meet it. On a database already in WAL the switch only reads: it never waits."""
    deadline, pause = time.monotonic() + _BUSY_TIMEOUT_S, 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() > deadline:
                path = cur.execute("PRAGMA database_list").fetchone()[2]
                raise sqlite3.OperationalError(
                    f"could not switch {path} to WAL (PRAGMA journal_mode=WAL): another connection held "
                    f"its write lock for {_BUSY_TIMEOUT_S} s"
                ) from e
        time.sleep(pause)
        pause = min(2 * pause, 0.05)
