"""Database engine, sessions and the store-wide change counter."""
from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import Field, SQLModel

from flagship import pid

T = TypeVar("T")
NOT_DONE: Any = type("NotDone", (), {"__repr__": lambda self: "NOT_DONE"})()  # a write left undone
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


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the writer; busy_timeout makes concurrent writers
        # from several server processes wait instead of failing with "database is locked".
        # synchronous: NORMAL under WAL keeps every commit through a crash of the process
        # (the SIGKILL tests) and fsyncs at checkpoints; FULL fsyncs the WAL at each commit,
        # so a commit also survives a power cut.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
    return apply


def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is off; `_sqlite_begin` emits BEGIN itself.
    dbapi_connection.isolation_level = None


def _sqlite_begin(conn: sa.Connection) -> None:
    # A write transaction takes the write lock up front (BEGIN IMMEDIATE), so it waits
    # on busy_timeout instead of failing when it upgrades a read lock under WAL.
    if conn.connection.driver_connection.in_transaction:
        return  # the group-commit writer began it on the driver (Database._driver_transaction)
    immediate = conn.get_execution_options().get("flagship_write", False)
    sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"
    if conn.dispatch.before_cursor_execute:  # someone (tracing) watches statements
        conn.exec_driver_sql(sql)
    else:  # on the driver: an execution context costs more than the BEGIN
        _on_driver(conn, lambda cursor: cursor.execute(sql), sql, ())


def _on_driver(conn: sa.Connection, run: Callable[[Any], T], sql: str, params: Any) -> T:
    """`run(cursor)` on the DBAPI connection under `conn`, its errors raised as SQLAlchemy's
    (so a locked or unreachable database is a 503 like everywhere else)."""
    cursor = conn.connection.driver_connection.cursor()
    try:
        with _as_sqlalchemy_errors(conn.dialect, sql, params):
            return run(cursor)
    finally:
        cursor.close()


@contextmanager
def _as_sqlalchemy_errors(dialect: Any, sql: str, params: Any) -> Iterator[None]:
    """The driver's errors inside, raised as SQLAlchemy's for `sql`."""
    try:
        yield
    except dialect.loaded_dbapi.Error as error:
        raise sa.exc.DBAPIError.instance(sql, params, error, dialect.loaded_dbapi.Error) from error


def _watched(engine: Engine) -> bool:
    """Does anything listen to `engine`'s statements or transactions (tracing)? Asked of
    the engine itself, where instrumentation registers (directly or on the Engine class):
    through a connection each of these four lookups builds a joined listener collection,
    together several per cent of a single event's CPU."""
    dispatch = engine.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute
                or dispatch.commit or dispatch.rollback)


@contextmanager
def _driver_transaction(conn: sa.Connection) -> Iterator[None]:
    """A write transaction on SQLite's own connection under `conn` (BEGIN IMMEDIATE ...
    COMMIT), for the group-commit writer's kept connection.

    SQLAlchemy's Transaction around a one-event write cost about as much as the INSERT.
    Statements run through `conn.execute` inside still work: SQLAlchemy autobegins, the
    `begin` listener sees SQLite already in the transaction and emits nothing, and the
    commit here goes through SQLAlchemy then, so both sides agree it has ended."""
    driver = conn.connection.driver_connection
    _on_driver(conn, lambda cursor: cursor.execute("BEGIN IMMEDIATE"), "BEGIN IMMEDIATE", ())
    try:
        yield
    except BaseException:
        if conn.in_transaction():
            conn.rollback()
        elif driver.in_transaction:
            with _as_sqlalchemy_errors(conn.dialect, "ROLLBACK", ()):
                driver.rollback()
        raise
    if conn.in_transaction():
        conn.commit()
    else:
        with _as_sqlalchemy_errors(conn.dialect, "COMMIT", ()):
            driver.commit()


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    # the server checkpoints from a background thread instead (Database.checkpoint): a
    # checkpoint run by a committing request fsyncs the database file while holding the
    # write lock, which stalled every writer for ~130 ms every few seconds
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


def make_engine(url: str, background_checkpoint: bool = False, synchronous: str = "normal") -> Engine:
    """Create the engine for `url` with the per-backend settings flagship relies on."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas(synchronous))
        if background_checkpoint:
            event.listen(engine, "connect", _no_autocheckpoint)
        event.listen(engine, "connect", _no_driver_transactions)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # fail fast when the server is unreachable or the pool is exhausted (a 503 with
    # Retry-After) instead of holding request threads for the 30 s defaults
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10,
                            connect_args={"connect_timeout": 5})


class SqliteWriteLock:
    """Serialises SQLite writers of this process (thread lock) and across processes (flock).

    SQLite's own busy handler polls with sleeps of up to 100 ms, which shows up as p99
    latency when writers collide; a blocking flock wakes the next writer as soon as the
    lock is released.
    """

    def __init__(self, database_path: str | None, suffix: str = ".writelock") -> None:
        self._path = f"{database_path}{suffix}" if database_path else None
        self._forked()

    def _forked(self) -> None:
        # A forked child (an RQ work-horse) must not share the parent's lock file
        # description (flock would not exclude the two) nor a thread lock some parent
        # thread held at the fork: it starts with its own.
        self._pid = pid.current()
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self._pid != pid.current():
            self._forked()
        with self._thread_lock:
            if self._path is None:
                yield
                return
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


class Database:
    """The engine plus session factories; the runtime holds one per app.

    `revision_check` > 0 (serving processes): `snapshot_revision()` re-reads the store
    revision at most that often, so the hot path makes no database round trip to learn
    its snapshot is current; a change committed by this process is seen at once (the
    sessions that bump the revision say so on commit), another process's within
    `revision_check` seconds. One mechanism for SQLite and PostgreSQL alike, costing at
    most 1/`revision_check` primary-key reads per second per process however busy it is,
    and nothing when idle; LISTEN/NOTIFY or Redis pub/sub would need a connection and a
    thread of their own per process, and Redis is not there on the embedded default.
    """

    def __init__(self, url: str, background_checkpoint: bool = False,
                 revision_check: float = 0.0, synchronous: str = "normal") -> None:
        self.url = url
        self.revision_check = revision_check
        self._commits = 0  # this process's commits that changed the revision
        self._known = (float("-inf"), -1, 0)  # (read at, self._commits then, revision)
        self.engine = make_engine(url, background_checkpoint, synchronous)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        path = self.engine.url.database if self.is_sqlite else None
        file_path = path if path and path != ":memory:" else None
        self._write_lock = SqliteWriteLock(file_path) if self.is_sqlite else None
        # aggregation rounds exclude each other, not the writers (see aggregate.py)
        self.aggregate_lock = SqliteWriteLock(file_path, ".aggregatelock") if self.is_sqlite else None
        from flagship.writer import BatchWriter

        self._writer = BatchWriter(self._writer_transaction, self._writer_statement)
        self._writer_conn: tuple[int, sa.Connection] | None = None  # (pid, connection)
        self._selects: dict[Any, _DirectSelect] = {}  # select_rows' compiled statements
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(flagship_write=True)
        self.write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)
        for factory in (self.sessions, self.write_sessions):
            event.listen(factory, "after_commit", self._after_commit)
            event.listen(factory, "after_soft_rollback", _forget_bump)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (its transaction is rolled back or committed on exit)."""
        with self.sessions() as session:
            with session.begin():
                yield session

    def select_rows(self, statement: sa.Select[Any], params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of a read-only SELECT as tuples, with the values SQLAlchemy hands back.

        For the hot path's one read (a unit's sticky assignments): on SQLite, with nothing
        watching statements, it runs on a pooled connection's driver, compiled once, outside
        any transaction (a single SELECT reads one consistent snapshot), at about a fifth
        of the CPU of `Connection.execute`; elsewhere, through SQLAlchemy.
        """
        if not self.is_sqlite or _watched(self.engine):
            with self.engine.connect() as conn:
                return [tuple(row) for row in conn.execute(statement, params)]
        try:
            direct = self._selects[statement]
        except KeyError:
            direct = self._selects[statement] = _DirectSelect(statement, self.engine.dialect)
        values = direct.binds.parameters(params)
        raw = self.engine.raw_connection()
        try:
            with _as_sqlalchemy_errors(self.engine.dialect, direct.binds.sql, values):
                rows = raw.driver_connection.execute(direct.binds.sql, values).fetchall()
        finally:
            raw.close()
        processors = direct.results
        if not any(processors):
            return rows
        return [tuple(value if process is None or value is None else process(value)
                      for process, value in zip(processors, row)) for row in rows]

    def write_lock(self) -> Any:
        """Held around every write transaction (a no-op on PostgreSQL)."""
        return self._write_lock.hold() if self._write_lock else nullcontext()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on error."""
        with self.write_lock(), self.write_sessions() as session:
            with session.begin():
                yield session

    @contextmanager
    def write_connection(self) -> Iterator[sa.Connection]:
        """A Core-level write transaction (bulk paths), under the same lock."""
        with self.write_lock(), self._write_engine.begin() as conn:
            yield conn

    @contextmanager
    def _writer_transaction(self) -> Iterator[sa.Connection]:
        """The group-commit writer's transactions. On SQLite they share one connection,
        kept open: only the writer's leader uses it, one transaction at a time, and taking
        a connection from the pool and giving it back cost about as much as a one-event
        INSERT. A child process after fork opens its own (a SQLite connection must not be
        used across fork)."""
        if not self.is_sqlite:
            with self.write_connection() as conn:
                yield conn
            return
        with self._kept_connection() as conn:
            if _watched(self.engine):  # tracing sees BEGIN and COMMIT as statements
                with conn.begin():
                    yield conn
            else:
                with _driver_transaction(conn):
                    yield conn

    def _writer_statement(self, run: Callable[[sa.Connection], Any]) -> Any:
        """`run(conn)` on the writer's kept SQLite connection outside any transaction, for
        a write that is one statement and so commits by itself (SQLite wraps it in its own
        transaction): no BEGIN and COMMIT round trips around it. NOT_DONE when that cannot
        be (PostgreSQL, or tracing, which should see a transaction) or `run` says so; the
        caller then writes in a transaction."""
        if not self.is_sqlite:
            return NOT_DONE
        with self._kept_connection() as conn:
            return NOT_DONE if _watched(self.engine) else run(conn)

    @contextmanager
    def _kept_connection(self) -> Iterator[sa.Connection]:
        """The writer's SQLite connection (see `_writer_transaction`), under the write lock."""
        with self.write_lock():
            held, me = self._writer_conn, pid.current()
            if held is None or held[0] != me or held[1].closed or held[1].invalidated:
                if held is not None and held[0] != me:
                    _INHERITED.append(held[1])  # never closed here: the parent's to close
                held = self._writer_conn = (me, self._write_engine.connect())
            conn = held[1]
            try:
                yield conn
            except BaseException:
                # a failed COMMIT (disk full, I/O error) ends SQLAlchemy's transaction but
                # can leave SQLite's open, holding the database's write lock: drop the
                # connection rather than wedge every later write, here and in other processes
                try:
                    stuck = conn.invalidated or conn.connection.driver_connection.in_transaction
                except Exception:  # noqa: BLE001 - a connection we cannot even ask is done for
                    stuck = True
                if stuck:
                    self._writer_conn = None
                    if not conn.invalidated:
                        conn.invalidate()
                raise

    def batched(self, op: Callable[[sa.Connection], Any]) -> Any:
        """Run a small write through the group-commit writer; returns after its commit."""
        return self._writer.submit(op)

    def batched_merge(self, kind: str, payload: Any,
                      apply: Callable[[sa.Connection, list[Any]], list[Any]],
                      alone: Callable[[sa.Connection, Any], Any] | None = None) -> Any:
        """Like `batched`, but concurrent payloads of one kind share a single `apply` call.
        `alone(conn, payload)`: the payload's write as one self-committing statement, for
        when it has the writer to itself (see `_writer_statement`); it may say NOT_DONE."""
        return self._writer.submit_merged(kind, payload, apply, alone)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(REVISION_FLAG, False):
            self._commits += 1

    def snapshot_revision(self, at_least: int = 0) -> int:
        """The store revision as this process knows it (see the class): re-read when this
        process committed a change to it, `revision_check` seconds after the last read, or
        when the caller has seen a newer revision elsewhere (`at_least`, e.g. a stream's
        revision watcher, which reads the database itself)."""
        if self.revision_check <= 0:
            return self.read_snapshot_revision()
        read_at, commits, revision = self._known
        now = time.monotonic()
        if commits == self._commits and now - read_at < self.revision_check and revision >= at_least:
            return revision
        commits = self._commits  # before the read: a commit during it forces another
        revision = self.read_snapshot_revision()
        self._known = (now, commits, revision)
        return revision

    def read_snapshot_revision(self) -> int:
        """The current store revision (cheap: one primary-key read)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.text("SELECT snapshot_revision FROM meta WHERE id = 1")).scalar()
        return int(value or 0)

    def checkpoint(self) -> None:
        """Copy the SQLite WAL into the database without blocking writers (PASSIVE)."""
        if self.is_sqlite:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def dispose(self) -> None:
        with self.write_lock():  # not under a writer in the middle of its transaction
            held, self._writer_conn = self._writer_conn, None
        if held is not None:
            if held[0] == pid.current():
                held[1].close()
            else:
                _INHERITED.append(held[1])
        self.engine.dispose()


# Connections a forked child inherited: kept referenced so the child never closes them
# (closing would run SQLite's cleanup on the parent's file state).
_INHERITED: list[sa.Connection] = []


REVISION_FLAG = "flagship.revision_bumped"  # in Session.info: this transaction changed it


def bump_snapshot_revision(session: Session) -> int:
    """Increment the store revision inside the caller's transaction and return it."""
    session.info[REVISION_FLAG] = True  # the committing process sees it at once (Database)
    result = session.execute(
        sa.update(MetaRecord).where(MetaRecord.id == 1)
        .values(snapshot_revision=MetaRecord.snapshot_revision + 1)
        .returning(MetaRecord.snapshot_revision))
    value = result.scalar()
    if value is None:  # the migration seeds the row; a hand-made schema may not have it
        session.add(MetaRecord(id=1, snapshot_revision=1))
        return 1
    return int(value)


def _forget_bump(session: Session, _transaction: Any) -> None:
    session.info.pop(REVISION_FLAG, None)  # rolled back: the revision did not change


def dialect_insert(conn: sa.Connection, table: sa.Table) -> Any:
    """INSERT with the dialect's ON CONFLICT clauses (SQLite and PostgreSQL share them)."""
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table)


# Built statements by shape: building an ON CONFLICT construct (its `excluded` columns)
# cost more than executing it on the single-event path; the constructs are immutable.
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def _built(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = build()
    return statement


def upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str], *,
           add: tuple[str, ...] = (), replace: tuple[str, ...] = ()) -> None:
    """Insert `rows`; on a key conflict add the `add` columns to the stored ones and
    overwrite the `replace` columns. The one upsert of the code base."""
    if not rows:
        return

    def build() -> Any:
        statement = dialect_insert(conn, table)
        updates = {c: table.c[c] + statement.excluded[c] for c in add}
        updates.update({c: statement.excluded[c] for c in replace})
        return statement.on_conflict_do_update(index_elements=[table.c[k] for k in keys],
                                               set_=updates)

    key = ("upsert", conn.dialect.name, table, tuple(keys), add, replace)
    statement = _built(key, build)
    if _run_direct(conn, key, statement, rows, returning=False) is None:
        conn.execute(statement, rows)


def insert_new(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]],
               returning: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Insert the `rows` whose key is not stored yet; return `returning` of those inserted.

    RETURNING tells reliably what was inserted (a rowcount does not, on psycopg).
    """
    if not rows:
        return []
    key, statement = _insert_new_statement(conn, table, returning)
    direct = _run_direct(conn, key, statement, rows, returning=bool(returning))
    if direct is not None:
        return direct
    if not returning:
        conn.execute(statement, rows)
        return []
    return [tuple(row) for row in conn.execute(statement, rows)]


def insert_alone(conn: sa.Connection, table: sa.Table, row: dict[str, Any]) -> Any:
    """Insert `row` unless its key is stored, as one statement that commits by itself:
    on SQLite's own cursor, outside any transaction. Whether it was inserted (SQLite's
    change count of that one statement, which is exact); NOT_DONE where this does not
    apply (not SQLite, inside a transaction, a row shape the direct path does not take),
    having written nothing. The single-event path's whole write (Database._writer_statement)."""
    if conn.dialect.name != "sqlite" or conn.in_transaction() \
            or conn.connection.driver_connection.in_transaction:
        return NOT_DONE
    key, statement = _insert_new_statement(conn, table, ())
    direct = _direct(conn, key, statement, [row])
    if direct is None:
        return NOT_DONE
    params = direct.parameters(row)
    return _on_driver(conn, lambda cursor: cursor.execute(direct.sql, params).rowcount,
                      direct.sql, params) == 1


def _insert_new_statement(conn: sa.Connection, table: sa.Table,
                          returning: tuple[str, ...]) -> tuple[tuple[Any, ...], Any]:
    def build() -> Any:
        statement = dialect_insert(conn, table).on_conflict_do_nothing()
        return statement.returning(*[table.c[c] for c in returning]) if returning else statement

    key = ("insert_new", conn.dialect.name, table, returning)
    return key, _built(key, build)


class _Direct:
    """A statement compiled once for SQLite: its SQL, bind names and bind processors."""

    __slots__ = ("sql", "names", "processors", "nulls", "_many")

    def __init__(self, compiled: Any, dialect: Any) -> None:
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup)
        self._many: dict[int, str | None] = {}
        self.processors = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                                for name in self.names)
        # what each processor makes of None, worked out once (a JSON column's None is
        # serialised on every row otherwise: most events carry no properties)
        self.nulls = tuple(_null_of(process) for process in self.processors)

    def many(self, n: int) -> str | None:
        """The statement inserting `n` rows at once (a multi-row VALUES), or None when the
        SQL is not one single-row VALUES group to repeat."""
        try:
            return self._many[n]
        except KeyError:
            group = "(" + ", ".join("?" * len(self.names)) + ")"
            head, found, tail = self.sql.partition(" VALUES " + group)
            single = found and self.sql.count(group) == 1 and "?" not in head + tail
            sql = self._many[n] = f"{head} VALUES {', '.join([group] * n)}{tail}" if single else None
            return sql

    def parameters(self, row: dict[str, Any]) -> tuple[Any, ...]:
        try:
            return tuple(value if process is None
                         else null if value is None and null is not _PROCESS else process(value)
                         for process, null, value in zip(self.processors, self.nulls,
                                                         [row[name] for name in self.names]))
        except Exception as error:  # a value its type cannot store: as SQLAlchemy reports it
            raise sa.exc.StatementError(f"({type(error).__name__}) {error}", self.sql, row,
                                        error) from error


class _DirectSelect:
    """A SELECT compiled once for SQLite (`Database.select_rows`): its SQL and bind names and
    processors, and the result processor of each selected column."""

    __slots__ = ("binds", "results")

    def __init__(self, statement: sa.Select[Any], dialect: Any) -> None:
        self.binds = _Direct(statement.compile(dialect=dialect), dialect)
        self.results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None)
                             for column in statement.selected_columns)


_PROCESS = object()  # in `_Direct.nulls`: call the processor for None too


def _null_of(process: Callable[[Any], Any] | None) -> Any:
    if process is None:
        return None
    try:
        return process(None)
    except Exception:  # noqa: BLE001 - a type that refuses None: let it say so per row
        return _PROCESS


_DIRECT: dict[tuple[Any, ...], _Direct | None] = {}


def _run_direct(conn: sa.Connection, key: tuple[Any, ...], statement: Any,
                rows: list[dict[str, Any]], returning: bool) -> list[tuple[Any, ...]] | None:
    """Run `statement` for `rows` on SQLite's own cursor, or return None (the caller runs
    it through SQLAlchemy).

    The single-event and first-assignment paths execute these statements on every
    request; through `Connection.execute` each costs a cache-key walk of the ON CONFLICT
    construct and an execution context, several times the work SQLite does. Here the
    statement is compiled once per row shape, its values go through the very bind
    processors SQLAlchemy would apply (dates, JSON, booleans), and it runs in the
    connection's open transaction. Not taken when anything listens to cursor executions
    (tracing) or when the compiled statement wants a value the rows do not carry (a
    Python-side column default SQLAlchemy would fill in).
    """
    if conn.dialect.name != "sqlite":
        return None
    if not conn.in_transaction():
        if not conn.connection.driver_connection.in_transaction:
            return None  # outside a transaction SQLAlchemy would autobegin; it must know
        # else: the writer's driver transaction, only ever begun when nothing watches
    elif conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute:
        return None
    direct = _direct(conn, key, statement, rows)
    if direct is None:
        return None
    if not returning:
        params = [direct.parameters(row) for row in rows]
        _on_driver(conn, lambda cursor: cursor.executemany(direct.sql, params), direct.sql, params)
        return []
    # sqlite3's executemany returns no rows: many rows per multi-row INSERT instead, in
    # chunks of at most 256 whose sizes are powers of two (few statements to compile)
    found: list[tuple[Any, ...]] = []
    start = 0
    while start < len(rows):
        size = min(MANY_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
        chunk, start = rows[start:start + size], start + size
        sql = direct.many(size) if size > 1 else direct.sql
        if sql is None:
            sql, chunk, start = direct.sql, chunk[:1], start - size + 1
        values = [value for row in chunk for value in direct.parameters(row)]
        found += _on_driver(conn, lambda cursor: cursor.execute(sql, values).fetchall(), sql, values)
    return found


MANY_ROWS = 256  # rows per multi-row INSERT of `_run_direct` (x columns: under SQLite's 32,766 binds)


def _direct(conn: sa.Connection, key: tuple[Any, ...], statement: Any,
            rows: list[dict[str, Any]]) -> _Direct | None:
    """`statement` compiled for the shape of `rows` (cached), or None where the direct
    path does not apply (see `_run_direct`)."""
    first = rows[0].keys()
    if any(row.keys() != first for row in rows):  # SQLAlchemy tells mismatched rows apart
        return None
    shape = tuple(first)
    cache_key = (*key, shape)
    try:
        direct = _DIRECT[cache_key]
    except KeyError:
        compiled = statement.compile(dialect=conn.dialect, column_keys=list(shape))
        plain = all(d["type"].dialect_impl(conn.dialect).result_processor(conn.dialect, None) is None
                    for d in statement.returning_column_descriptions)  # rows come back as stored
        direct = _DIRECT[cache_key] = _Direct(compiled, conn.dialect) \
            if plain and compiled.positiontup is not None and set(compiled.positiontup) <= set(shape) \
            else None
    return direct


def _alembic(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply alembic migrations up to `revision` (head by default)."""
    from alembic import command

    command.upgrade(_alembic(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Undo alembic migrations down to `revision` (tests rebuild older schemas with it)."""
    from alembic import command

    command.downgrade(_alembic(url), revision)
