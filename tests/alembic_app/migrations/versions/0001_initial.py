"""initial: accounts (unique email) and their entries

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "account",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("email", sa.String(50), nullable=False, unique=True),
        sa.Column("name", sa.String(50), nullable=False),
    )
    op.create_table(
        "entry",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("account.id", ondelete="CASCADE"), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
    )


def downgrade():
    op.drop_table("entry")
    op.drop_table("account")
