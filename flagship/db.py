"""Database engine, sessions and the store-wide change counter."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import Field, SQLModel

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the one clock adapters use)."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite drops tzinfo on the way back; put UTC back on."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


class MetaRecord(SQLModel, table=True):
    """Single-row table: the revision of everything a snapshot contains."""

    __tablename__ = "meta"
    id: int = Field(default=1, primary_key=True)
    snapshot_revision: int = Field(default=0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; busy_timeout makes concurrent writers
    # from several server processes wait instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is off; `_sqlite_begin` emits BEGIN itself.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: sa.Connection) -> None:
    # A write transaction takes the write lock up front (BEGIN IMMEDIATE), so it waits
    # on busy_timeout instead of failing when it upgrades a read lock under WAL.
    immediate = conn.get_execution_options().get("flagship_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> Engine:
    """Create the engine for `url` with the per-backend settings flagship relies on."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "connect", _no_driver_transactions)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """The engine plus a session factory; attached to the app as `app.extensions['flagship.db']`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_sessions = sessionmaker(
            self.engine.execution_options(flagship_write=True), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (its transaction is rolled back or committed on exit)."""
        with self.sessions() as session:
            with session.begin():
                yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on error."""
        with self.write_sessions() as session:
            with session.begin():
                yield session

    def read_snapshot_revision(self) -> int:
        """The current store revision (cheap: one primary-key read)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.text("SELECT snapshot_revision FROM meta WHERE id = 1")).scalar()
        return int(value or 0)

    def dispose(self) -> None:
        self.engine.dispose()


def bump_snapshot_revision(session: Session) -> int:
    """Increment the store revision inside the caller's transaction and return it."""
    result = session.execute(
        sa.update(MetaRecord).where(MetaRecord.id == 1)
        .values(snapshot_revision=MetaRecord.snapshot_revision + 1)
        .returning(MetaRecord.snapshot_revision))
    value = result.scalar()
    if value is None:  # the migration seeds the row; a hand-made schema may not have it
        session.add(MetaRecord(id=1, snapshot_revision=1))
        return 1
    return int(value)


def upgrade(url: str) -> None:
    """Apply alembic migrations up to head."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")
