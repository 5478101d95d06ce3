"""The background thread that keeps the client's snapshot fresh.

Each round is one conditional GET of /api/v1/sdk/snapshot (If-None-Match: the current
ETag, so an unchanged snapshot costs a 304 and no parsing). Outcomes:

- 200: compile and serve the new snapshot (and save it to `cache_path`); 304: keep it.
  Next round after `poll_interval` +- `jitter`.
- 401 / 403: the key is wrong or revoked. Retrying cannot help and would only hammer
  the server: log it once, set status "fatal", and stop for good.
- 429 / 503 with Retry-After: wait exactly that long (seconds or an HTTP date).
- Any other failure (network, 5xx, a body that does not compile): keep serving the last
  good snapshot and back off exponentially, capped at `max_backoff`. While the client
  has no snapshot at all, backoff starts at one second so a server that is still
  starting is picked up quickly; with one it starts at `poll_interval`.

While a server-sent-event stream is connected (`stream=True`), timed rounds are
skipped: the stream wakes the poller when there is a new revision.
"""
from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Mapping

from flagship.errors import ValidationError
from flagship.flags.operators import Operator
from flagship.sdk.snapshots import ERROR, FATAL, READY, STALE, Holder, compile_document, save_cache
from flagship.sdk.transport import Response, Transport, TransportError

log = logging.getLogger("flagship.sdk")

SNAPSHOT_PATH = "/api/v1/sdk/snapshot"
FATAL_STATUSES = (401, 403)


def jittered(delay: float, jitter: float) -> float:
    """`delay` spread by +-`jitter` (a fraction), so a fleet of clients does not poll in step."""
    return max(0.0, delay * (1.0 + random.uniform(-jitter, jitter))) if jitter else delay


class Poller:
    """Fetches the snapshot on a timer (or when woken) and installs it in the holder."""

    def __init__(self, transport: Transport, holder: Holder, operators: Mapping[str, Operator], *,
                 poll_interval: float, jitter: float, max_backoff: float,
                 cache_path: Path | None) -> None:
        self._transport = transport
        self._holder = holder
        self._operators = operators
        self.poll_interval = poll_interval
        self._jitter = jitter
        self._max_backoff = max(max_backoff, poll_interval)
        self._cache_path = cache_path
        self.failures = 0
        self.requests = 0
        self.streaming = False  # set by the stream thread while it is connected
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (no-op when it runs, was stopped, or the client is fatal)."""
        if self._thread is not None or self._stop.is_set() or self._holder.status == FATAL:
            return
        self._thread = threading.Thread(target=self._run, name="flagship-poller", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the polling thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Fetch now (a stream announced a new revision, or a stream just reconnected)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling and wait up to `timeout` for the thread to end."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork(self) -> None:
        """Forget the parent's thread and events; `start()` begins again in the child."""
        self._thread = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self.streaming = False

    def _run(self) -> None:
        stop, wake = self._stop, self._wake
        try:
            while not stop.is_set():
                try:
                    delay = self.poll_once()
                except Exception as err:  # noqa: BLE001 - whatever went wrong, polling goes on
                    log.exception("flagship: a snapshot poll failed unexpectedly")
                    delay = self._failed(f"{type(err).__name__}: {err}")
                if delay is None:
                    return  # fatal
                while not stop.is_set():
                    woken = wake.wait(delay)
                    wake.clear()
                    if woken or not self.streaming:
                        break  # the stream keeps us current: skip timed rounds while it is up
        finally:
            self._transport.close_mine()

    def poll_once(self) -> float | None:
        """One round; return the delay before the next, or None when polling must stop."""
        current = self._holder.current
        headers = {"If-None-Match": current.etag} if current is not None and current.etag else {}
        self.requests += 1
        try:
            response = self._transport.request("GET", SNAPSHOT_PATH, headers=headers)
        except TransportError as err:
            return self._failed(str(err))
        if response.status == 304 and current is not None:
            return self._succeeded()
        if response.status == 200:
            return self._received(response)
        if response.status in FATAL_STATUSES:
            self._fatal(response)
            return None
        if response.status in (429, 503):
            wait = response.retry_after()
            if wait is not None:
                # the server's delay, but never less than our own backoff: a Retry-After of
                # 0 or a date in the past (clock skew) made this a busy loop
                backoff = self._failed(f"HTTP {response.status}, retrying after {wait:.0f} s")
                return max(wait, backoff)
        return self._failed(f"HTTP {response.status}: {response.body[:200]!r}")

    def _received(self, response: Response) -> float:
        etag = response.headers.get("etag")
        try:
            current = compile_document(response.json(), etag, "server", self._operators)
        except (ValueError, ValidationError) as err:
            # ValueError covers a body that is not JSON; keep the last good snapshot
            return self._failed(f"the snapshot did not compile: {err}")
        except Exception as err:  # noqa: BLE001 - any other malformed part: the thread must
            # live on, or the client never sees another change (kill switches included)
            return self._failed(f"the snapshot did not compile: {type(err).__name__}: {err}")
        self._holder.install(current)
        if self._cache_path is not None:
            save_cache(self._cache_path, response.body, etag)
        return self._succeeded()

    def _succeeded(self) -> float:
        if self.failures:
            log.info("flagship: snapshot fetch recovered after %d failed attempt(s)", self.failures)
        self.failures = 0
        self._holder.set_status(READY)
        return jittered(self.poll_interval, self._jitter)

    def _failed(self, message: str) -> float:
        self.failures += 1
        holding = self._holder.current is not None
        status = STALE if holding else ERROR
        if self._holder.status != status:
            log.warning("flagship: snapshot fetch failed (%s); %s", message,
                        "serving the last good snapshot" if holding else "no snapshot to serve yet")
        else:
            log.debug("flagship: snapshot fetch failed again (%s)", message)
        # a first attempt that fails with a snapshot in hand (bootstrap, cache) settles
        # ready(): waiting longer cannot give the caller more than it already has
        self._holder.set_status(status, message, failure=True, settle=holding)
        return jittered(self._backoff(holding), self._jitter)

    def _backoff(self, holding: bool) -> float:
        base = self.poll_interval if holding else min(1.0, self.poll_interval)
        return min(self._max_backoff, base * 2.0 ** min(self.failures - 1, 30))

    def _fatal(self, response: Response) -> None:
        message = (f"HTTP {response.status} from {SNAPSHOT_PATH}: the SDK key is "
                   f"{'invalid or revoked' if response.status == 401 else 'not allowed to read snapshots'}; "
                   "polling stopped (create a new sdk key and restart the client)")
        log.error("flagship: %s", message)
        self._holder.set_status(FATAL, message, failure=True)
        self._stop.set()
