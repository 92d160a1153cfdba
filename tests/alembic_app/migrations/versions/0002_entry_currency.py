"""entry.currency: NOT NULL with a server default, the table rebuilt in batch mode

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # recreate="always": create _alembic_tmp_entry, copy, drop entry, rename
    with op.batch_alter_table("entry", recreate="always") as batch:
        batch.add_column(sa.Column("currency", sa.String(3), nullable=False, server_default="EUR"))


def downgrade():
    with op.batch_alter_table("entry") as batch:
        batch.drop_column("currency")
