"""The SQLite direct path of `insert_new`/`upsert` and the writer's kept connection.

The hot write paths run their statements on SQLite's own cursor (flagship.db._run_direct);
what they store must be exactly what SQLAlchemy would have stored, errors must still be
SQLAlchemy's, and the writer's one kept connection must not cross a fork.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from flagship import db as dbmod
from flagship.db import NOT_DONE, Database, insert_alone, insert_new, upsert
from flagship.experiments.store.tables import EventCounterRecord, EventRecord

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NOW = datetime(2026, 11, 30, 12, 30, 15, 123456, tzinfo=timezone.utc)


def _rows(tag: str) -> list[dict]:
    return [{"event_id": f"{tag}-{i}", "unit": f"u{i}", "event": "click", "value": 1.5 * i,
             "timestamp": NOW - timedelta(seconds=i), "received_at": NOW,
             "properties": None if i % 2 else {"plan": "pro", "nested": [1, {"x": True}], "n": i},
             "environment": "production"}
            for i in range(4)]


def _stored(db: Database, tag: str) -> list[tuple]:
    t = EventRecord.__table__
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.event_id.like(f"{tag}-%")).order_by(t.c.event_id))
        return [tuple(v for k, v in row._mapping.items() if k != "id") for row in rows]


@SQLITE
def test_direct_writes_store_what_sqlalchemy_stores(runtime, monkeypatch):
    db = runtime.db
    with db.write_connection() as conn:
        direct = insert_new(conn, EventRecord.__table__, _rows("direct"), ("event_id",))
    with monkeypatch.context() as patch:
        patch.setattr(dbmod, "_run_direct", lambda *args, **kwargs: None)
        with db.write_connection() as conn:
            through = insert_new(conn, EventRecord.__table__, _rows("orm"), ("event_id",))
    assert [r[0].split("-")[1] for r in direct] == [r[0].split("-")[1] for r in through] == ["0", "1", "2", "3"]
    ours, theirs = _stored(db, "direct"), _stored(db, "orm")
    assert len(ours) == 4
    assert [row[1:] for row in ours] == [row[1:] for row in theirs]  # dates, JSON, floats alike
    with db.engine.connect() as conn:  # and byte for byte in the file
        raw = conn.exec_driver_sql(
            "SELECT unit, timestamp, received_at, properties, aggregated FROM events "
            "WHERE event_id LIKE 'direct-%' OR event_id LIKE 'orm-%' ORDER BY unit, event_id").all()
    assert [raw[i][0:] for i in range(0, 8, 2)] == [raw[i][0:] for i in range(1, 8, 2)]


@SQLITE
def test_a_self_committing_insert_stores_what_sqlalchemy_stores(runtime, monkeypatch):
    """`insert_alone` (the single event's whole write): the same row as the SQLAlchemy
    path, committed by the statement itself, and refused inside a transaction."""
    db, t = runtime.db, EventRecord.__table__
    with db.engine.connect() as conn:
        assert [insert_alone(conn, t, row) for row in _rows("alone")] == [True] * 4
        assert insert_alone(conn, t, _rows("alone")[0]) is False  # a duplicate: nothing written
        assert not conn.in_transaction()
    with monkeypatch.context() as patch:
        patch.setattr(dbmod, "_run_direct", lambda *args, **kwargs: None)
        with db.write_connection() as conn:
            insert_new(conn, t, _rows("orm2"), ("event_id",))
    assert [row[1:] for row in _stored(db, "alone")] == [row[1:] for row in _stored(db, "orm2")]
    with db.write_connection() as conn:  # in a transaction its change count would not be its own
        assert insert_alone(conn, t, _rows("inside")[0]) is NOT_DONE
    assert _stored(db, "inside") == []


@SQLITE
def test_a_traced_single_event_is_written_in_a_transaction(runtime):
    """Under tracing the writer does not take the self-committing lane: the event's INSERT
    is seen between BEGIN IMMEDIATE and the commit."""
    from flagship.experiments.ingest import ingest

    seen: list[str] = []

    def listen(conn, cursor, statement, *args):
        seen.append(statement)

    sa.event.listen(runtime.db.engine, "before_cursor_execute", listen)
    try:
        assert ingest(runtime, [{"event_id": "t-1", "unit": "u1", "event": "click"}]).accepted == 1
    finally:
        sa.event.remove(runtime.db.engine, "before_cursor_execute", listen)
    begin = seen.index("BEGIN IMMEDIATE")
    assert any("INSERT INTO events" in s for s in seen[begin:])
    assert not any("INSERT INTO events" in s for s in seen[:begin])


@SQLITE
def test_direct_insert_returns_only_new_rows_and_upsert_adds_once(runtime):
    db = runtime.db
    with db.write_connection() as conn:
        assert len(insert_new(conn, EventRecord.__table__, _rows("a"), ("event_id",))) == 4
        again = insert_new(conn, EventRecord.__table__, _rows("a")[:2] + _rows("b")[:1], ("event_id",))
        assert again == [("b-0",)]
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    for n in (3, 4):
        with db.write_connection() as conn:
            upsert(conn, EventCounterRecord.__table__, [{"hour": hour, "kind": "accepted", "count": n}],
                   ["hour", "kind"], add=("count",))
    with db.engine.connect() as conn:
        t = EventCounterRecord.__table__
        assert conn.execute(sa.select(t.c.count).where(t.c.kind == "accepted")).scalar() == 7


@SQLITE
def test_direct_errors_are_sqlalchemy_errors(runtime):
    db = runtime.db
    with db.write_connection() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    table = sa.Table("scratch", sa.MetaData(), sa.Column("k", sa.Text, primary_key=True),
                     sa.Column("n", sa.Integer, nullable=False))
    with pytest.raises(sa.exc.IntegrityError):
        with db.write_connection() as conn:
            insert_new(conn, table, [{"k": "x", "n": None}])
    with db.write_connection() as conn:
        conn.exec_driver_sql("DROP TABLE scratch")
    with pytest.raises(sa.exc.OperationalError):  # e.g. a missing table: a 503 path, not a crash
        with db.write_connection() as conn:
            upsert(conn, table, [{"k": "x", "n": 1}], ["k"], add=("n",))


@SQLITE
def test_tracing_listeners_see_every_statement(runtime):
    """With a cursor listener (OpenTelemetry's SQLAlchemy instrumentation) the direct path
    steps aside, so every statement is traced."""
    seen: list[str] = []

    def listen(conn, cursor, statement, *args):
        seen.append(statement)

    sa.event.listen(runtime.db.engine, "before_cursor_execute", listen)
    try:
        with runtime.db.write_connection() as conn:
            insert_new(conn, EventRecord.__table__, _rows("traced"), ("event_id",))
    finally:
        sa.event.remove(runtime.db.engine, "before_cursor_execute", listen)
    assert seen[0] == "BEGIN IMMEDIATE"
    assert sum("INSERT INTO events" in s for s in seen) >= 1


@SQLITE
def test_the_writers_driver_transaction_commits_and_rolls_back_as_one(runtime):
    """The writer begins and commits on SQLite's own connection; statements through
    SQLAlchemy inside it join that transaction, and a failure undoes all of them."""
    db, t = runtime.db, EventRecord.__table__

    def both(tag: str, fail: bool = False):
        def op(conn):
            rows = _rows(tag)
            insert_new(conn, t, rows[:2], ("event_id",))  # on the driver
            conn.execute(sa.insert(t), rows[2:])  # through SQLAlchemy (it autobegins)
            if fail:
                raise RuntimeError("after both writes")
            return "done"
        return op

    assert db.batched(both("ok")) == "done"
    with pytest.raises(RuntimeError):
        db.batched(both("undone", fail=True))
    assert db.batched(lambda conn: len(insert_new(conn, t, _rows("alone"), ("event_id",)))) == 4
    assert len(_stored(db, "ok")) == 4 and _stored(db, "undone") == [] and len(_stored(db, "alone")) == 4
    conn = db._writer_conn[1]
    assert not conn.in_transaction() and not conn.connection.driver_connection.in_transaction


def _count_rows(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM events WHERE event_id LIKE 'fork-%'").scalar()


def _write(db: Database, tag: str) -> None:
    rows = [{**row, "event_id": f"fork-{tag}-{i}"} for i, row in enumerate(_rows(tag)[:1])]
    db.batched(lambda conn: insert_new(conn, EventRecord.__table__, rows, ("event_id",)))


@SQLITE
def test_the_writers_kept_connection_does_not_cross_a_fork(runtime):
    db = runtime.db
    _write(db, "parent1")  # the parent's writer connection is open now
    parent_conn = db._writer_conn[1]
    pid = os.fork()
    if pid == 0:  # the child: writes on a connection of its own, then leaves without cleanup
        try:
            _write(db, "child")
            ok = db._writer_conn[0] == os.getpid() and db._writer_conn[1] is not parent_conn
            os._exit(0 if ok else 3)
        except BaseException:  # noqa: BLE001 - any failure is the exit code
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _write(db, "parent2")  # the parent's connection still works after the child's writes
    assert db._writer_conn[1] is parent_conn
    assert _count_rows(db) == 3


def test_a_failed_commit_does_not_wedge_the_writer(tmp_path):
    """A COMMIT that fails (here a deferred foreign key; in life a full disk) must not leave
    the kept connection inside SQLite's transaction, holding the write lock for good."""
    import sqlite3

    path = tmp_path / "wedge.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.write_connection() as conn:
            conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            conn.exec_driver_sql("CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER "
                                 "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
        child = sa.Table("child", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("pid", sa.Integer))
        with pytest.raises(sa.exc.IntegrityError):  # fails at COMMIT, not at the INSERT
            db.batched(lambda conn: insert_new(conn, child, [{"id": 1, "pid": 99}]))
        db.batched(lambda conn: insert_new(conn, child, [{"id": 2, "pid": None}]))  # writes again
        other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # and nobody holds the database's write lock
        other.execute("ROLLBACK")
        assert other.execute("SELECT id FROM child").fetchall() == [(2,)]
        other.close()
    finally:
        db.dispose()


def test_the_write_lock_is_a_childs_own_after_fork(tmp_path):
    """An RQ work-horse forks while a thread of the parent may hold the write lock: the
    child must not inherit that thread lock (it would wait forever) nor the parent's lock
    file description (flock would not keep the two apart)."""
    import threading
    import time

    from flagship.db import SqliteWriteLock

    lock = SqliteWriteLock(str(tmp_path / "forked.db"))
    with lock.hold():  # the parent holds it across the fork
        pid = os.fork()
        if pid == 0:
            got = threading.Event()
            threading.Thread(target=lambda: lock.hold().__enter__() and None or got.set(),
                             daemon=True).start()
            early = got.wait(0.3)  # the parent still holds it: excluded
            late = got.wait(10)  # the parent let go: ours now
            os._exit(0 if (not early and late) else 3)
        time.sleep(0.6)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize(("setting", "pragma"), [("normal", 1), ("full", 2)])
def test_sqlite_synchronous_follows_the_setting(tmp_path, setting, pragma):
    from flagship.runtime import make_runtime

    runtime = make_runtime({"DATABASE_URL": f"sqlite:///{tmp_path / 'sync.db'}",
                            "SQLITE_SYNCHRONOUS": setting.upper()})
    try:
        with runtime.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
    finally:
        runtime.close()


def test_an_unknown_synchronous_setting_is_refused():
    from flagship.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="FLAGSHIP_SQLITE_SYNCHRONOUS must be normal or full"):
        load_config({"SQLITE_SYNCHRONOUS": "off"})


# -- select_rows: the hot path's read ------------------------------------------------------

def _selected() -> sa.Select:
    t = EventRecord.__table__
    return sa.select(t.c.event_id, t.c.timestamp, t.c.properties, t.c.aggregated, t.c.value) \
        .where(t.c.event_id.like(sa.bindparam("tag"))).order_by(t.c.event_id)


def test_select_rows_hands_back_what_sqlalchemy_does(runtime, monkeypatch):
    db = runtime.db
    with db.write_connection() as conn:
        insert_new(conn, EventRecord.__table__, _rows("read"))
    query = _selected()
    rows = db.select_rows(query, {"tag": "read-%"})
    with db.engine.connect() as conn:
        expected = [tuple(row) for row in conn.execute(query, {"tag": "read-%"})]
    assert rows == expected and len(rows) == 4
    assert rows[0][1] in (NOW, NOW.replace(tzinfo=None)) and rows[0][2]["nested"] == [1, {"x": True}] and rows[1][2] is None
    assert rows[0][3] is False  # booleans, dates and JSON as SQLAlchemy makes them
    assert db.select_rows(query, {"tag": "nothing-%"}) == []
    assert db.select_rows(query, {"tag": "read-%"}) == expected  # the compiled statement again


@SQLITE
def test_select_rows_steps_aside_for_tracing_and_raises_sqlalchemy_errors(runtime):
    db = runtime.db
    seen: list[str] = []

    def listen(conn, cursor, statement, *args):
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", listen)
    try:
        assert db.select_rows(_selected(), {"tag": "x-%"}) == []
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", listen)
    assert any("FROM events" in s for s in seen)
    table = sa.Table("missing", sa.MetaData(), sa.Column("k", sa.Text, primary_key=True))
    with pytest.raises(sa.exc.OperationalError):  # a 503 path, not a crash
        db.select_rows(sa.select(table.c.k).where(table.c.k == sa.bindparam("k")), {"k": "x"})
    assert db.engine.pool.checkedout() == 0  # the connection went back to the pool


def test_a_first_assignment_alone_is_one_statement_and_credited_once(runtime, monkeypatch):
    """An exposure alone in its commit takes the self-committing lane on SQLite (one INSERT,
    no BEGIN/COMMIT); it is credited once, and stored as the transactional path stores it."""
    from flagship.experiments.assignment import Assignment
    from flagship.experiments.store import assignments

    db, seen = runtime.db, []

    def listen(conn, cursor, statement, *args):
        seen.append(statement)

    first = Assignment("exp", "unit-1", "b", "layer", NOW, 2)
    assert assignments.insert_exposure(db, first) is True
    assert assignments.insert_exposure(db, Assignment("exp", "unit-1", "a", "layer", NOW, 2)) is False
    with monkeypatch.context() as patch:  # the other path, for the stored row
        patch.setattr(assignments, "_insert_exposure_alone", lambda conn, row: NOT_DONE)
        assert assignments.insert_exposure(db, Assignment("exp", "unit-2", "b", "layer", NOW, 2)) is True
    found = assignments.SqlAssignments(db)
    assert found.for_unit("unit-1") == {"exp": first}
    assert found.for_unit("unit-2")["exp"] == Assignment("exp", "unit-2", "b", "layer", NOW, 2)
    with db.engine.connect() as conn:
        raw = conn.exec_driver_sql("SELECT variant, layer_key, assigned_at, epoch, aggregated "
                                   "FROM exposures ORDER BY unit").all()
    assert raw[0] == raw[1]
    if db.is_sqlite:  # the lane's whole write: one statement, no transaction around it
        sa.event.listen(db.engine, "before_cursor_execute", listen)
        try:
            # traced: the writer keeps to a transaction, which tracing then sees
            assert assignments.insert_exposure(db, Assignment("exp", "unit-3", "a", "l", NOW)) is True
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", listen)
        assert seen[0] == "BEGIN IMMEDIATE"
        calls = []
        real = dbmod.insert_alone
        monkeypatch.setattr(assignments, "insert_alone", lambda *a: calls.append(1) or real(*a))
        assert assignments.insert_exposure(db, Assignment("exp", "unit-4", "a", "l", NOW)) is True
        assert calls == [1]


def _many_rows(tag: str, n: int) -> list[dict]:
    return [{**row, "event_id": f"{tag}-{i:05d}", "unit": f"u{i}"}
            for i, row in zip(range(n), _rows(tag) * (n // 4 + 1))]


@SQLITE
@pytest.mark.parametrize("n", [1, 3, 256, 257, 1000])
def test_many_rows_insert_at_once_as_sqlalchemy_would(runtime, monkeypatch, n):
    """Many rows with RETURNING go in multi-row INSERTs (chunks of powers of two): the rows
    returned are exactly those inserted, a key twice in one call is inserted once, and the
    stored rows are SQLAlchemy's."""
    db, t = runtime.db, EventRecord.__table__
    with db.write_connection() as conn:
        insert_new(conn, t, _many_rows("d", n)[::3], ("event_id",))  # some are there already
    rows = _many_rows("d", n)
    rows.append(dict(rows[-1]))  # and one is listed twice
    with db.write_connection() as conn:
        returned = insert_new(conn, t, rows, ("event_id",))
    expected = {r["event_id"] for r in _many_rows("d", n)} - {r["event_id"] for r in _many_rows("d", n)[::3]}
    assert sorted(r[0] for r in returned) == sorted(expected)
    with monkeypatch.context() as patch:
        patch.setattr(dbmod, "_run_direct", lambda *args, **kwargs: None)
        with db.write_connection() as conn:
            insert_new(conn, t, _many_rows("o", n), ("event_id",))
    assert [row[1:] for row in _stored(db, "d")] == [row[1:] for row in _stored(db, "o")]


def test_a_statement_that_is_not_one_values_group_is_not_repeated():
    direct = dbmod._Direct.__new__(dbmod._Direct)
    direct.names, direct._many = ("a", "b"), {}
    direct.sql = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING a"
    assert direct.many(3) == ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?) "
                              "ON CONFLICT DO NOTHING RETURNING a")
    direct.sql, direct._many = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET b = ?", {}
    assert direct.many(2) is None
