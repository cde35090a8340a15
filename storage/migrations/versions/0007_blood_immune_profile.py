"""blood immune profile at T0 and T1

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 09:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "blood_values",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("time_point", sa.String(length=2), nullable=False),
        sa.Column("marker", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("sample_date", sa.Date(), nullable=True),
        sa.Column("source_file", sa.String(length=255), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["patient_fk"], ["patients.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_fk", "time_point", "marker", name="uq_blood_value"),
    )
    op.create_index(op.f("ix_blood_values_patient_fk"), "blood_values", ["patient_fk"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_blood_values_patient_fk"), table_name="blood_values")
    op.drop_table("blood_values")
