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
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

import sqlalchemy as sa

T = TypeVar("T")
Op = Callable[[sa.Connection], Any]


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

    def _commit(self, batch: list[tuple[Op, Future]]) -> None:
        outcomes: list[tuple[Future, bool, Any]] = []
        try:
            with self._begin() as conn:
                for op, future in batch:
                    savepoint = conn.begin_nested()
                    try:
                        value = op(conn)
                    except Exception as exc:  # noqa: BLE001 - reported to its own caller only
                        savepoint.rollback()
                        outcomes.append((future, False, exc))
                    else:
                        savepoint.commit()
                        outcomes.append((future, True, value))
        except Exception as exc:  # noqa: BLE001 - the commit itself failed: nobody's write landed
            for _, future in batch:
                future.set_exception(exc)
            return
        for future, ok, value in outcomes:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
