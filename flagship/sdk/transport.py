"""HTTP for the SDK on the standard library: keep-alive connections, one per thread.

`http.client` connections are not thread-safe, so each thread (the poller, the event
sender, application threads doing sticky lookups) gets its own, kept alive between
requests. `reset()` drops them all; the client calls it in a forked child, whose
inherited sockets are shared with the parent and must never be written to.
"""
from __future__ import annotations

import gzip
import http.client
import json
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Mapping
from urllib.parse import urlsplit

from flagship import __version__

USER_AGENT = f"flagship-python/{__version__}"
# Longest Retry-After we obey: a misconfigured proxy must not park a client for days.
MAX_RETRY_AFTER = 3600.0


class TransportError(Exception):
    """The request did not get an HTTP answer (refused, reset, timed out, bad URL)."""


@dataclass(frozen=True)
class Response:
    """An HTTP answer; header names are lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.body)

    def retry_after(self, now: float | None = None) -> float | None:
        """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
        return parse_retry_after(self.headers.get("retry-after"), now)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse Retry-After (RFC 9110: delay-seconds or HTTP-date) into seconds, or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


class Transport:
    """Requests to one flagship server with an SDK key."""

    def __init__(self, base_url: str, sdk_key: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {sdk_key}", "User-Agent": USER_AGENT,
                         "Accept-Encoding": "gzip"}
        self._local = threading.local()
        # every thread's connection, so close() can close them all from one thread
        self._open: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()

    def connect(self, timeout: float | None = None) -> http.client.HTTPConnection:
        """A new connection to the server (not pooled: the caller closes it)."""
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout or self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout or self.timeout)

    def url(self, path: str) -> str:
        """The request target for an API path (keeps a base URL's own path prefix)."""
        return self._prefix + path

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Default headers (key, user agent) plus `extra`."""
        return {**self._headers, **(extra or {})}

    def request(self, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None,
                timeout: float | None = None) -> Response:
        """Send one request on this thread's connection; raise TransportError without an answer."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent = self.headers(headers)
        if data is not None:
            sent["Content-Type"] = "application/json"
        reused = getattr(self._local, "conn", None) is not None
        try:
            return self._exchange(method, path, data, sent, timeout)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise TransportError(f"{method} {path}: connection closed by the server") from None
        except (OSError, http.client.HTTPException) as err:
            raise TransportError(f"{method} {path}: {type(err).__name__}: {err}") from None
        # The server closed an idle keep-alive connection (gunicorn keeps them 2 s):
        # one retry on a fresh one. Every request we send is safe to repeat (GETs, and
        # event batches, which are idempotent on event_id).
        try:
            return self._exchange(method, path, data, sent, timeout)
        except (OSError, http.client.HTTPException) as err:
            raise TransportError(f"{method} {path}: {type(err).__name__}: {err}") from None

    def _exchange(self, method: str, path: str, data: bytes | None,
                  headers: dict[str, str], timeout: float | None) -> Response:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
            self._open.add(conn)
        conn.timeout = timeout or self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        try:
            conn.request(method, self.url(path), body=data, headers=headers)
            answer = conn.getresponse()
            payload = answer.read()
        except BaseException:
            conn.close()
            self._local.conn = None
            raise
        if answer.will_close:
            conn.close()
            self._local.conn = None
        found = {name.lower(): value for name, value in answer.getheaders()}
        if found.get("content-encoding") == "gzip":
            try:
                payload = gzip.decompress(payload)
            except (OSError, EOFError) as err:
                raise http.client.HTTPException(f"bad gzip body: {err}") from None
        return Response(answer.status, found, payload)

    def close_mine(self) -> None:
        """Close the calling thread's connection (threads call it before they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        """Close every live thread's connection (a later request opens a new one)."""
        for conn in list(self._open):
            conn.close()

    def reset(self) -> None:
        """Forget every thread's connection without closing it (after fork: the parent owns them)."""
        self._local = threading.local()
        self._open = weakref.WeakSet()
