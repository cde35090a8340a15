"""method fidelity: lesions of the patient CytAct summary

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


def downgrade() -> None:
    with op.batch_alter_table("lesion_results") as batch:
        batch.drop_column("patient_summary")
