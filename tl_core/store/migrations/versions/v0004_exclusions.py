"""Datasets' exclusion lists (issue #25).

Revision 0004, after 0003. Table `exclusions`: an image of a dataset folder left out of training or
moved to another class (its action under a check constraint, the class it is read as), who added it,
when and why; keyed by the folder's resolved path and the image's path relative to it. Until this
revision there were no exclusions: there is nothing to bring over.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exclusions",
        sa.Column("dataset", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("to_class", sa.String(300), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("added_by", sa.String(200), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.CheckConstraint("action IN ('exclude', 'relabel')", name="exclusion_action"),
    )


def downgrade() -> None:
    op.drop_table("exclusions")
