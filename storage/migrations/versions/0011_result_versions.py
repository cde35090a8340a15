"""result versions: why a job ran (the reason its report states), the series number of each output

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 18:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: Union[str, Sequence[str], None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("outputs") as batch:
        batch.add_column(sa.Column("series_number", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outputs") as batch:
        batch.drop_column("series_number")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reason")
