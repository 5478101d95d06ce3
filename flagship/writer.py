"""Group commit: concurrent small writes share one transaction.

Under load, many request threads each opening a write transaction contend for the
database's write lock (SQLite's busy handler sleeps, PostgreSQL commits fsync one by
one) and a thread preempted while holding the lock stalls the rest. Instead, each
request queues its write; one of the waiting request threads, the leader, runs every
queued write in one transaction (a savepoint each, so one failure never sinks its
neighbours) and commits once, while the others wait for their result. A caller returns
only after the commit: accepted means durable.

The leader is whichever caller finds nobody writing, so an uncontended write runs in
its own thread at the cost of a plain transaction: handing every write to a dedicated
writer thread and back cost two thread switches per request, a quarter of a single
event's CPU.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

from flagship import telemetry
from flagship.db import NOT_DONE

T = TypeVar("T")
Op = Callable[[sa.Connection], Any]
Apply = Callable[[sa.Connection, list[Any]], list[Any]]
Alone = Callable[[sa.Connection, Any], Any]


class _Merged:
    """A queued payload whose neighbours of the same kind are written in one statement.
    `alone`: its write as one statement that commits by itself, or None."""

    __slots__ = ("kind", "payload", "apply", "alone")

    def __init__(self, kind: str, payload: Any, apply: Apply, alone: Alone | None = None) -> None:
        self.kind, self.payload, self.apply, self.alone = kind, payload, apply, alone


class BatchWriter:
    """Runs write operations many per transaction, led by one of the waiting callers."""

    def __init__(self, begin: Callable[[], Any],
                 statement: Callable[[Callable[[sa.Connection], Any]], Any] | None = None,
                 max_batch: int = 2000) -> None:
        self._begin = begin  # () -> context manager yielding a Connection in a write transaction
        # (run) -> run(conn) outside a transaction, or NOT_DONE (see Database._writer_statement)
        self._statement = statement
        self._max_batch = max_batch
        self._queue: deque[tuple[Any, Future]] = deque()
        self._changed = threading.Condition()  # guards the queue and `_leading`
        self._leading = False

    @property
    def pending(self) -> int:
        """Writes queued and not yet taken into a transaction."""
        return len(self._queue)

    def submit(self, op: Callable[[sa.Connection], T], timeout: float = 60.0) -> T:
        """Run `op(conn)` inside a shared write transaction; return once it has committed."""
        return self._enqueue(op, timeout)

    def submit_merged(self, kind: str, payload: Any, apply: Apply, alone: Alone | None = None,
                      timeout: float = 60.0) -> Any:
        """Queue `payload`; queued payloads of the same `kind` go to one `apply(conn, payloads)`
        call, which returns one result per payload (e.g. one INSERT for many requests).
        If the merged call fails, each payload is retried alone so only the bad one fails.

        `alone(conn, payload)`, if given, is the payload's write as a single statement that
        commits by itself; it is used when the payload is the only one in its commit (the
        uncontended case), saving the BEGIN and COMMIT around it. It returns the result, or
        NOT_DONE when the payload needs more than that statement after all (having written
        nothing); the payload is then written through `apply` in a transaction."""
        return self._enqueue(_Merged(kind, payload, apply, alone), timeout)

    def _enqueue(self, op: Any, timeout: float) -> Any:
        future: Future = Future()
        deadline = time.monotonic() + timeout
        with self._changed:
            self._queue.append((op, future))
            while self._leading and not future.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the write was not committed in time")
                self._changed.wait(remaining)
            if future.done():  # a leader committed it (or reported its failure)
                return future.result()
            self._leading = True
        try:
            while not future.done():
                with self._changed:
                    batch = [self._queue.popleft()
                             for _ in range(min(len(self._queue), self._max_batch))]
                self._commit(batch)
                with self._changed:
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._leading = False
                self._changed.notify_all()  # a caller still queued leads next
        return future.result()

    def _commit(self, batch: list[tuple[Any, Future]]) -> None:
        outcomes: list[tuple[Future, bool, Any]] = []
        telemetry.WRITER_BATCH.observe(len(batch))
        started = time.perf_counter()
        if len(batch) == 1:  # alone in its transaction: no savepoint needed to isolate it
            self._commit_alone(*batch[0])
            return
        try:
            with self._begin() as conn:
                merged: dict[str, list[tuple[_Merged, Future]]] = {}
                for op, future in batch:
                    if isinstance(op, _Merged):
                        merged.setdefault(op.kind, []).append((op, future))
                    else:
                        outcomes.append(self._apply_one(conn, op, future))
                for group in merged.values():
                    outcomes += self._run_merged(conn, group)
        except BaseException as exc:  # noqa: BLE001 - the commit itself failed: nobody's write landed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        telemetry.WRITER_COMMIT.observe(time.perf_counter() - started)
        for future, ok, value in outcomes:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _commit_alone(self, op: Any, future: Future) -> None:
        started = time.perf_counter()
        try:
            value = NOT_DONE
            if self._statement is not None and isinstance(op, _Merged) and op.alone is not None:
                value = self._statement(lambda conn: op.alone(conn, op.payload))
            if value is NOT_DONE:
                with self._begin() as conn:
                    value = op.apply(conn, [op.payload])[0] if isinstance(op, _Merged) else op(conn)
        except BaseException as exc:  # noqa: BLE001 - rolled back: reported to its caller
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        telemetry.WRITER_COMMIT.observe(time.perf_counter() - started)
        future.set_result(value)

    @staticmethod
    def _apply_one(conn: sa.Connection, op: Op, future: Future) -> tuple[Future, bool, Any]:
        savepoint = conn.begin_nested()
        try:
            value = op(conn)
        except Exception as exc:  # noqa: BLE001 - reported to its own caller only
            savepoint.rollback()
            return future, False, exc
        savepoint.commit()
        return future, True, value

    def _run_merged(self, conn: sa.Connection,
                    group: list[tuple[_Merged, Future]]) -> list[tuple[Future, bool, Any]]:
        apply = group[0][0].apply
        savepoint = conn.begin_nested()
        try:
            values = apply(conn, [op.payload for op, _ in group])
        except Exception:  # noqa: BLE001 - fall back to one payload at a time
            savepoint.rollback()
            return [self._apply_one(conn, lambda c, p=op.payload: apply(c, [p])[0], future)
                    for op, future in group]
        savepoint.commit()
        return [(future, True, value) for (_, future), value in zip(group, values)]
