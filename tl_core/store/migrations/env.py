"""Alembic's entry point: runs the revisions on the connection `upgrade` hands over (see __init__).

There is no alembic.ini and no offline (SQL script) mode: migrations run when a Store opens a database.
"""

from __future__ import annotations

from alembic import context


def run() -> None:
    from tl_core.store.tables import Base  # absolute: Alembic runs this file as a script, not in its package

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run the migrations through tl_core.store.migrations.upgrade(engine), which hands "
            "Alembic a connection (there is no alembic.ini with a URL)"
        )
    # render_as_batch: a revision that alters a column gets SQLite's copy-and-move, not an ALTER it lacks.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if getattr(context, "_proxy", None) is not None:  # run by Alembic; a plain import (tests/test_structure) does nothing
    run()
