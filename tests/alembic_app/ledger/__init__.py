"""A small SQLAlchemy 2.x application (accounts and their entries) for tests/alembic.rs.

LEDGER_VERSION=1 is the release before migrations 0002-0004, LEDGER_VERSION=2 (the default)
the release after them. It knows nothing about replication.
"""
