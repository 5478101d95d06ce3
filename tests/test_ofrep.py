"""OFREP: the official `openfeature-provider-ofrep` against a real `flagship serve`, and the
bulk endpoint (ETag per context, partial failures, X-API-Key, environments) on both backends."""
from __future__ import annotations

import http.client
import json
import uuid
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from openfeature import api as openfeature
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from flagship.auth import create_key, revoke_key
from flagship.serving import changes
from tests.conftest import boolean_flag
from tests.sdk_server import Server, shared_server

NL = EvaluationContext("user-1", {"country": "NL"})
FLAGS = [
    boolean_flag("ofrep-bool", rules=[{"id": "nl", "kind": "force", "variant": "on", "conditions": [
        {"attribute": "country", "operator": "in", "values": ["NL"]}]}]),
    {"key": "ofrep-string", "type": "string", "variants": {"r": "red", "g": "green"},
     "default_variant": "g"},
    {"key": "ofrep-int", "type": "number", "variants": {"low": 1, "high": 5}, "default_variant": "high"},
    {"key": "ofrep-float", "type": "number", "variants": {"small": 10.0, "big": 12.5},
     "default_variant": "small"},
    {"key": "ofrep-object", "type": "json", "variants": {"a": {"limit": 3, "tags": ["x"]}, "b": [1, 2]},
     "default_variant": "a"},
    boolean_flag("ofrep-off", enabled=False),
    boolean_flag("ofrep-ramp", rules=[{"id": "ramp", "kind": "rollout", "variant": "on",
                                       "percentage": 100}]),
]


# -- the official provider against a real server ------------------------------------------

@pytest.fixture(scope="module")
def server() -> Server:
    srv = shared_server()
    for flag in FLAGS:
        srv.seed("/api/v1/flags", flag)
    srv.seed("/api/v1/layers", {"key": "ofrep-layer"})
    srv.seed("/api/v1/experiments", {
        "key": "ofrep-exp", "flag": "ofrep-exp-flag", "layer": "ofrep-layer", "traffic_percentage": 100,
        "variants": [{"variant": "blue", "value": "#00f", "is_control": True},
                     {"variant": "green", "value": "#0a0"}]})
    srv.seed("/api/v1/experiments/ofrep-exp/start")
    return srv


@pytest.fixture(scope="module")
def sdk_key(server: Server) -> str:
    return server.sdk_key()[1]


def ofrep(server: Server, key: str, header: str = "Authorization") -> OpenFeatureClient:
    """An OpenFeature client whose provider is the official OFREP provider, in a domain of its own."""
    headers = {"Authorization": f"Bearer {key}"} if header == "Authorization" else {header: key}
    domain = f"ofrep-{uuid.uuid4().hex[:8]}"
    openfeature.set_provider(OFREPProvider(server.base_url, headers_factory=lambda: headers,
                                           timeout=5.0), domain)
    return openfeature.get_client(domain)


def test_every_flag_type_with_its_reason_variant_and_metadata(server: Server, sdk_key: str) -> None:
    client = ofrep(server, sdk_key)
    hit = client.get_boolean_details("ofrep-bool", False, NL)
    assert (hit.value, hit.reason, hit.variant, hit.error_code) == (True, Reason.TARGETING_MATCH, "on", None)
    assert hit.flag_metadata["ruleId"] == "nl" and hit.flag_metadata["environment"] == "production"
    assert isinstance(hit.flag_metadata["snapshotRevision"], int)
    miss = client.get_boolean_details("ofrep-bool", True, EvaluationContext("user-1", {"country": "FR"}))
    assert (miss.value, miss.reason, miss.variant) == (False, Reason.DEFAULT, "off")
    static = client.get_string_details("ofrep-string", "x", NL)  # no rules: the same for everyone
    assert (static.value, static.reason, static.variant) == ("green", Reason.STATIC, "g")
    integer = client.get_integer_details("ofrep-int", 0, NL)
    assert (integer.value, integer.reason, integer.error_code) == (5, Reason.STATIC, None)
    assert type(integer.value) is int
    number = client.get_float_details("ofrep-float", 0.5, NL)
    assert (number.value, number.variant, number.error_code) == (10.0, "small", None)
    assert type(number.value) is float
    obj = client.get_object_details("ofrep-object", {}, NL)
    assert (obj.value, obj.variant) == ({"limit": 3, "tags": ["x"]}, "a")
    off = client.get_boolean_details("ofrep-off", True, NL)
    assert (off.value, off.reason, off.variant) == (False, Reason.DISABLED, "off")
    split = client.get_boolean_details("ofrep-ramp", False, NL)
    assert (split.value, split.reason, split.flag_metadata["ruleId"]) == (True, Reason.SPLIT, "ramp")


def test_flag_not_found_and_type_mismatch(server: Server, sdk_key: str) -> None:
    client = ofrep(server, sdk_key)
    missing = client.get_boolean_details("ofrep-missing", True, NL)
    assert (missing.value, missing.error_code, missing.reason) == \
        (True, ErrorCode.FLAG_NOT_FOUND, Reason.ERROR)
    assert "ofrep-missing" in missing.error_message
    # an integer flag is not a float flag and the other way round: OpenFeature checks strictly
    as_float = client.get_float_details("ofrep-int", 0.5, NL)
    assert (as_float.value, as_float.error_code) == (0.5, ErrorCode.TYPE_MISMATCH)
    as_int = client.get_integer_details("ofrep-float", 7, NL)
    assert (as_int.value, as_int.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    as_bool = client.get_boolean_details("ofrep-string", False, NL)
    assert (as_bool.value, as_bool.error_code) == (False, ErrorCode.TYPE_MISMATCH)


def test_no_targeting_key_is_no_error(server: Server, sdk_key: str) -> None:
    client = ofrep(server, sdk_key)
    anonymous = EvaluationContext(attributes={"country": "NL"})
    ramp = client.get_boolean_details("ofrep-ramp", True, anonymous)  # a rollout needs a unit
    assert (ramp.value, ramp.reason, ramp.error_code) == (False, Reason.DEFAULT, None)
    assert client.get_boolean_details("ofrep-bool", False, anonymous).reason == Reason.TARGETING_MATCH
    nothing = client.get_boolean_details("ofrep-ramp", True)  # no context at all: no body
    assert (nothing.value, nothing.reason, nothing.error_code) == (False, Reason.DEFAULT, None)


def test_x_api_key_header(server: Server, sdk_key: str) -> None:
    client = ofrep(server, sdk_key, header="X-API-Key")
    assert client.get_boolean_details("ofrep-bool", False, NL).value is True


def test_401_for_a_revoked_key_and_403_for_an_admin_only_path(server: Server) -> None:
    name, key = server.sdk_key()
    client = ofrep(server, key)
    assert client.get_boolean_value("ofrep-bool", False, NL) is True
    # the provider joins the flag key into its URL: dot segments reach POST /api/v1/keys
    traversal = "../../../../api/v1/keys"
    assert urljoin(f"{server.base_url}/ofrep/v1/", f"evaluate/flags/{traversal}") == \
        f"{server.base_url}/api/v1/keys"
    forbidden = client.get_boolean_details(traversal, True, NL)
    assert (forbidden.value, forbidden.error_code, forbidden.error_message) == \
        (True, ErrorCode.GENERAL, "forbidden")
    server.ok("DELETE", f"/api/v1/keys/{name}")
    revoked = client.get_boolean_details("ofrep-bool", False, NL)
    assert (revoked.value, revoked.error_code, revoked.error_message) == \
        (False, ErrorCode.GENERAL, "unauthorized")


def test_an_experiment_flag_is_sticky_like_assign_and_records_one_exposure(
        server: Server, sdk_key: str) -> None:
    client = ofrep(server, sdk_key)
    seen = set()
    for unit in ("exp-unit-1", "exp-unit-2", "exp-unit-3", "exp-unit-4"):
        first = client.get_string_details("ofrep-exp-flag", "none", EvaluationContext(unit))
        assert first.reason == Reason.SPLIT and first.flag_metadata["experiment"] == "ofrep-exp"
        again = client.get_string_details("ofrep-exp-flag", "none", EvaluationContext(unit))
        assigned = server.ok("POST", "/api/v1/experiments/ofrep-exp/assign", {"context": {"key": unit}})
        assert assigned["in_experiment"] and assigned["sticky"]
        assert first.variant == again.variant == assigned["variant"]
        assert first.value == {"blue": "#00f", "green": "#0a0"}[first.variant]
        assert server.query("SELECT variant FROM exposures WHERE experiment_key = 'ofrep-exp' "
                            "AND unit = ?", unit) == [(first.variant,)]
        seen.add(first.variant)
    assert seen <= {"blue", "green"}


def test_the_advertised_event_stream_opens_without_headers(server: Server, sdk_key: str) -> None:
    status, body = _post(server, "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u"}},
                         {"X-API-Key": sdk_key})
    assert status == 200
    (stream,) = body["eventStreams"]
    assert stream["type"] == "sse" and stream["inactivityDelaySec"] == 120
    url = urlsplit(stream["url"])
    assert url.path == "/ofrep/v1/stream" and "token=" in url.query
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:  # as a browser's EventSource: the URL alone
        conn.request("GET", f"{url.path}?{url.query}", headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200
        lines = [response.readline() for _ in range(3)]
        assert lines[0].startswith(b"id: ") and lines[2] == b"\n"
        data = json.loads(lines[1].removeprefix(b"data: "))
        assert data == {"type": "refetchEvaluation", "etag": _snapshot_etag(server, sdk_key)}
    finally:
        conn.close()


def _post(server: Server, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={**headers, "Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, json.loads(data) if data else None


def _snapshot_etag(server: Server, key: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/api/v1/sdk/snapshot", headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        response.read()
        return response.getheader("ETag")
    finally:
        conn.close()


# -- bulk evaluation in process (Flask test client, SQLite and PostgreSQL) ------------------

BULK = "/ofrep/v1/evaluate/flags"


@pytest.fixture
def flags(api: Any) -> None:
    api("post", "/flags", boolean_flag("a-country", rules=[{"id": "nl", "kind": "force", "variant": "on",
        "conditions": [{"attribute": "country", "operator": "in", "values": ["NL"]}]}]), status=201)
    api("post", "/flags", boolean_flag("b-off", enabled=False), status=201)
    api("post", "/flags", {"key": "c-float", "type": "number", "variants": {"x": 1, "y": 2.5},
                           "default_variant": "x"}, status=201)


def _bulk(client: Any, headers: dict[str, str], context: Any, etag: str | None = None) -> Any:
    extra = {"If-None-Match": etag} if etag else {}
    return client.post(BULK, json={"context": context}, headers={**headers, **extra})


def test_bulk_etag_is_per_context_and_answers_304(client: Any, sdk: dict[str, str], flags: None) -> None:
    nl = _bulk(client, sdk, {"targetingKey": "u-1", "country": "NL"})
    assert nl.status_code == 200
    etag = nl.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    body = nl.get_json()
    assert [f["key"] for f in body["flags"]] == ["a-country", "b-off", "c-float"]
    assert body["flags"][0] == {"key": "a-country", "value": True, "reason": "TARGETING_MATCH",
                                "variant": "on", "metadata": {"ruleId": "nl"}}
    assert body["flags"][2]["value"] == 1.0 and b'"value":1.0' in nl.data  # a float flag: floats
    assert body["metadata"] == {"environment": "production"}
    again = _bulk(client, sdk, {"targetingKey": "u-1", "country": "NL"}, etag)
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag
    assert _bulk(client, sdk, {"targetingKey": "u-1", "country": "NL"}, f'W/{etag}, "x"').status_code == 304
    # the same URL with another context: another answer, another ETag
    fr = _bulk(client, sdk, {"targetingKey": "u-1", "country": "FR"}, etag)
    assert fr.status_code == 200 and fr.headers["ETag"] != etag
    assert fr.get_json()["flags"][0]["value"] is False


def test_a_change_invalidates_the_etag_and_an_unrelated_one_does_not(
        client: Any, api: Any, sdk: dict[str, str], flags: None) -> None:
    context = {"targetingKey": "u-1", "country": "NL"}
    etag = _bulk(client, sdk, context).headers["ETag"]
    api("post", "/environments", {"key": "staging", "name": "Staging", "copy_from": "production"},
        status=201)
    api("post", "/flags/a-country/environments/staging/disable")
    assert _bulk(client, sdk, context, etag).status_code == 304  # nothing this answer shows changed
    api("post", "/flags/a-country/disable")
    changed = _bulk(client, sdk, context, etag)
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.get_json()["flags"][0]["reason"] == "DISABLED"


def test_bulk_failures_are_inline_per_flag(client: Any, sdk: dict[str, str], flags: None) -> None:
    response = _bulk(client, sdk, {"targetingKey": ["not", "a", "unit"]})
    assert response.status_code == 200
    items = {f["key"]: f for f in response.get_json()["flags"]}
    assert items["a-country"]["errorCode"] == "INVALID_CONTEXT"
    assert "context key" in items["a-country"]["errorDetails"] and "value" not in items["a-country"]
    assert items["b-off"] == {"key": "b-off", "value": False, "reason": "DISABLED", "variant": "off",
                              "metadata": {}}  # the kill switch wins over a bad context


def test_unreadable_requests_are_ofrep_400s(client: Any, sdk: dict[str, str], flags: None) -> None:
    headers = {**sdk, "Content-Type": "application/json"}
    for path, key in ((BULK, None), (f"{BULK}/a-country", "a-country")):
        broken = client.post(path, data="{not json", headers=headers)
        assert broken.status_code == 400 and broken.get_json()["errorCode"] == "PARSE_ERROR"
        assert broken.get_json().get("key") == key
        assert client.post(path, data="[1]", headers=headers).get_json()["errorCode"] == "PARSE_ERROR"
        context = client.post(path, json={"context": "user-1"}, headers=sdk)
        assert context.status_code == 400 and context.get_json()["errorCode"] == "INVALID_CONTEXT"
        assert client.post(path, headers=sdk).status_code == 200  # no body: an empty context
    missing = client.post(f"{BULK}/nope", json={}, headers=sdk)
    assert missing.status_code == 404
    assert missing.get_json() == {"key": "nope", "errorCode": "FLAG_NOT_FOUND",
                                  "errorDetails": "flag 'nope' not found"}


def test_x_api_key_and_bearer_both_authenticate(client: Any, runtime: Any, flags: None) -> None:
    secret = create_key(runtime, "test", "ofrep-sdk", "sdk")
    assert _bulk(client, {"X-API-Key": secret}, {}).status_code == 200
    assert _bulk(client, {"Authorization": f"Bearer {secret}"}, {}).status_code == 200
    assert _bulk(client, {"X-API-Key": "fsk_sdk_wrong"}, {}).status_code == 401
    assert _bulk(client, {}, {}).status_code == 401
    single = client.post(f"{BULK}/a-country", json={}, headers={"X-API-Key": secret})
    assert single.status_code == 200 and single.get_json()["reason"] == "DEFAULT"


def test_a_staging_key_evaluates_staging(client: Any, api: Any, runtime: Any, sdk: dict[str, str],
                                         flags: None) -> None:
    api("post", "/environments", {"key": "staging", "name": "Staging", "copy_from": "production"},
        status=201)
    api("post", "/flags/a-country/environments/staging/disable")
    staging = {"X-API-Key": create_key(runtime, "test", "stg", "sdk", environment="staging")}
    context = {"targetingKey": "u-1", "country": "NL"}
    answer = _bulk(client, staging, context).get_json()
    assert answer["metadata"] == {"environment": "staging"}
    assert answer["flags"][0]["reason"] == "DISABLED"
    assert _bulk(client, sdk, context).get_json()["flags"][0]["reason"] == "TARGETING_MATCH"
    single = client.post(f"{BULK}/a-country", json={"context": context}, headers=staging).get_json()
    assert single["reason"] == "DISABLED" and single["metadata"]["environment"] == "staging"
    assert client.post(f"{BULK}?environment=production", json={}, headers=staging).status_code == 403
    stream_url = urlsplit(answer["eventStreams"][0]["url"])
    assert "environment=staging" in stream_url.query


def test_stream_tokens_are_bound_to_their_key_and_environment(
        client: Any, runtime: Any, flags: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changes, "HEARTBEAT_SECONDS", 0.05)
    secret = create_key(runtime, "test", "ofrep-stream", "sdk")
    url = urlsplit(_bulk(client, {"X-API-Key": secret}, {}).get_json()["eventStreams"][0]["url"])
    stream = client.get(f"{url.path}?{url.query}", buffered=False)
    assert stream.status_code == 200
    first = next(iter(stream.response)).decode()
    assert '"type": "refetchEvaluation"' in first and "event:" not in first  # OFREP: `message`
    stream.close()
    tampered = url.query.replace("environment=production", "environment=staging")
    assert client.get(f"{url.path}?{tampered}").status_code == 401
    for token in ("bm9wZQ.abc", "%C3%A9.%C3%A9", ".", "AA.x", "bm9wZQ"):  # "nope", non-ASCII, NUL
        assert client.get(f"{url.path}?environment=production&token={token}").status_code == 401
    assert client.get(url.path).status_code == 401  # no token, no key
    with_header = client.get(url.path, headers={"X-API-Key": secret}, buffered=False)
    assert with_header.status_code == 200
    with_header.close()
    revoke_key(runtime, "test", "ofrep-stream")
    assert client.get(f"{url.path}?{url.query}").status_code == 401


def test_ofrep_is_in_the_openapi_document(client: Any) -> None:
    spec = client.get("/api/openapi.json").get_json()
    bulk = spec["paths"]["/ofrep/v1/evaluate/flags"]["post"]
    assert {"200", "304", "400"} <= set(bulk["responses"])
    assert bulk["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    single = spec["paths"]["/ofrep/v1/evaluate/flags/{key}"]["post"]
    assert {"200", "400", "404"} <= set(single["responses"])
    assert "/ofrep/v1/stream" in spec["paths"] and "/api/v1/sdk/stream" in spec["paths"]
    assert spec["components"]["securitySchemes"]["apiKeyAuth"]["name"] == "X-API-Key"
    assert {"OfrepEvaluation", "OfrepFailure", "OfrepBulk"} <= set(spec["components"]["schemas"])
