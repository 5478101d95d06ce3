"""Change notification for event streams: a revision watcher per process, a cap on open
streams, the server-sent-event messages, and the stream tokens of OFREP event-stream URLs.

The store revision is a counter every write increments, in any process (another gunicorn
worker, the CLI), so polling one primary-key row is enough to hear about every change
without a message bus. One daemon thread per process polls it every `POLL_SECONDS` while
at least one stream listens (it exits when the last one closes and starts again with the
next), and wakes the streams; each stream then compares its environment's snapshot ETag,
so a change in another environment wakes it but sends nothing.

Nothing here knows Flask: `events()` yields the bytes of a text/event-stream body.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

from flagship import store
from flagship.errors import NotFoundError
from flagship.runtime import Runtime
from flagship.serving import service
from flagship.serving.cache import CompiledSnapshot

log = logging.getLogger("flagship.serving")

POLL_SECONDS = 0.25  # a change reaches open streams within about this long
HEARTBEAT_SECONDS = 15.0  # the SDK gives a stream up after 90 s of silence
MAX_STREAM_SECONDS = 300.0  # then the stream ends and the client reconnects (± 10 %)
RETRY_AFTER_SECONDS = 30  # what a refused stream (503) is told
CHECK_SECONDS = 1.0  # how often an idle stream asks whether its client went away

Message = Callable[[CompiledSnapshot], bytes]


class StreamHub:
    """One process's open streams: the revision watcher thread and the open-stream cap."""

    def __init__(self, read_revision: Callable[[], int], limit: int) -> None:
        self._read_revision = read_revision
        self.limit = limit
        self._reset()
        _hubs.add(self)

    def _reset(self) -> None:
        # also run in a forked child: the parent's lock may have been held and its thread is gone
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._open = 0
        self._revision: int | None = None

    @property
    def open(self) -> int:
        """How many streams are open in this process."""
        return self._open

    @property
    def revision(self) -> int | None:
        """The store revision the watcher saw last (None before its first read)."""
        return self._revision

    def try_open(self) -> bool:
        """Take a stream slot (False when `limit` streams are open); starts the watcher."""
        with self._lock:
            if self._open >= self.limit:
                return False
            self._open += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="flagship-revision-watcher",
                                                daemon=True)
                self._thread.start()
            return True

    def close(self) -> None:
        """Give a slot back (the watcher stops with the last one)."""
        with self._lock:
            self._open = max(0, self._open - 1)
            self._changed.notify_all()

    def wait(self, seen: int | None, timeout: float,
             stop: Callable[[], bool] = lambda: False) -> int | None:
        """Block until the watcher sees a revision other than `seen`, `stop()` is true (checked
        when a stream closes) or `timeout` passes; return the revision seen last."""
        with self._changed:
            self._changed.wait_for(lambda: self._revision != seen or stop(), max(0.0, timeout))
            return self._revision

    def _watch(self) -> None:
        failing = False
        while True:
            with self._lock:
                if self._open == 0:
                    self._thread, self._revision = None, None
                    return
            try:
                revision = self._read_revision()
                failing = False
            except Exception as err:  # noqa: BLE001 - a database hiccup must not end the watcher
                if not failing:
                    log.warning("flagship: reading the store revision failed: %s", err)
                failing, revision = True, None
            if revision is not None:
                with self._changed:
                    if revision != self._revision:
                        self._revision = revision
                        self._changed.notify_all()
            time.sleep(POLL_SECONDS)


_hubs: weakref.WeakSet[StreamHub] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for hub in list(_hubs):
        hub._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the event stream body -------------------------------------------------------------

def revision_message(compiled: CompiledSnapshot) -> bytes:
    """`event: revision` for the flagship SDK: the environment's revision and snapshot ETag."""
    data = json.dumps({"revision": compiled.revision, "etag": compiled.etag})
    return f"id: {_bare(compiled.etag)}\nevent: revision\ndata: {data}\n\n".encode()


def refetch_message(compiled: CompiledSnapshot) -> bytes:
    """OFREP's `refetchEvaluation` (in the default `message` event, as OFREP wants)."""
    data = json.dumps({"type": "refetchEvaluation", "etag": compiled.etag})
    return f"id: {_bare(compiled.etag)}\ndata: {data}\n\n".encode()


@dataclass
class Stream:
    """One open stream of one environment; iterate it for the body, `close()` it always."""

    runtime: Runtime
    hub: StreamHub
    environment: str
    message: Message
    last_event_id: str | None = None
    gone: Callable[[], bool] = lambda: False  # the client closed its end (when the server can tell)

    def __post_init__(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()

    def close(self) -> None:
        """Give the slot back and end the body (idempotent; the server calls it when done)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.hub.close()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._events()
        finally:
            self.close()

    def _events(self) -> Iterator[bytes]:
        now = time.monotonic()
        deadline = now + MAX_STREAM_SECONDS * random.uniform(0.9, 1.0)  # spread reconnects
        beat = now + HEARTBEAT_SECONDS
        seen = self.hub.revision
        compiled = self._snapshot(seen or 0)
        if compiled is None:
            return
        etag = compiled.etag
        # the current state first: a change may have landed since the client last fetched
        # (a client resuming with Last-Event-ID of the current ETag missed nothing)
        yield self.message(compiled) if self.last_event_id != _bare(etag) else b": connected\n\n"
        while not self._closed:
            now = time.monotonic()
            if now >= deadline or self.gone():  # a gone client frees its slot now, not at a write
                return
            if now >= beat:
                beat = now + HEARTBEAT_SECONDS
                yield b": heartbeat\n\n"
                continue
            until = min(beat, deadline, now + CHECK_SECONDS)
            revision = self.hub.wait(seen, until - now, lambda: self._closed)
            if revision == seen:
                continue
            seen = revision
            # at least the watcher's revision: the snapshot cache may not have re-read the
            # revision yet (it does so every `revision_check` seconds), and the change would
            # then be missed for good, the watcher having moved on
            compiled = self._snapshot(revision or 0)
            if compiled is None:
                return
            if compiled.etag != etag:
                etag = compiled.etag
                yield self.message(compiled)

    def _snapshot(self, at_least: int) -> CompiledSnapshot | None:
        """The environment's snapshot; None ends the stream (the client reconnects or polls)."""
        try:
            return service.snapshot(self.runtime, self.environment, at_least)
        except NotFoundError:
            return None  # the environment was deleted
        except Exception as err:  # noqa: BLE001 - a failing database ends the stream, not the worker
            log.warning("flagship: stream of %r ended: %s", self.environment, err)
            return None


def _bare(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


# -- stream tokens: an OFREP event-stream URL that a browser's EventSource can open ------

def stream_token(key_name: str, key_hash: str, environment: str) -> str:
    """A token for one key's stream of one environment, for a URL (EventSource sends no headers).

    It grants nothing but the change notifications of that environment. It is an HMAC keyed
    by the key's stored hash: the same in every process and after restarts, and void as
    soon as the key is revoked.
    """
    name = base64.urlsafe_b64encode(key_name.encode()).decode().rstrip("=")
    return f"{name}.{_mac(key_hash, environment)}"


def verify_stream_token(runtime: Runtime, token: str, environment: str) -> bool:
    """Whether `token` was issued for `environment` to a key that is still live."""
    name_part, _, mac = token.partition(".")
    try:
        name = base64.urlsafe_b64decode(name_part + "=" * (-len(name_part) % 4)).decode()
    except ValueError:  # not base64 (or not ASCII), or not UTF-8
        return False
    if not name or "\x00" in name or len(name) > 128:
        return False  # no key has such a name (and PostgreSQL text holds no NUL)
    with runtime.db.session() as session:
        record = store.get_key(session, name)
        if record is None or record.revoked_at is not None:
            return False
        if record.environment is not None and record.environment != environment:
            return False
        return hmac.compare_digest(mac.encode(), _mac(record.key_hash, environment).encode())


def _mac(key_hash: str, environment: str) -> str:
    digest = hmac.new(key_hash.encode(), f"ofrep-stream:{environment}".encode(), hashlib.sha256)
    return digest.hexdigest()[:40]
