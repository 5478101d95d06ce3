"""Exposure and metric events: a bounded queue and the thread that ships it in batches.

Delivery is at-least-once from here and exactly-once on the server: every event gets
its `event_id` when it is queued, a batch that fails is retried with the *same* ids,
and the server ignores ids it has already stored. Exposure ids are derived from
(experiment, unit), so the same first exposure reported by two processes (or by a
parent and its forked child) is also stored once.

The queue is bounded (`max_queue`): when the server is down for long, the oldest events
are dropped and counted in `dropped`, so memory stays flat. A batch is sent when
`batch_size` events are waiting, every `flush_interval` seconds, and on `flush()`
(close() and interpreter exit). Answers:

- 200: done; items the server rejected (bad fields) are counted, never retried.
- 401 / 403: the key cannot send events: stop sending, keep nothing.
- 413: the batch is too big: it is split in halves (a single event too big is dropped).
- 429 / 503: retry after Retry-After; other failures: capped exponential backoff.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any

from flagship.sdk.transport import Transport, TransportError

log = logging.getLogger("flagship.sdk")

BATCH_PATH = "/api/v1/experiments/events/batch"
EXPOSURE = "$exposure"
SERVER_BATCH_LIMIT = 10_000
_EXPOSURE_IDS = uuid.UUID("5f0c6a2e-2d4b-4c55-9a0e-6a1b7f3c9e01")


def now_iso() -> str:
    """The current time as the ISO-8601 UTC timestamp events carry."""
    return datetime.now(timezone.utc).isoformat()


def exposure_event(unit: str, experiment: str, variant: str) -> dict[str, Any]:
    """The `$exposure` event of a unit's first assignment (id stable per experiment and unit)."""
    event_id = "x-" + uuid.uuid5(_EXPOSURE_IDS, f"{experiment}\0{unit}").hex
    return {"event_id": event_id, "event": EXPOSURE, "unit": unit, "experiment": experiment,
            "variant": variant, "timestamp": now_iso()}


def metric_event(unit: str, event: str, value: float | None,
                 properties: dict[str, Any] | None) -> dict[str, Any]:
    """A tracked event with a fresh id."""
    item: dict[str, Any] = {"event_id": uuid.uuid4().hex, "unit": unit, "event": event,
                            "timestamp": now_iso()}
    if value is not None:
        item["value"] = value
    if properties:
        item["properties"] = properties
    return item


class EventQueue:
    """A bounded FIFO that drops its oldest events when full."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max(1, max_queue)
        self.dropped = 0
        self._items: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()

    def put(self, event: dict[str, Any]) -> int:
        """Queue `event`; return the queue length."""
        with self._lock:
            if len(self._items) >= self.max_queue:
                self._items.popleft()
                self.dropped += 1
            self._items.append(event)
            return len(self._items)

    def take(self, limit: int) -> list[dict[str, Any]]:
        """Remove and return up to `limit` of the oldest events."""
        with self._lock:
            return [self._items.popleft() for _ in range(min(limit, len(self._items)))]

    def clear(self) -> None:
        """Forget every queued event."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def after_fork(self) -> None:
        """A fresh lock and an empty queue: the parent still holds and will send these."""
        self._lock = threading.Lock()
        self._items = deque()


class EventSender:
    """Sends queued events in batches from a background thread (started on first use)."""

    def __init__(self, transport: Transport, queue: EventQueue, *, flush_interval: float,
                 batch_size: int, max_backoff: float = 60.0) -> None:
        self._transport = transport
        self.queue = queue
        self._interval = flush_interval
        self._batch_size = max(1, min(batch_size, SERVER_BATCH_LIMIT))
        self._max_backoff = max_backoff
        self.stats = {"sent": 0, "duplicates": 0, "rejected": 0, "failed_attempts": 0}
        self.disabled: str | None = None  # why sending stopped for good (401/403)
        self._pending: list[dict[str, Any]] = []  # the batch being retried, oldest first
        self._failures = 0
        self._retry_at = 0.0
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, event: dict[str, Any]) -> None:
        """Queue one event; a full batch wakes the sender."""
        if self.disabled is not None:
            return
        if self.queue.put(event) >= self._batch_size:
            self._wake.set()
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._send_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="flagship-events",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                woken = self._wake.wait(max(self._interval, self._retry_at - time.monotonic()))
                self._wake.clear()
                if woken and time.monotonic() < self._retry_at:
                    continue  # a full batch during a back-off waits for the back-off to end
                self.send_available()
        finally:
            self._transport.close_mine()

    def send_available(self, deadline: float | None = None) -> bool:
        """Send until the queue is empty; False when a batch failed (it stays for a retry)."""
        with self._send_lock:
            while self.disabled is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                batch = self._pending or self.queue.take(self._batch_size)
                if not batch:
                    return True
                self._pending = batch
                if not self._post(batch):
                    return False
                self._pending = []
            return False

    def flush(self, timeout: float, retry: bool = True) -> bool:
        """Send everything now, from the calling thread; True when nothing is left.

        With `retry`, failed batches are retried (after their back-off) until `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.send_available(deadline):
                return True
            if self.disabled is not None or not retry:
                return False
            pause = min(self._retry_at, deadline) - time.monotonic()
            if time.monotonic() >= deadline:
                return False
            time.sleep(max(pause, 0.05))  # the caller asked to wait: no thread to wake us

    def _post(self, batch: list[dict[str, Any]]) -> bool:
        """Send one batch; True when it needs no retry."""
        try:
            response = self._transport.request("POST", BATCH_PATH, body=batch)
        except TransportError as err:
            return self._failed(str(err), None)
        except (TypeError, ValueError) as err:  # JSON cannot carry it (track() checks first):
            # drop this batch rather than stop the thread with every later event behind it
            self.stats["rejected"] += len(batch)
            log.error("flagship: %d events dropped, they cannot be sent as JSON: %s", len(batch), err)
            return True
        if response.status == 200:
            try:
                answer = response.json()
            except ValueError:
                answer = {}  # a 200 means stored; only the counts are lost
            self._delivered(batch, answer)
            return True
        if response.status in (401, 403):
            self.disabled = f"HTTP {response.status}: the SDK key cannot send events"
            log.error("flagship: %s; %d queued events discarded", self.disabled,
                      len(batch) + len(self.queue))
            self.queue.clear()
            return False
        if response.status == 413 and len(batch) > 1:
            half = len(batch) // 2
            return self._post(batch[:half]) and self._post(batch[half:])
        if response.status in (400, 413, 422):
            self.stats["rejected"] += len(batch)
            log.error("flagship: %d events refused (HTTP %s): %r", len(batch), response.status,
                      response.body[:300])
            return True  # the same bytes would be refused again: do not retry
        return self._failed(f"HTTP {response.status}", response.retry_after())

    def _delivered(self, batch: list[dict[str, Any]], answer: Any) -> None:
        self._failures, self._retry_at = 0, 0.0
        answer = answer if isinstance(answer, dict) else {}
        rejected = answer.get("rejected") or []
        self.stats["sent"] += int(answer.get("accepted", len(batch) - len(rejected)))
        self.stats["duplicates"] += int(answer.get("duplicates", 0))
        if rejected:
            self.stats["rejected"] += len(rejected)
            first = rejected[0]
            log.warning("flagship: the server rejected %d of %d events, e.g. %r: %s",
                        len(rejected), len(batch), batch[first.get("index", 0)].get("event"),
                        first.get("errors"))

    def _failed(self, message: str, retry_after: float | None) -> bool:
        self._failures += 1
        self.stats["failed_attempts"] += 1
        backoff = min(self._max_backoff, max(self._interval, 0.5) * 2.0 ** min(self._failures - 1, 30))
        # the server's Retry-After, but never less than the backoff (0 or a past date spun)
        delay = backoff if retry_after is None else max(retry_after, backoff)
        self._retry_at = time.monotonic() + delay
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "flagship: sending events failed (%s); retrying in %.1f s with the same ids",
                message, delay)
        return False

    @property
    def pending(self) -> int:
        """Events taken from the queue but not yet delivered (the batch being retried)."""
        return len(self._pending)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread (pending events stay; `flush()` can still send them)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork(self) -> None:
        """Fresh thread state in a forked child; the parent keeps and sends its own events."""
        self._pending, self._failures, self._retry_at = [], 0, 0.0
        self._send_lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = None
        self.queue.after_fork()
