"""A page's jobs queued for the workers, as runs are (issue #22).

Revision 0003, after 0002. Table `jobs`: an LR range test, a probe, a prediction or an export a
page started (service/jobs.py): its command and arguments, the run settings that set its memory,
its status under a check constraint, who runs it (worker, host, pid), the GPU it was placed on, its
log, its error and its measured peak. Until this revision such a job was a process the dashboard
started with no record beyond its result: there is nothing to bring over.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATUS_CHECK = "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("command", sa.String(20), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        sa.Column("worker_id", sa.Integer, nullable=True),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("gpu", sa.String(100), nullable=True),
        sa.Column("log", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("peak_mb", sa.Float, nullable=True),
        sa.CheckConstraint(STATUS_CHECK, name="job_status"),
    )
    op.create_index("ix_jobs_experiment_id", "jobs", ["experiment_id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_index("ix_jobs_experiment_id", "jobs")
    op.drop_table("jobs")
