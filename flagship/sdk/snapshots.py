"""The client's snapshot: the compiled current one, its status, and where it comes from.

A snapshot arrives from the server (GET /api/v1/sdk/snapshot), from a bootstrap
document, or from the on-disk copy of the last good one (`cache_path`). The holder
swaps it atomically (one attribute assignment: readers never lock) and tells listeners
about new snapshots and status changes.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from flagship.errors import ValidationError
from flagship.flags.traffic import ACTIVE
from flagship.flags.operators import Operator, with_placeholders
from flagship.flags.snapshot import Snapshot

log = logging.getLogger("flagship.sdk")

# Client status values.
NOT_READY, READY, STALE, ERROR, FATAL = "not_ready", "ready", "stale", "error", "fatal"


@dataclass(frozen=True, slots=True)
class Current:
    """One compiled snapshot as the client serves it."""

    snapshot: Snapshot
    etag: str | None
    source: str  # "server", "bootstrap" or "cache"
    # flags with an active experiment rule: only these need the clock and sticky records
    experiment_flags: frozenset[str]
    flag_types: Mapping[str, str]  # flag key -> declared type, for typed accessors


@dataclass(frozen=True)
class ClientEvent:
    """What listeners receive: `kind` is "change" (a new snapshot), "status" or "failure".

    "failure" is one failed fetch (the status may not change); `message` says why.
    """

    kind: str
    status: str
    revision: int | None = None
    flags_changed: tuple[str, ...] = ()
    message: str | None = None


Listener = Callable[[ClientEvent], None]


def experiment_flags(snapshot: Snapshot) -> frozenset[str]:
    """Keys of the flags whose rules reach an active (running or paused) experiment."""
    experiments = snapshot.experiments
    found = set()
    for key, flag in snapshot.flags.items():
        for rule in flag.rules:
            name = rule.params.get("experiment") if rule.kind == "experiment" else None
            spec = experiments.get(name) if isinstance(name, str) else None
            if spec is not None and spec.status in ACTIVE:
                found.add(key)
    return frozenset(found)


_WARNED: set[str] = set()  # operators already reported as missing (once per process)


def compile_document(doc: Any, etag: str | None, source: str,
                     operators: Mapping[str, Operator]) -> Current:
    """Validate and compile a snapshot document (raises ValidationError).

    An operator the server has (a plugin's) and this client does not is stood in for by a
    placeholder: the flags using it answer ERROR when they reach it, every other flag and
    every later update still arrive (refusing the document would freeze the client on an
    old snapshot, kill switches included). It is logged once per operator."""
    operators, missing = with_placeholders(doc, operators)
    for name in missing:
        if name not in _WARNED:
            _WARNED.add(name)
            log.warning("the snapshot uses operator %r, which this client does not have: flags "
                        "reaching it answer ERROR; pass the plugin's operators to Client("
                        "operators=...)", name)
    snapshot = Snapshot.from_dict(doc, operators)
    return Current(snapshot, etag, source, experiment_flags(snapshot),
                   {key: flag.type for key, flag in snapshot.flags.items()})


def changed_flags(old: Snapshot | None, new: Snapshot) -> tuple[str, ...]:
    """Keys of flags that may evaluate differently in `new` than in `old`."""
    if old is None or old.segments != new.segments or old.layers != new.layers:
        return tuple(sorted(set(new.flags) | set(old.flags if old else ())))
    keys = set(old.flags) ^ set(new.flags)
    keys.update(k for k, flag in new.flags.items() if old.flags.get(k) != flag)
    for key in set(old.experiments) | set(new.experiments):
        before, after = old.experiments.get(key), new.experiments.get(key)
        if before != after:
            keys.update(spec.flag for spec in (before, after) if spec is not None)
    return tuple(sorted(keys & (set(new.flags) | set(old.flags))))


def load_bootstrap(bootstrap: Mapping[str, Any] | str | os.PathLike[str],
                   operators: Mapping[str, Operator]) -> Current:
    """Compile a bootstrap snapshot: a document, or the path of a JSON file holding one."""
    if isinstance(bootstrap, Mapping):
        return compile_document(bootstrap, None, "bootstrap", operators)
    with open(bootstrap, "rb") as handle:
        return compile_document(json.load(handle), None, "bootstrap", operators)


def load_cache(path: Path, operators: Mapping[str, Operator]) -> Current | None:
    """The last good snapshot saved at `path`, or None (missing, unreadable or invalid)."""
    try:
        with open(path, "rb") as handle:
            saved = json.load(handle)
        return compile_document(saved["snapshot"], saved.get("etag"), "cache", operators)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as err:
        log.warning("flagship: ignoring the snapshot cache %s: %s", path, err)
        return None


def save_cache(path: Path, body: bytes, etag: str | None) -> None:
    """Write the server's snapshot body and ETag atomically (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            # the body is spliced in as received: no second serialisation of a large document
            handle.write(b'{"etag":' + json.dumps(etag).encode() + b',"snapshot":' + body + b"}")
        os.replace(tmp, path)
    except OSError as err:
        log.warning("flagship: could not save the snapshot cache %s: %s", path, err)
        tmp.unlink(missing_ok=True)


class Holder:
    """The current snapshot and status, with listeners; read without locks."""

    def __init__(self) -> None:
        self.current: Current | None = None
        self.status = NOT_READY
        self.message: str | None = None
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._settled = threading.Event()

    def after_fork(self) -> None:
        """Fresh lock and event in a forked child (the parent's may have been held)."""
        self._lock = threading.Lock()
        settled, self._settled = self._settled.is_set(), threading.Event()
        if settled:
            self._settled.set()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(ClientEvent)` on new snapshots, status changes and failed fetches."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener` (no error if it was not added)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def install(self, current: Current) -> None:
        """Serve `current` from now on; notify listeners of the flags that changed."""
        with self._lock:
            old, self.current = self.current, current
        changed = changed_flags(old.snapshot if old else None, current.snapshot)
        if old is None or changed or old.snapshot.revision != current.snapshot.revision:
            self._emit(ClientEvent("change", self.status, current.snapshot.revision, changed))

    def set_status(self, status: str, message: str | None = None, *, failure: bool = False,
                   settle: bool = True) -> None:
        """Record the outcome of a fetch; `settle` releases `wait_settled` callers."""
        previous, self.status, self.message = self.status, status, message
        if settle:
            self._settled.set()
        revision = self.current.snapshot.revision if self.current else None
        if failure:
            self._emit(ClientEvent("failure", status, revision, message=message))
        if status != previous:
            self._emit(ClientEvent("status", status, revision, message=message))

    def wait_settled(self, timeout: float | None) -> bool:
        """Wait until a fetch settled the client (see Client.ready); False on timeout."""
        return self._settled.wait(timeout)

    def _emit(self, event: ClientEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the poller
                log.exception("flagship: listener %r failed on %s", listener, event.kind)
