"""The ledger's models. LEDGER_VERSION=1 lacks entry.currency (0002) and account.note (0003)."""
import os

from sqlalchemy import ForeignKey, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

VERSION = int(os.environ.get("LEDGER_VERSION", "2"))


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "account"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(200) if VERSION >= 2 else String(50), unique=True)
    name: Mapped[str] = mapped_column(String(50))
    if VERSION >= 2:
        note: Mapped[str | None] = mapped_column(Text)


class Entry(Base):
    __tablename__ = "entry"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    amount: Mapped[int]
    if VERSION >= 2:
        currency: Mapped[str] = mapped_column(String(3), server_default="EUR")


def engine(db):
    """The application's engine: foreign keys on, and real transactions (SQLAlchemy's recipe
    for pysqlite: the driver's own BEGIN handling off, BEGIN IMMEDIATE on each begin)."""
    e = create_engine(f"sqlite:///{db}", connect_args={"timeout": 30})

    @event.listens_for(e, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(e, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return e
