"""The schema of the release before the team setup, and older databases brought up to it.

Revision 0001, the first. On a new database it makes every table as that release's store.py did
(commit b3e9f4b). On a database made by that release or an earlier one (tables, no
alembic_version) it makes only the tables that are missing, and brings `runs` up: the columns added
since the first release (uid, resume, notes, tags), a uid for every run that has none, and uid
NOT NULL and unique under a constraint, as a new database has it (a database upgraded by the old
code had a nullable uid under a unique index).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUS_CHECK = "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')"


def _runs_fk() -> sa.ForeignKey:
    return sa.ForeignKey("runs.id", ondelete="CASCADE")


def _experiments_fk() -> sa.ForeignKey:
    return sa.ForeignKey("experiments.id", ondelete="CASCADE")


# Each table as that release made it, in an order that makes a referenced table first.
TABLES: dict[str, Callable[[], list[sa.schema.SchemaItem]]] = {
    "experiments": lambda: [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    ],
    "store_info": lambda: [
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    ],
    "runs": lambda: [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("experiment_id", sa.Integer, _experiments_fk(), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("worker_pid", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("epochs_done", sa.Integer, nullable=False),
        sa.Column("best_val_acc", sa.Float, nullable=True),
        sa.Column("best_epoch", sa.Integer, nullable=True),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("environment", sa.JSON, nullable=False),
        sa.Column("run_dir", sa.Text, nullable=True),
        sa.Column("resume", sa.Boolean, nullable=False),
        sa.Column("notes", sa.Text, nullable=True),
        sa.Column("tags", sa.JSON, nullable=True),
        sa.CheckConstraint(STATUS_CHECK, name="run_status"),
    ],
    "artifacts": lambda: [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("experiment_id", sa.Integer, _experiments_fk(), nullable=False, index=True),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    ],
    "epoch_metrics": lambda: [
        sa.Column("run_id", sa.Integer, _runs_fk(), primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    ],
    "run_curves": lambda: [
        sa.Column("run_id", sa.Integer, _runs_fk(), primary_key=True),
        sa.Column("keys", sa.JSON, nullable=False),
        sa.Column("epochs", sa.JSON, nullable=False),
        sa.Column("matrix", sa.LargeBinary, nullable=False),
    ],
    "class_metrics": lambda: [
        sa.Column("run_id", sa.Integer, _runs_fk(), primary_key=True),
        sa.Column("class_index", sa.Integer, primary_key=True),
        sa.Column("class_name", sa.String(300), nullable=False),
        sa.Column("precision", sa.Float, nullable=False),
        sa.Column("recall", sa.Float, nullable=False),
        sa.Column("f1", sa.Float, nullable=False),
        sa.Column("support", sa.Integer, nullable=False),
        sa.Column("confusion", sa.JSON, nullable=False),
    ],
    "predictions": lambda: [
        sa.Column("run_id", sa.Integer, _runs_fk(), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("pred", sa.Integer, nullable=False),
        sa.Column("prob", sa.Float, nullable=False),
        sa.Column("true_prob", sa.Float, nullable=False),
        sa.Column("loss", sa.Float, nullable=False),
    ],
}

# Columns of runs added after the first release (what store._ADDED_COLUMNS used to add).
ADDED_TO_RUNS: dict[str, Callable[[], sa.Column]] = {
    "uid": lambda: sa.Column("uid", sa.String(32), nullable=True),  # NOT NULL once every run has one
    "resume": lambda: sa.Column("resume", sa.Boolean, nullable=False, server_default=sa.false()),
    "notes": lambda: sa.Column("notes", sa.Text, nullable=True),
    "tags": lambda: sa.Column("tags", sa.JSON, nullable=True),
}

UID_UNIQUE = "runs_uid_key"  # the name PostgreSQL gives the constraint a new database gets


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    for name, columns in TABLES.items():
        if name not in present:
            op.create_table(name, *columns())
    if "runs" in present:
        _bring_runs_up(bind)


def _bring_runs_up(bind: sa.engine.Connection) -> None:
    have = {c["name"] for c in sa.inspect(bind).get_columns("runs")}
    for name, column in ADDED_TO_RUNS.items():
        if name not in have:
            op.add_column("runs", column())
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("uid", sa.String))
    without = bind.execute(sa.select(runs.c.id).where(runs.c.uid.is_(None))).scalars().all()
    if without:
        bind.execute(
            sa.update(runs).where(runs.c.id == sa.bindparam("run_id")).values(uid=sa.bindparam("new_uid")),
            [{"run_id": i, "new_uid": uuid.uuid4().hex} for i in without],
        )
    names = sa.inspect(bind)  # a new inspector: the one above cached the columns before they were added
    uid = next(c for c in names.get_columns("runs") if c["name"] == "uid")
    index = any(i["name"] == "ix_runs_uid" for i in names.get_indexes("runs"))
    unique = any(u["column_names"] == ["uid"] for u in names.get_unique_constraints("runs"))
    if uid["nullable"] or index or not unique:
        # SQLite alters a column by copying the table (batch mode); PostgreSQL alters it in place.
        with op.batch_alter_table("runs") as runs_op:
            if index:
                runs_op.drop_index("ix_runs_uid")
            if uid["nullable"]:
                runs_op.alter_column("uid", existing_type=sa.String(32), nullable=False)
            if not unique:
                runs_op.create_unique_constraint(UID_UNIQUE, ["uid"])


def downgrade() -> None:
    for name in reversed(list(TABLES)):
        op.drop_table(name)
