"""Group commit: one writer thread per process batches concurrent small writes.

Under load, many request threads each opening a write transaction contend for the
database's write lock (SQLite's busy handler sleeps, PostgreSQL commits fsync one by
one) and a thread preempted while holding the lock stalls the rest. Instead, each
request hands its write to the writer thread and waits; the writer runs every queued
write in one transaction (a savepoint each, so one failure never sinks its neighbours)
and commits once. A caller returns only after the commit: accepted means durable.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

from flagship import telemetry

T = TypeVar("T")
Op = Callable[[sa.Connection], Any]
Apply = Callable[[sa.Connection, list[Any]], list[Any]]


class _Merged:
    """A queued payload whose neighbours of the same kind are written in one statement."""

    __slots__ = ("kind", "payload", "apply")

    def __init__(self, kind: str, payload: Any, apply: Apply) -> None:
        self.kind, self.payload, self.apply = kind, payload, apply


class BatchWriter:
    """Runs write operations on one thread, many per transaction."""

    def __init__(self, begin: Callable[[], Any], max_batch: int = 2000) -> None:
        self._begin = begin  # () -> context manager yielding a Connection in a write transaction
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Op, Future]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, op: Callable[[sa.Connection], T], timeout: float = 60.0) -> T:
        """Run `op(conn)` inside a shared write transaction; return once it has committed."""
        return self._enqueue(op, timeout)

    def submit_merged(self, kind: str, payload: Any, apply: Apply, timeout: float = 60.0) -> Any:
        """Queue `payload`; queued payloads of the same `kind` go to one `apply(conn, payloads)`
        call, which returns one result per payload (e.g. one INSERT for many requests).
        If the merged call fails, each payload is retried alone so only the bad one fails."""
        return self._enqueue(_Merged(kind, payload, apply), timeout)

    def _enqueue(self, op: Any, timeout: float) -> Any:
        future: Future = Future()
        self._ensure_thread()
        self._queue.put((op, future))
        return future.result(timeout=timeout)

    def _ensure_thread(self) -> None:
        # started lazily, so a gunicorn worker forked after create_app gets its own thread
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="flagship-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[tuple[Any, Future]]) -> None:
        outcomes: list[tuple[Future, bool, Any]] = []
        telemetry.WRITER_BATCH.observe(len(batch))
        started = time.perf_counter()
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
        except Exception as exc:  # noqa: BLE001 - the commit itself failed: nobody's write landed
            for _, future in batch:
                future.set_exception(exc)
            return
        telemetry.WRITER_COMMIT.observe(time.perf_counter() - started)
        for future, ok, value in outcomes:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

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
