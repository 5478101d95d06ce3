"""Server-sent events: refetch the snapshot as soon as the server announces a revision.

`GET /api/v1/sdk/stream` (text/event-stream) sends ``event: revision`` with data
``{"revision": n, "etag": "..."}`` and ``: heartbeat`` comments. The stream only says
*that* something changed; the snapshot itself still comes from the (conditional)
snapshot GET, so there is one code path for content and the stream can never leave the
client half-updated.

While the stream is connected the poller skips its timed rounds. On any failure (a
refused connection, a 404 from a server without the endpoint, a non-stream answer, no
byte within `read_timeout` (90 s: three missed heartbeats if the server sends one every
30 s), a closed stream) the poller resumes at once and the stream
is retried with capped exponential backoff; 401/403 stop it like they stop polling.
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from dataclasses import dataclass, field

from flagship.sdk.poller import FATAL_STATUSES, Poller
from flagship.sdk.snapshots import FATAL, Holder
from flagship.sdk.transport import Transport

log = logging.getLogger("flagship.sdk")

STREAM_PATH = "/api/v1/sdk/stream"


@dataclass
class SseEvent:
    """One dispatched server-sent event."""

    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class SseParser:
    """Incremental parser for the text/event-stream format (WHATWG HTML, 9.2.6)."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        """Feed one line (without its line ending); return an event when a blank line ends one."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # "retry" and unknown fields: our own capped backoff decides reconnects


class Stream:
    """The stream thread: wakes the poller on `revision` events."""

    def __init__(self, transport: Transport, poller: Poller, holder: Holder, *,
                 read_timeout: float = 90.0, max_backoff: float = 300.0) -> None:
        self._transport = transport
        self._poller = poller
        self._holder = holder
        self._read_timeout = read_timeout
        self._max_backoff = max_backoff
        self.failures = 0
        self._conn: http.client.HTTPConnection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        """Whether the stream is up (the poller skips timed rounds meanwhile)."""
        return self._poller.streaming

    def start(self) -> None:
        """Start the thread (no-op when it runs, was stopped, or the client is fatal)."""
        if self._thread is not None or self._stop.is_set() or self._holder.status == FATAL:
            return
        self._thread = threading.Thread(target=self._run, name="flagship-stream", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Close the stream and wait up to `timeout` for the thread."""
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:  # unblocks the thread's pending read at once
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork(self) -> None:
        """Forget the parent's thread and connection (its socket belongs to the parent)."""
        self._thread, self._conn = None, None
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            status = self._listen()
            if self._stop.is_set():
                return
            if self._poller.streaming:
                self._poller.streaming = False
                self._poller.wake()  # resume polling now: changes may have been missed
            if status in FATAL_STATUSES or self._holder.status == FATAL:
                log.error("flagship: the SDK key was refused; %s stream stopped", STREAM_PATH)
                return
            self.failures += 1
            delay = min(self._max_backoff, 2.0 ** min(self.failures - 1, 30))
            level = logging.INFO if self.failures == 1 else logging.DEBUG
            log.log(level, "flagship: stream unavailable (%s); polling, retrying the stream in %.0f s",
                    status if status is not None else "connection failed", delay)
            self._stop.wait(delay)

    def _listen(self) -> int | None:
        """Connect and read until the stream ends; return the HTTP status (None: no answer)."""
        conn = self._conn = self._transport.connect(timeout=self._read_timeout)
        try:
            conn.request("GET", self._transport.url(STREAM_PATH), headers=self._transport.headers(
                {"Accept": "text/event-stream", "Cache-Control": "no-cache"}))
            response = conn.getresponse()
            kind = (response.getheader("Content-Type") or "").split(";")[0].strip()
            if response.status != 200 or kind != "text/event-stream":
                return response.status if response.status != 200 else 415
            self._connected()
            self._read(response)
            return 200
        except (OSError, http.client.HTTPException) as err:
            log.debug("flagship: stream failed: %s", err)
            return None
        finally:
            conn.close()
            self._conn = None

    def _connected(self) -> None:
        log.info("flagship: stream connected; timed polling paused")
        self.failures = 0
        self._poller.streaming = True
        self._poller.wake()  # fetch once: a change may have landed before we connected

    def _read(self, response: http.client.HTTPResponse) -> None:
        parser = SseParser()
        while not self._stop.is_set():
            raw = response.readline()
            if not raw:
                return  # the server closed the stream
            event = parser.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if event is not None and event.event == "revision" and self._is_new(event.data):
                self._poller.wake()

    def _is_new(self, data: str) -> bool:
        current = self._holder.current
        if current is None:
            return True
        try:
            announced = json.loads(data)
        except ValueError:
            return True  # unreadable: a refetch is cheap (304 when nothing changed)
        if not isinstance(announced, dict):
            return True
        etag, revision = announced.get("etag"), announced.get("revision")
        if isinstance(etag, str):
            return _bare(etag) != _bare(current.etag or "")
        return not isinstance(revision, int) or revision != current.snapshot.revision


def _bare(etag: str) -> str:
    """An entity tag without its weak prefix and quotes, for comparison."""
    return etag.strip().removeprefix("W/").strip('"')
