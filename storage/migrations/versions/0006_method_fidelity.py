"""method fidelity: lesions of the patient CytAct summary; CT assessments over time (nadir, best response,
resistance)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 08:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("lesion_results") as batch:
        batch.add_column(sa.Column("patient_summary", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("ct_assessments") as batch:
        batch.add_column(sa.Column("assessment", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("weeks", sa.Float(), nullable=True))
        batch.add_column(sa.Column("nadir_mm", sa.Float(), nullable=True))
        batch.add_column(sa.Column("best_response", sa.String(length=4), nullable=False, server_default=""))
        batch.add_column(sa.Column("resistance", sa.String(length=16), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("ct_assessments") as batch:
        for column in ("resistance", "best_response", "nadir_mm", "weeks", "assessment"):
            batch.drop_column(column)
    with op.batch_alter_table("lesion_results") as batch:
        batch.drop_column("patient_summary")
