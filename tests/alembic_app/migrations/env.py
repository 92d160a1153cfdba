"""Alembic's environment: online migrations on LEDGER_DB, batch mode for SQLite."""
import os

from alembic import context
from sqlalchemy import create_engine

from ledger.models import Base

config = context.config


def run_migrations_online():
    db = os.environ["LEDGER_DB"]
    # foreign keys stay off here (SQLite's default): batch mode drops and recreates tables
    engine = create_engine(f"sqlite:///{db}", connect_args={"timeout": 30})
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline mode is not used")
run_migrations_online()
