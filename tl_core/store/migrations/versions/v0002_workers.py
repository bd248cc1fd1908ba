"""Workers that heartbeat, and who ran each run: the team setup (issue #14).

Revision 0002, after 0001. Table `workers`; runs' `worker_id` (indexed), `executor` ("local",
"ray", or "here" for a run trained in the foreground) and `launched_by` (indexed). A database made
while these were being written (created by the models, without alembic_version) has some or all of
them already: only what is missing is added.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ADDED_TO_RUNS: dict[str, tuple[Callable[[], sa.Column], str | None]] = {
    "worker_id": (lambda: sa.Column("worker_id", sa.Integer, nullable=True), "ix_runs_worker_id"),
    "executor": (lambda: sa.Column("executor", sa.String(20), nullable=True), None),
    "launched_by": (lambda: sa.Column("launched_by", sa.String(200), nullable=True), "ix_runs_launched_by"),
}


def upgrade() -> None:
    names = sa.inspect(op.get_bind())
    if "workers" not in names.get_table_names():
        op.create_table(
            "workers",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("host", sa.String(200), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("executor", sa.String(20), nullable=False),
            sa.Column("started_at", sa.DateTime, nullable=False),
            sa.Column("heartbeat_at", sa.DateTime, nullable=False),
            sa.Column("stopped_at", sa.DateTime, nullable=True),
        )
    have = {c["name"] for c in names.get_columns("runs")}
    indexes = {i["name"] for i in names.get_indexes("runs")}
    for name, (column, index) in ADDED_TO_RUNS.items():
        if name not in have:
            op.add_column("runs", column())
        if index and index not in indexes:
            op.create_index(index, "runs", [name])


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs_op:
        for name, (_column, index) in reversed(ADDED_TO_RUNS.items()):
            if index:
                runs_op.drop_index(index)
            runs_op.drop_column(name)
    op.drop_table("workers")
