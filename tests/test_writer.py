"""The group-commit writer: batching, isolation of failures, durability on return."""
from __future__ import annotations

import threading

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
