"""several nodes on one index: run heartbeats, job and delivery claims

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 08:30:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: Union[str, Sequence[str], None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("node_runs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
    for table in ("jobs", "deliveries"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("claimed_by", sa.Integer(), nullable=True))
            batch.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    for table in ("jobs", "deliveries"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease_until")
            batch.drop_column("claimed_by")
    with op.batch_alter_table("node_runs") as batch:
        batch.drop_column("heartbeat_at")
