"""whole-slide histology results (slide embeddings of the fusion's histology arm)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 08:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "slide_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_fk", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("mil_model", sa.String(length=128), nullable=False),
        sa.Column("encoder_model", sa.String(length=128), nullable=False),
        sa.Column("embedding", sa.JSON(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("patches", sa.Integer(), nullable=False),
        sa.Column("tissue_fraction", sa.Float(), nullable=False),
        sa.Column("microns_per_pixel", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_fk"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_fk", "series_instance_uid", name="uq_slide_result"),
    )
    op.create_index(op.f("ix_slide_results_job_fk"), "slide_results", ["job_fk"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_slide_results_job_fk"), table_name="slide_results")
    op.drop_table("slide_results")
