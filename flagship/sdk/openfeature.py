"""OpenFeature provider over the flagship SDK client (`pip install flagship[openfeature]`).

    from openfeature import api
    from flagship.sdk import Client
    from flagship.sdk.openfeature import FlagshipProvider

    api.set_provider_and_wait(FlagshipProvider(Client(url, sdk_key)))
    api.get_client().get_boolean_value("new-checkout", False, EvaluationContext("user-42"))

Evaluation is local (the client's snapshot), so resolving costs microseconds. Mapping:

- context: ``targeting_key`` is our unit ``key``; attributes pass through (datetimes as
  ISO-8601 strings, which the before/after operators read).
- types: boolean, string and json flags resolve as boolean, string and object (a json
  flag must hold an object or a list); number flags resolve as float (ints widened) and
  as integer only when the value is an int: ``2.5`` asked as an integer is TYPE_MISMATCH.
- reasons are ours, which are OpenFeature's (TARGETING_MATCH, SPLIT, DEFAULT, DISABLED,
  ERROR); error codes FLAG_NOT_FOUND, INVALID_CONTEXT, TYPE_MISMATCH, GENERAL,
  PROVIDER_NOT_READY (no snapshot yet) and PROVIDER_FATAL (the key got 401/403).
- flag metadata: ``ruleId``, ``experiment`` (when set) and ``snapshotRevision``.
- events: READY when the client fetches successfully again, STALE while it serves an
  old snapshot because fetches fail, ERROR when it has nothing to serve (with
  PROVIDER_FATAL after 401/403), CONFIGURATION_CHANGED with the changed flag keys.
- ``track(name, context, details)``: our ``track(targeting_key, name, details.value,
  details.attributes)``; without a targeting key the event is dropped (logged).
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import weakref
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderFatalError, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from flagship.sdk.client import PROVIDER_FATAL, Client, Resolved
from flagship.sdk.snapshots import ERROR, FATAL, READY, STALE, ClientEvent

log = logging.getLogger("flagship.sdk")

_MISMATCH = object()
Convert = Callable[[str | None, Any], Any]


def _boolean(flag_type: str | None, value: Any) -> Any:
    return value if flag_type == "boolean" else _MISMATCH


def _string(flag_type: str | None, value: Any) -> Any:
    return value if flag_type == "string" else _MISMATCH


def _integer(flag_type: str | None, value: Any) -> Any:
    # strict: a float value (even 10.0) is not an integer flag value
    return value if flag_type == "number" and type(value) is int else _MISMATCH


def _float(flag_type: str | None, value: Any) -> Any:
    return float(value) if flag_type == "number" else _MISMATCH


def _object(flag_type: str | None, value: Any) -> Any:
    if flag_type != "json" or not isinstance(value, (dict, list)):
        return _MISMATCH
    return copy.deepcopy(value)  # the snapshot's value is shared: callers get their own


def to_context(evaluation_context: EvaluationContext | None) -> dict[str, Any]:
    """Our context from OpenFeature's: targeting key -> "key", datetimes -> ISO strings."""
    if evaluation_context is None:
        return {}
    context = dict(evaluation_context.attributes)
    for name, value in context.items():
        if isinstance(value, datetime):
            context[name] = value.isoformat()  # replacing values while iterating is safe
    if evaluation_context.targeting_key:
        context["key"] = evaluation_context.targeting_key
    return context


class FlagshipProvider(AbstractProvider):
    """An OpenFeature provider that resolves flags locally with a `flagship.sdk.Client`."""

    def __init__(self, client: Client, *, init_timeout: float = 10.0,
                 close_client: bool = True) -> None:
        super().__init__()
        self.client = client
        self._init_timeout = init_timeout
        self._close_client = close_client
        self._reported: str | None = None  # the status OpenFeature last heard from us
        self._lock = threading.Lock()
        _providers.add(self)

    def get_metadata(self) -> Metadata:
        """The provider's name, "flagship"."""
        return Metadata(name="flagship")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Wait for the client's first snapshot; raise PROVIDER_FATAL / NOT_READY without one."""
        self.client.add_listener(self._on_client_event)
        self.client.ready(self._init_timeout)
        with self._lock:
            if self.client.status == FATAL:
                self._reported = FATAL
                raise ProviderFatalError(self.client.status_message)
            if self.client.revision is None:
                self._reported = ERROR
                raise ProviderNotReadyError(self.client.status_message or "no snapshot yet")
            self._reported = READY  # what OpenFeature concludes when we return

    def shutdown(self) -> None:
        """Stop listening; close the client (and flush its events) unless told not to."""
        self.client.remove_listener(self._on_client_event)
        with self._lock:
            self._reported = None
        if self._close_client:
            self.client.close()

    # -- resolution ----------------------------------------------------------------------

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None
                                ) -> FlagResolutionDetails[bool]:
        """Resolve a boolean flag."""
        return self._resolve(flag_key, default_value, evaluation_context, _boolean)

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None
                               ) -> FlagResolutionDetails[str]:
        """Resolve a string flag."""
        return self._resolve(flag_key, default_value, evaluation_context, _string)

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None
                                ) -> FlagResolutionDetails[int]:
        """Resolve a number flag holding an int."""
        return self._resolve(flag_key, default_value, evaluation_context, _integer)

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None
                              ) -> FlagResolutionDetails[float]:
        """Resolve a number flag as a float."""
        return self._resolve(flag_key, default_value, evaluation_context, _float)

    def resolve_object_details(self, flag_key: str,
                               default_value: Sequence[Any] | Mapping[str, Any],
                               evaluation_context: EvaluationContext | None = None
                               ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        """Resolve a json flag holding an object or a list."""
        return self._resolve(flag_key, default_value, evaluation_context, _object)

    def _resolve(self, flag_key: str, default: Any, evaluation_context: EvaluationContext | None,
                 convert: Convert) -> FlagResolutionDetails[Any]:
        resolved = self.client.resolve(flag_key, to_context(evaluation_context))
        result = resolved.evaluation
        if result.error_code is not None:
            return FlagResolutionDetails(default, _error_code(result.error_code), result.error_message,
                                         Reason.ERROR, flag_metadata=_metadata(resolved))
        if self.client.status == FATAL:
            return FlagResolutionDetails(default, ErrorCode.PROVIDER_FATAL, self.client.status_message,
                                         Reason.ERROR, flag_metadata=_metadata(resolved))
        value = convert(resolved.flag_type, result.value)
        if value is _MISMATCH:
            message = (f"flag {flag_key!r} is a {resolved.flag_type} flag holding "
                       f"{type(result.value).__name__} {result.value!r}")
            return FlagResolutionDetails(default, ErrorCode.TYPE_MISMATCH, message, Reason.ERROR,
                                         flag_metadata=_metadata(resolved))
        return FlagResolutionDetails(value, reason=_REASONS.get(result.reason, Reason.UNKNOWN),
                                     variant=result.variant, flag_metadata=_metadata(resolved))

    # -- tracking and events -------------------------------------------------------------

    def track(self, tracking_event_name: str, evaluation_context: EvaluationContext | None = None,
              tracking_event_details: TrackingEventDetails | None = None) -> None:
        """Record `tracking_event_name` for the context's targeting key as a flagship event."""
        unit = evaluation_context.targeting_key if evaluation_context is not None else None
        if not unit:
            log.warning("flagship: track(%r) without a targeting key was dropped", tracking_event_name)
            return
        details = tracking_event_details
        self.client.track(unit, tracking_event_name, details.value if details else None,
                          dict(details.attributes) if details and details.attributes else None)

    def _on_client_event(self, event: ClientEvent) -> None:
        with self._lock:
            if self._reported is None:
                return  # before initialize() settles (it reports itself) or after shutdown
            if event.kind == "change":
                self.emit_provider_configuration_changed(ProviderEventDetails(
                    flags_changed=list(event.flags_changed),
                    metadata={"snapshotRevision": event.revision} if event.revision is not None else {}))
            if event.status != self._reported and event.status in _EMITTERS:
                self._reported = event.status
                _EMITTERS[event.status](self, event)


def _emit_ready(provider: FlagshipProvider, event: ClientEvent) -> None:
    provider.emit_provider_ready(ProviderEventDetails(message="snapshot fetched"))


def _emit_stale(provider: FlagshipProvider, event: ClientEvent) -> None:
    provider.emit_provider_stale(ProviderEventDetails(
        message=f"serving the last good snapshot: {event.message}"))


def _emit_error(provider: FlagshipProvider, event: ClientEvent) -> None:
    code = ErrorCode.PROVIDER_FATAL if event.status == FATAL else ErrorCode.GENERAL
    provider.emit_provider_error(ProviderEventDetails(message=event.message, error_code=code))


_EMITTERS: dict[str, Callable[[FlagshipProvider, ClientEvent], None]] = {
    READY: _emit_ready, STALE: _emit_stale, ERROR: _emit_error, FATAL: _emit_error}
_REASONS = {reason.value: reason for reason in Reason}
_ERROR_CODES = {code.value: code for code in ErrorCode}


def _error_code(code: str) -> ErrorCode:
    if code == PROVIDER_FATAL:
        return ErrorCode.PROVIDER_FATAL
    return _ERROR_CODES.get(code, ErrorCode.GENERAL)


def _metadata(resolved: Resolved) -> dict[str, bool | int | float | str]:
    result = resolved.evaluation
    out: dict[str, bool | int | float | str] = {}
    if result.rule_id is not None:
        out["ruleId"] = result.rule_id
    if result.experiment is not None:
        out["experiment"] = result.experiment
    if resolved.revision is not None:
        out["snapshotRevision"] = resolved.revision
    return out


# Live providers: a forked child must not inherit a lock the parent's poller held.
_providers: weakref.WeakSet[FlagshipProvider] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for provider in list(_providers):
        provider._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
