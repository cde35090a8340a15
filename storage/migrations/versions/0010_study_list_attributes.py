"""study list: study description and patient name kept at receive time; studies by last received

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 18:00:00

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: Union[str, Sequence[str], None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Studies received before this revision keep empty values (the files are not read back here).
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("study_description", sa.String(length=64), nullable=False, server_default=""))
        batch.add_column(sa.Column("patient_name", sa.String(length=200), nullable=False, server_default=""))
        batch.create_index("ix_studies_last_received_at", ["last_received_at"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_last_received_at")
        batch.drop_column("patient_name")
        batch.drop_column("study_description")
