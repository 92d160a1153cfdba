"""account.email: String(50) -> String(200), which batch mode does by rebuilding the table
(the parent of entry, with its unique constraint)

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("account") as batch:
        batch.alter_column("email", type_=sa.String(200), existing_type=sa.String(50), existing_nullable=False)


def downgrade():
    with op.batch_alter_table("account") as batch:
        batch.alter_column("email", type_=sa.String(50), existing_type=sa.String(200), existing_nullable=False)
