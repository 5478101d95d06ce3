"""FlagshipProvider through the official openfeature-sdk API, against a real `flagship serve`."""
from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from openfeature.track import TrackingEventDetails

from flagship.sdk import Client
from flagship.sdk.openfeature import FlagshipProvider, to_context
from tests.sdk_server import Server, dead_url, shared_server, wait_for

FAST: dict[str, Any] = {"poll_interval": 0.2, "jitter": 0.0, "max_backoff": 0.4, "timeout": 2.0}
DEAD_URL = dead_url()
FLAGS = [
    {"key": "of-bool", "type": "boolean", "variants": {"on": True, "off": False},
     "default_variant": "off", "rules": [{"id": "beta", "kind": "force", "variant": "on", "conditions": [
         {"attribute": "plan", "operator": "eq", "values": ["beta"]}]}]},
    {"key": "of-string", "type": "string", "variants": {"a": "alpha", "b": "beta"}, "default_variant": "b"},
    {"key": "of-int", "type": "number", "variants": {"small": 10, "big": 20}, "default_variant": "big"},
    {"key": "of-float", "type": "number", "variants": {"half": 2.5, "one": 1}, "default_variant": "half"},
    {"key": "of-object", "type": "json", "variants": {"cfg": {"a": 1, "b": [1, 2]}, "none": {}},
     "default_variant": "cfg"},
    {"key": "of-scalar", "type": "json", "variants": {"t": "text"}, "default_variant": "t"},
]


@pytest.fixture(scope="module")
def server() -> Server:
    srv = shared_server()
    for flag in FLAGS:
        srv.seed("/api/v1/flags", flag)
    srv.seed("/api/v1/layers", {"key": "of-layer"})
    srv.seed("/api/v1/experiments", {
        "key": "of-exp", "flag": "of-exp-flag", "layer": "of-layer", "traffic_percentage": 100,
        "variants": [{"variant": "control", "value": "c", "is_control": True},
                     {"variant": "treatment", "value": "t"}]})
    srv.seed("/api/v1/experiments/of-exp/start")
    return srv


@pytest.fixture
def sdk_key(server: Server) -> str:
    return server.sdk_key()[1]


@pytest.fixture
def events() -> Iterator[list[tuple[ProviderEvent, EventDetails]]]:
    """Provider events seen by global handlers; providers are cleared after the test."""
    seen: list[tuple[ProviderEvent, EventDetails]] = []
    lock = threading.Lock()
    handlers = {kind: (lambda details, kind=kind: _append(lock, seen, kind, details))
                for kind in ProviderEvent}
    for kind, handler in handlers.items():
        api.add_handler(kind, handler)
    yield seen
    for kind, handler in handlers.items():
        api.remove_handler(kind, handler)
    api.clear_providers()


def _append(lock: threading.Lock, seen: list[Any], kind: ProviderEvent, details: EventDetails) -> None:
    with lock:
        seen.append((kind, details))


def kinds(seen: list[tuple[ProviderEvent, EventDetails]]) -> list[ProviderEvent]:
    """Our provider's events in order (a handler added while the no-op provider is
    the default also hears that provider's immediate READY)."""
    return [kind for kind, details in list(seen) if details.provider_name == "flagship"]


def test_every_type_resolves_with_reason_variant_and_metadata(server: Server, sdk_key: str,
                                                              events: list[Any]) -> None:
    client = Client(server.base_url, sdk_key, **FAST)
    api.set_provider_and_wait(FlagshipProvider(client))
    of = api.get_client()
    assert api.get_provider_metadata().name == "flagship"
    assert of.get_provider_status() == ProviderStatus.READY
    revision = client.revision
    beta = EvaluationContext("u-1", {"plan": "beta"})
    details = of.get_boolean_details("of-bool", False, beta)
    assert (details.value, details.reason, details.variant, details.error_code) == (
        True, Reason.TARGETING_MATCH, "on", None)
    assert details.flag_metadata == {"ruleId": "beta", "snapshotRevision": revision}
    assert of.get_boolean_details("of-bool", True, EvaluationContext("u-1")).reason == Reason.DEFAULT
    assert of.get_string_value("of-string", "x", beta) == "beta"
    assert of.get_integer_details("of-int", 0).value == 20
    assert of.get_float_value("of-float", 0.0) == 2.5
    widened = of.get_float_details("of-int", 0.0)
    assert widened.value == 20.0 and isinstance(widened.value, float)
    obj = of.get_object_value("of-object", {})
    assert obj == {"a": 1, "b": [1, 2]} and isinstance(obj, dict)
    obj["a"] = 99  # the caller's copy: the snapshot is untouched
    assert of.get_object_value("of-object", {}) == {"a": 1, "b": [1, 2]}
    exp = of.get_string_details("of-exp-flag", "x", EvaluationContext("unit-7"))
    assert exp.reason == Reason.SPLIT and exp.value in ("c", "t")
    assert exp.flag_metadata["experiment"] == "of-exp"
    # handlers hear provider events from the SDK's own dispatch, which may trail
    # set_provider_and_wait by a moment
    assert wait_for(lambda: kinds(events)[:1] == [ProviderEvent.PROVIDER_READY], 5)


@pytest.mark.parametrize(("method", "flag", "default", "code"), [
    ("get_integer_details", "of-float", 1, ErrorCode.TYPE_MISMATCH),
    ("get_string_details", "of-bool", "d", ErrorCode.TYPE_MISMATCH),
    ("get_boolean_details", "of-int", True, ErrorCode.TYPE_MISMATCH),
    ("get_object_details", "of-scalar", {"d": 1}, ErrorCode.TYPE_MISMATCH),
    ("get_float_details", "of-string", 0.5, ErrorCode.TYPE_MISMATCH),
    ("get_boolean_details", "no-such-flag", True, ErrorCode.FLAG_NOT_FOUND),
])
def test_error_paths_return_the_default_with_the_code(server: Server, sdk_key: str, events: list[Any],
                                                      method: str, flag: str, default: Any,
                                                      code: ErrorCode) -> None:
    api.set_provider_and_wait(FlagshipProvider(Client(server.base_url, sdk_key, **FAST)))
    details = getattr(api.get_client(), method)(flag, default, EvaluationContext("u-2"))
    assert (details.value, details.reason, details.error_code) == (default, Reason.ERROR, code)
    assert details.error_message


def test_invalid_context_is_reported(server: Server, sdk_key: str, events: list[Any]) -> None:
    api.set_provider_and_wait(FlagshipProvider(Client(server.base_url, sdk_key, **FAST)))
    details = api.get_client().get_string_details("of-string", "d", EvaluationContext(
        None, {"key": {"not": "a unit"}}))
    assert (details.value, details.error_code) == ("d", ErrorCode.INVALID_CONTEXT)


def test_not_ready_without_a_snapshot_then_errors_carry_provider_not_ready(events: list[Any]) -> None:
    provider = FlagshipProvider(Client(DEAD_URL, "k", **FAST), init_timeout=0.2)
    with pytest.raises(ProviderNotReadyError):
        api.set_provider_and_wait(provider)
    of = api.get_client()
    assert of.get_provider_status() == ProviderStatus.ERROR
    details = of.get_boolean_details("of-bool", True)
    assert (details.value, details.error_code) == (True, ErrorCode.PROVIDER_NOT_READY)


def test_a_refused_key_is_provider_fatal(server: Server, events: list[Any]) -> None:
    api.set_provider(FlagshipProvider(Client(server.base_url, "fsk_sdk_wrong", **FAST)))
    of = api.get_client()
    assert wait_for(lambda: of.get_provider_status() == ProviderStatus.FATAL, 5)
    details = of.get_boolean_details("of-bool", True)
    assert (details.value, details.error_code) == (True, ErrorCode.PROVIDER_FATAL)


def test_a_key_revoked_later_turns_the_provider_fatal(server: Server, events: list[Any]) -> None:
    name, key = server.sdk_key()
    api.set_provider_and_wait(FlagshipProvider(Client(server.base_url, key, **FAST)))
    server.ok("DELETE", f"/api/v1/keys/{name}")
    of = api.get_client()
    assert wait_for(lambda: of.get_provider_status() == ProviderStatus.FATAL, 5)
    assert wait_for(lambda: ProviderEvent.PROVIDER_ERROR in kinds(events), 2)
    error = next(d for k, d in events if k == ProviderEvent.PROVIDER_ERROR
                 and d.provider_name == "flagship")
    assert error.error_code == ErrorCode.PROVIDER_FATAL
    assert of.get_boolean_details("of-bool", True).error_code == ErrorCode.PROVIDER_FATAL


def test_events_follow_the_client_through_an_outage_and_a_change(server: Server, sdk_key: str,
                                                                 events: list[Any]) -> None:
    api.set_provider_and_wait(FlagshipProvider(Client(server.base_url, sdk_key, **FAST)))
    of = api.get_client()
    server.kill()
    try:
        assert wait_for(lambda: of.get_provider_status() == ProviderStatus.STALE, 3)
        assert of.get_string_value("of-string", "x") == "beta"  # the last good snapshot
    finally:
        server.start()
    assert wait_for(lambda: of.get_provider_status() == ProviderStatus.READY, 5)
    server.patch_flag("of-string", {"default_variant": "a"})
    try:
        assert wait_for(lambda: of.get_string_value("of-string", "x") == "alpha", 3)
        assert wait_for(lambda: any(k == ProviderEvent.PROVIDER_CONFIGURATION_CHANGED
                                    and "of-string" in (d.flags_changed or []) for k, d in events), 2)
    finally:
        server.patch_flag("of-string", {"default_variant": "b"})
    assert [k for k in kinds(events) if k != ProviderEvent.PROVIDER_CONFIGURATION_CHANGED][:3] == [
        ProviderEvent.PROVIDER_READY, ProviderEvent.PROVIDER_STALE, ProviderEvent.PROVIDER_READY]


def test_track_becomes_a_flagship_event(server: Server, sdk_key: str, events: list[Any]) -> None:
    client = Client(server.base_url, sdk_key, **FAST)
    api.set_provider_and_wait(FlagshipProvider(client))
    of = api.get_client()
    of.track("purchase", EvaluationContext("of-track-unit"),
             TrackingEventDetails(value=3.5, attributes={"sku": "x-1"}))
    of.track("purchase", EvaluationContext(None))  # no unit: dropped, never raises
    assert client.flush(timeout=5)
    rows = server.query("SELECT event, value, properties FROM events WHERE unit = 'of-track-unit'")
    assert rows == [("purchase", 3.5, '{"sku": "x-1"}')]


def test_context_mapping() -> None:
    from datetime import datetime, timezone

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert to_context(EvaluationContext("u", {"country": "NL", "signup": when})) == {
        "key": "u", "country": "NL", "signup": "2026-01-02T03:04:05+00:00"}
    assert to_context(None) == {} and to_context(EvaluationContext()) == {}
