"""The group-commit writer: batching, isolation of failures, durability on return."""
from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa


def test_concurrent_writes_share_transactions_and_failures_stay_isolated(runtime):
    db = runtime.db
    with db.write_connection() as conn:
        conn.execute(sa.text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    errors, values = [], []

    def write(k):
        try:
            values.append(db.batched(lambda conn: conn.execute(
                sa.text("INSERT INTO t (k) VALUES (:k)"), {"k": k}).rowcount))
        except Exception as exc:  # the duplicate key fails on its own
            errors.append((k, exc))

    threads = [threading.Thread(target=write, args=(k % 50,)) for k in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 10 and {k for k, _ in errors} <= set(range(10))
    assert values == [1] * 50
    with db.engine.connect() as conn:  # every acknowledged write is committed and visible
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 50


def test_an_exception_reaches_only_its_caller(runtime):
    def boom(conn):
        raise ValueError("bad row")
    with pytest.raises(ValueError, match="bad row"):
        runtime.db.batched(boom)
    assert runtime.db.batched(lambda conn: conn.execute(sa.text("SELECT 1")).scalar()) == 1


def test_writes_queued_behind_a_busy_writer_commit_together(runtime):
    """While a write is being committed, later writes queue up; they then share one commit."""
    db = runtime.db
    with db.write_connection() as conn:
        conn.execute(sa.text("CREATE TABLE t2 (k INTEGER PRIMARY KEY)"))
    commits = []

    def count(conn):
        commits.append(1)

    sa.event.listen(db.engine, "commit", count)
    gate, busy = threading.Event(), threading.Event()

    def slow(conn):
        busy.set()
        assert gate.wait(10)
        return conn.execute(sa.text("INSERT INTO t2 (k) VALUES (0)")).rowcount

    first = threading.Thread(target=db.batched, args=(slow,))
    first.start()
    assert busy.wait(10)  # the leader is inside the first transaction now
    others = [threading.Thread(target=db.batched, args=(
        lambda conn, k=k: conn.execute(sa.text("INSERT INTO t2 (k) VALUES (:k)"), {"k": k}),))
        for k in range(1, 21)]
    for t in others:
        t.start()
    for _ in range(1000):  # every later write is queued behind the busy one
        if db._writer.pending >= 20:
            break
        threading.Event().wait(0.01)
    gate.set()
    for t in [first, *others]:
        t.join()
    sa.event.remove(db.engine, "commit", count)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t2")).scalar() == 21
    assert len(commits) == 2  # the busy write's transaction, then all twenty in one


def _table(db, name):
    with db.write_connection() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (k INTEGER PRIMARY KEY)"))
    return sa.Table(name, sa.MetaData(), sa.Column("k", sa.Integer, primary_key=True))


def _visible(db, name):
    with db.engine.connect() as conn:
        return [k for (k,) in conn.execute(sa.text(f"SELECT k FROM {name} ORDER BY k"))]


def test_a_lone_write_is_one_self_committing_statement_on_sqlite(runtime):
    """A payload alone in its commit is written by its `alone` statement outside any
    transaction on SQLite (no BEGIN/COMMIT around it); on PostgreSQL, and whenever `alone`
    says NOT_DONE, `apply` writes it in a transaction."""
    from flagship.db import NOT_DONE, insert_alone, insert_new

    db = runtime.db
    table = _table(db, "lone")
    seen = []

    def alone(conn, k):
        seen.append((conn.in_transaction(), conn.connection.driver_connection.in_transaction))
        return insert_alone(conn, table, {"k": k}) if k < 100 else NOT_DONE

    def apply(conn, ks):
        seen.append("apply")
        return [bool(insert_new(conn, table, [{"k": k}], ("k",))) for k in ks]

    assert db.batched_merge("lone", 1, apply, alone) is True  # inserted
    assert db.batched_merge("lone", 1, apply, alone) is False  # already there: nothing written
    if db.is_sqlite:
        assert seen == [(False, False), (False, False)]
    else:
        assert seen == ["apply", "apply"]
    seen.clear()
    assert db.batched_merge("lone", 100, apply, alone) is True  # NOT_DONE: through apply
    assert seen[-1] == "apply"
    assert _visible(db, "lone") == [1, 100]


def test_queued_payloads_are_merged_not_written_alone(runtime):
    """Payloads queued behind a busy writer share one `apply` call; `alone` is only for a
    payload that has the commit to itself."""
    db = runtime.db
    table = _table(db, "merged")
    gate, busy = threading.Event(), threading.Event()
    calls = []

    def slow(conn):
        busy.set()
        assert gate.wait(10)

    def apply(conn, ks):
        calls.append(("apply", sorted(ks)))
        conn.execute(sa.insert(table), [{"k": k} for k in ks])
        return [1] * len(ks)

    def alone(conn, k):
        calls.append(("alone", k))
        raise AssertionError("a queued payload is merged")

    first = threading.Thread(target=db.batched, args=(slow,))
    first.start()
    assert busy.wait(10)
    others = [threading.Thread(target=db.batched_merge, args=("merged", k, apply, alone)) for k in (1, 2)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while db._writer.pending < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert calls == [("apply", [1, 2])]
    assert _visible(db, "merged") == [1, 2]
