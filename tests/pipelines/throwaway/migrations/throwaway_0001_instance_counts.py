"""throwaway pipeline: its instance counts (an Alembic branch of its own, after the core revision it needs)

Revision ID: throwaway_0001
Revises:
Depends on: 0011
Create Date: 2026-12-05 10:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "throwaway_0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = ("throwaway",)
depends_on: Union[str, Sequence[str], None] = "0011"  # the core schema it refers to (jobs)


def upgrade() -> None:
    op.create_table(
        "throwaway_instance_counts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_fk", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("rows_columns", sa.JSON(), nullable=False),
        sa.Column("mean_stored_value", sa.Float(), nullable=False),
        sa.Column("coverage", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_fk"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_throwaway_instance_counts_job_fk", "throwaway_instance_counts", ["job_fk"])


def downgrade() -> None:
    op.drop_index("ix_throwaway_instance_counts_job_fk", table_name="throwaway_instance_counts")
    op.drop_table("throwaway_instance_counts")
