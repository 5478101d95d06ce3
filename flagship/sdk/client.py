"""The Python SDK client: local evaluation of a polled snapshot with the server's own core.

    from flagship.sdk import Client
    client = Client("http://127.0.0.1:8000", "fsk_sdk_...")
    client.ready(5)
    client.bool_value("new-checkout", {"key": "user-42", "country": "NL"}, False)

Availability: evaluation never raises and never waits for the network (except the
one-time sticky lookup below). The last good snapshot is served forever while the
server is unreachable; `status` says how fresh it is: "not_ready" (nothing yet),
"ready" (the last fetch succeeded), "stale" (serving a bootstrap, cached or older
snapshot because fetches fail), "error" (nothing to serve and fetches fail), "fatal"
(401/403: polling stopped; the last snapshot is still served).

Sticky contract for experiments (see `flagship.sdk.sticky`): a unit keeps its variant
while this process remembers it, and its first assignment is sent as a `$exposure`
event. The first evaluation of an active experiment's flag for a unit this process
does not remember asks the server for the unit's assignments (one GET, once per unit
per process) and honours them, so units the server or another process assigned keep
their variant after traffic or weight changes. Without the server the unit is placed
by local hashing, which agrees with the server unless traffic or weights changed since
the unit's first assignment.

Fork safety: a client created before `os.fork()` (gunicorn --preload, uwsgi) works in
the child: locks, connections and threads are replaced after the fork and polling
restarts on the child's first call. Queued events stay with the parent, which sends them.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, cast

from flagship.experiments.assignment import Assignment
from flagship.flags.evaluate import ERROR, GENERAL, SPLIT, EvalState, Evaluation, unit_key
from flagship.flags.operators import Operator, default_operators
from flagship.sdk.events import EventQueue, EventSender, exposure_event, metric_event
from flagship.sdk.poller import Poller
from flagship.sdk.snapshots import (FATAL, READY, STALE, ClientEvent, Current, Holder, Listener,
                                    load_bootstrap, load_cache)
from flagship.sdk.sticky import LruAssignments, fetch_assignments
from flagship.sdk.stream import Stream
from flagship.sdk.transport import Transport

log = logging.getLogger("flagship.sdk")

PROVIDER_NOT_READY, PROVIDER_FATAL = "PROVIDER_NOT_READY", "PROVIDER_FATAL"
EXIT_FLUSH_SECONDS = 2.0


class Resolved(NamedTuple):
    """An evaluation with what typed accessors need: the flag's declared type and the revision."""

    evaluation: Evaluation
    flag_type: str | None
    revision: int | None


class Client:
    """Evaluates flags locally from a snapshot kept fresh in the background; thread- and fork-safe.

    `poll_interval` seconds between conditional GETs, spread by +-`jitter` (a fraction);
    `timeout` per request; `max_backoff` caps the wait after failures. `bootstrap` (a
    snapshot document or a JSON file) and `cache_path` (where each new snapshot is saved)
    let a process start without the server. `stream` listens to the server's revision
    events and polls only while the stream is down. `events` records exposures and
    `track()` calls, sent every `flush_interval` s or per `batch_size`, at most
    `max_queue` held (oldest dropped). `sticky_lookup` and `sticky_capacity` shape the
    sticky contract above. `on_change(ClientEvent)` runs after each new snapshot;
    `operators` replaces the built-in operator table (plugins' operators).
    """

    def __init__(self, base_url: str, sdk_key: str, *, poll_interval: float = 30.0,
                 jitter: float = 0.1, timeout: float = 10.0, max_backoff: float = 300.0,
                 bootstrap: Mapping[str, Any] | str | os.PathLike[str] | None = None,
                 cache_path: str | os.PathLike[str] | None = None, stream: bool = False,
                 events: bool = True, flush_interval: float = 5.0, batch_size: int = 500,
                 max_queue: int = 10_000, sticky_lookup: bool = True,
                 sticky_capacity: int = 100_000, on_change: Callable[[ClientEvent], None] | None = None,
                 operators: Mapping[str, Operator] | None = None) -> None:
        if poll_interval <= 0 or timeout <= 0 or flush_interval <= 0:
            raise ValueError("poll_interval, timeout and flush_interval must be positive")
        self._operators = dict(operators) if operators is not None else default_operators()
        self._transport = Transport(base_url, sdk_key, timeout)
        self._holder = Holder()
        self._cache_path = Path(cache_path) if cache_path is not None else None
        self._load_initial(bootstrap)
        self._poller = Poller(self._transport, self._holder, self._operators,
                              poll_interval=poll_interval, jitter=jitter,
                              max_backoff=max_backoff, cache_path=self._cache_path)
        self._stream = Stream(self._transport, self._poller, self._holder) if stream else None
        self._sender = (EventSender(self._transport, EventQueue(max_queue),
                                    flush_interval=flush_interval, batch_size=batch_size)
                        if events else None)
        self._assignments = LruAssignments(sticky_capacity)
        self._sticky_lookup = sticky_lookup
        self._lookup_timeout = min(timeout, 2.0)
        if on_change is not None:
            self._holder.add_listener(lambda event: on_change(event) if event.kind == "change" else None)
        self._lock = threading.Lock()
        self._closed = False
        self._restart = False  # set in a forked child: threads start again on first use
        # stops the threads and flushes events at exit, or when the client is dropped
        # unclosed (the threads hold no reference to the client, so it can be collected)
        self._finalizer = weakref.finalize(self, _shutdown, self._poller, self._stream,
                                           self._sender, self._transport, EXIT_FLUSH_SECONDS)
        _clients.add(self)
        self._start()

    def _load_initial(self, bootstrap: Mapping[str, Any] | str | os.PathLike[str] | None) -> None:
        candidates = []
        if bootstrap is not None:
            candidates.append(load_bootstrap(bootstrap, self._operators))  # bad input raises
        if self._cache_path is not None:
            cached = load_cache(self._cache_path, self._operators)
            if cached is not None:
                candidates.append(cached)
        if candidates:
            # the newest wins; on a tie the cached copy, whose ETag can earn a 304
            best = max(candidates, key=lambda c: (c.snapshot.revision, c.etag is not None))
            self._holder.install(best)
            self._holder.status = STALE

    def _start(self) -> None:
        self._poller.start()
        if self._stream is not None:
            self._stream.start()

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, flag_key: str, context: Any) -> Evaluation:
        """Evaluate one flag for `context` ({"key": unit, ...}); never raises."""
        try:
            if self._restart:
                self._restart_in_child()
            current = self._holder.current
            if current is None:
                return self._unavailable(flag_key)
            try:
                experiment = flag_key in current.experiment_flags
            except TypeError:  # an unhashable key: the core reports FLAG_NOT_FOUND
                experiment = False
            if experiment:
                return self._evaluate_experiment(current, flag_key, context)
            result = current.snapshot.evaluate(flag_key, context)
            return result if result.arm is None else self._record_arm(result, context)
        except Exception as err:  # noqa: BLE001 - an odd key or a failing lookup must not reach callers
            return Evaluation(flag_key if isinstance(flag_key, str) else repr(flag_key), None, None,
                              ERROR, None, GENERAL, f"{type(err).__name__}: {err}")

    def _unavailable(self, flag_key: str) -> Evaluation:
        fatal = self._holder.status == FATAL
        message = self._holder.message or "no snapshot yet: the client has not reached the server"
        return Evaluation(flag_key if isinstance(flag_key, str) else repr(flag_key), None, None, ERROR,
                          None, PROVIDER_FATAL if fatal else PROVIDER_NOT_READY, message)

    def _evaluate_experiment(self, current: Current, flag_key: str, context: Any) -> Evaluation:
        unit = _unit(context)
        if unit is None:  # no unit: no experiment can place it; the clock still matters
            return current.snapshot.evaluate(flag_key, context, EvalState(now=time.time()))
        sticky = self._assignments.known(unit)
        if sticky is None:
            sticky = self._lookup(unit)
        result = current.snapshot.evaluate(flag_key, context, EvalState(time.time(), sticky))
        if result.experiment is None or result.reason != SPLIT or result.experiment in sticky:
            return result  # allowlisted units are not randomised: no exposure
        return self._record(current, result, unit)

    def _record_arm(self, result: Evaluation, context: Any) -> Evaluation:
        """A guarded rollout's arm: send one exposure per unit and rollout attempt."""
        unit = _unit(context)
        if unit is None or result.experiment is None:
            return result
        _, created = self._assignments.assign(Assignment(
            result.experiment, unit, result.arm or "", "", datetime.now(timezone.utc)))
        if created and self._sender is not None and not self._closed:
            self._sender.add(exposure_event(unit, result.experiment, result.arm or ""))
        return result

    def _lookup(self, unit: str) -> dict[str, str]:
        if not self._sticky_lookup or self._holder.status != READY:
            return {}  # the server is not answering: local hashing, no waiting
        found = fetch_assignments(self._transport, unit, self._lookup_timeout)
        if found is None:
            return {}
        return self._assignments.remember(unit, found)

    def _record(self, current: Current, result: Evaluation, unit: str) -> Evaluation:
        spec = current.snapshot.experiments[result.experiment or ""]
        kept, created = self._assignments.assign(Assignment(
            spec.key, unit, result.variant or "", spec.layer, datetime.now(timezone.utc)))
        if kept.variant != result.variant:  # another thread assigned this unit first: theirs holds
            flag = current.snapshot.flags[result.flag_key]
            result = replace(result, variant=kept.variant, value=flag.variants[kept.variant])
        elif created and self._sender is not None and not self._closed:
            self._sender.add(exposure_event(unit, spec.key, kept.variant))
        return result

    def resolve(self, flag_key: str, context: Any) -> Resolved:
        """`evaluate` plus the flag's declared type and the snapshot revision."""
        result = self.evaluate(flag_key, context)
        current = self._holder.current
        if current is None:
            return Resolved(result, None, None)
        if result.error_code is not None:
            return Resolved(result, None, current.snapshot.revision)
        return Resolved(result, current.flag_types.get(flag_key), current.snapshot.revision)

    def _typed(self, flag_key: str, context: Any, default: Any, flag_type: str) -> Any:
        resolved = self.resolve(flag_key, context)
        if resolved.evaluation.error_code is None and resolved.flag_type == flag_type:
            return resolved.evaluation.value
        return default

    def bool_value(self, flag_key: str, context: Any, default: bool) -> bool:
        """The flag's value if it is a boolean flag that evaluated cleanly, else `default`."""
        return cast(bool, self._typed(flag_key, context, default, "boolean"))

    def string_value(self, flag_key: str, context: Any, default: str) -> str:
        """The flag's value if it is a string flag that evaluated cleanly, else `default`."""
        return cast(str, self._typed(flag_key, context, default, "string"))

    def number_value(self, flag_key: str, context: Any, default: float) -> float:
        """The flag's value (int or float) if it is a number flag that evaluated cleanly, else `default`."""
        return cast(float, self._typed(flag_key, context, default, "number"))

    def json_value(self, flag_key: str, context: Any, default: Any) -> Any:
        """A copy of the flag's value if it is a json flag that evaluated cleanly, else `default`."""
        value = self._typed(flag_key, context, _MISSING, "json")
        # a copy: the snapshot's value is shared by every evaluation and must stay intact
        return default if value is _MISSING else copy.deepcopy(value)

    # -- events --------------------------------------------------------------------------

    def track(self, unit: Any, event: str, value: float | None = None,
              properties: dict[str, Any] | None = None) -> str | None:
        """Queue a metric event; return its event_id (None when it cannot be recorded)."""
        try:
            key = unit_key(unit)
        except TypeError:
            key = None
        if key is None or not isinstance(event, str) or not event or event.startswith("$"):
            log.warning("flagship: track() needs a unit and an event name not starting with '$'; "
                        "got unit=%r event=%r", unit, event)
            return None
        problem = _event_problem(value, properties)
        if problem is not None:
            log.warning("flagship: track(%r, %r) not recorded: %s", key, event, problem)
            return None
        if self._sender is None or self._closed:
            return None
        if self._restart:
            self._restart_in_child()
        item = metric_event(key, event, None if value is None else float(value), properties)
        self._sender.add(item)
        return str(item["event_id"])

    def flush(self, timeout: float = 5.0) -> bool:
        """Send every queued event now; True when none is left."""
        return self._sender.flush(timeout) if self._sender is not None else True

    # -- state ---------------------------------------------------------------------------

    def ready(self, timeout: float | None = None) -> bool:
        """Wait (up to `timeout` s) for the first fetch; True when a snapshot can be served.

        Returns early once the server answered, the key is refused, or a fetch failed
        while a bootstrap or cached snapshot is at hand.
        """
        if self._restart:
            self._restart_in_child()
        self._holder.wait_settled(timeout)
        return self._holder.current is not None

    @property
    def status(self) -> str:
        """"not_ready", "ready", "stale", "error" or "fatal" (see the module docstring)."""
        return self._holder.status

    @property
    def status_message(self) -> str | None:
        """Why the last fetch failed (None after a success)."""
        return self._holder.message

    @property
    def revision(self) -> int | None:
        """The revision of the snapshot being served (None before the first)."""
        current = self._holder.current
        return current.snapshot.revision if current else None

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: snapshot requests and failures, stream state, events sent/dropped/queued."""
        out: dict[str, Any] = {"snapshot_requests": self._poller.requests,
                               "poll_failures": self._poller.failures,
                               "polling": self._poller.alive,
                               "streaming": self._poller.streaming,
                               "sticky_units": len(self._assignments)}
        if self._stream is not None:
            out["stream_failures"] = self._stream.failures
        if self._sender is not None:
            out.update(self._sender.stats, queued=len(self._sender.queue) + self._sender.pending,
                       dropped=self._sender.queue.dropped)
        return out

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(ClientEvent)` on new snapshots, status changes and failed fetches."""
        self._holder.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`."""
        self._holder.remove_listener(listener)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop background work and send queued events (waiting up to `timeout` s); idempotent.

        Events get one delivery attempt (no retries: a server that is down must not hold
        up shutdown). Also runs at interpreter exit (up to 2 s) for clients still open.
        """
        with self._lock:
            self._closed = True
            detached = self._finalizer.detach()  # None once closed: close runs once
        if detached is not None:
            _shutdown(self._poller, self._stream, self._sender, self._transport, timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork(self) -> None:
        """In a forked child: replace everything the parent's threads may hold."""
        self._lock = threading.Lock()
        self._transport.reset()
        self._holder.after_fork()
        self._poller.after_fork()
        if self._stream is not None:
            self._stream.after_fork()
        if self._sender is not None:
            self._sender.after_fork()
        self._assignments.after_fork()
        self._restart = not self._closed

    def _restart_in_child(self) -> None:
        with self._lock:
            if self._restart:
                self._restart = False
                self._start()

    def __repr__(self) -> str:
        return f"<flagship.sdk.Client status={self.status} revision={self.revision}>"


_MISSING = object()


def _unit(context: Any) -> str | None:
    if not isinstance(context, Mapping):
        return None
    raw = context.get("key")
    if raw is None:
        raw = context.get("targetingKey")
    try:
        return unit_key(raw)
    except TypeError:
        return None


# Every live client, for the fork and exit hooks (weak: a dropped client is not kept alive).
_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._after_fork()


def _shutdown(poller: Poller, stream: Stream | None, sender: EventSender | None,
              transport: Transport, timeout: float) -> None:
    """Stop a client's threads and send its queued events (close(), exit, or collection)."""
    poller.stop(timeout)
    if stream is not None:
        stream.stop(timeout)
    if sender is not None:
        sender.stop(timeout)
        # one round, no retries: a server that is down must not hold up shutdown
        if not sender.flush(timeout, retry=False):
            log.warning("flagship: %d events not delivered at close",
                        len(sender.queue) + sender.pending)
    transport.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _event_problem(value: Any, properties: Any) -> str | None:
    """Why a tracked value or properties cannot be sent (the event thread would choke on
    them later, with every event queued behind them), or None."""
    if value is not None:
        if isinstance(value, bool):
            return f"value must be a number, got {value!r}"
        try:
            number = float(value)  # numpy scalars and Decimals are numbers too
        except (TypeError, ValueError):
            return f"value must be a number, got {type(value).__name__}"
        if not math.isfinite(number):
            return f"value must be finite, got {value!r}"
    if properties is not None:
        if not isinstance(properties, dict):
            return f"properties must be a dict, got {type(properties).__name__}"
        try:
            json.dumps(properties, allow_nan=False)
        except (TypeError, ValueError) as err:
            return f"properties must be plain JSON ({err})"
    return None
