"""The serving fast path (issue 9): same contract as the Flask views, fresh within 1 s.

- its validators accept exactly the bodies the documented schemas accept, with the same
  result (hypothesis), and whatever they refuse is answered by the Flask views;
- the fast and the Flask answer of each hot endpoint are the same;
- the store revision is re-read at most every `revision_check` s in a serving process,
  at once after a local change, and two real server processes agree within 1 s;
- a unit's remembered sticky records spare the store read and never hide a record made
  by another process.
"""
from __future__ import annotations

import io
import json
import logging
import threading
import time
from typing import Any

import marshmallow as ma
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flagship.experiments.schemas import AssignSchema
from flagship.flags.schemas import EvaluateSchema
from flagship.serving import fastpath
from tests.conftest import boolean_flag, make_app
from tests.sdk_server import Server, wait_for

# -- validators against the documented schemas ---------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
flag_lists = st.one_of(st.lists(st.text(max_size=4), max_size=4),
                       st.lists(json_scalars, max_size=3), json_values)
evaluate_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"context": json_values}),
    st.fixed_dictionaries({"context": st.dictionaries(st.text(max_size=5), json_values, max_size=3)},
                          optional={"flags": flag_lists}),
    st.fixed_dictionaries({"context": st.dictionaries(st.text(max_size=5), json_values, max_size=3)},
                          optional={"flags": flag_lists, "extra": json_values}),
    st.fixed_dictionaries({}, optional={"flags": flag_lists, "context": json_values}),
)
assign_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"context": json_values}, optional={"extra": json_values}),
    st.fixed_dictionaries({"context": st.dictionaries(st.text(max_size=5), json_values, max_size=3)}),
)


def _load(schema: ma.Schema, body: Any) -> Any:
    try:
        return schema.load(body)
    except ma.ValidationError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evaluate_bodies)
def test_evaluate_validator_accepts_what_the_schema_accepts(body):
    loaded = _load(EvaluateSchema(), body)
    parsed = fastpath.evaluate_body(body)
    assert (parsed is None) == (loaded is None), (body, loaded, parsed)
    if parsed is not None:
        assert parsed == (loaded["context"], loaded.get("flags"))


def test_evaluate_validator_bounds_the_flag_list():
    assert fastpath.evaluate_body({"context": {}, "flags": ["f"] * 1000}) is not None
    assert fastpath.evaluate_body({"context": {}, "flags": ["f"] * 1001}) is None
    assert _load(EvaluateSchema(), {"context": {}, "flags": ["f"] * 1001}) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(assign_bodies)
def test_assign_validator_accepts_what_the_schema_accepts(body):
    loaded = _load(AssignSchema(), body)
    parsed = fastpath.assign_body(body)
    assert (parsed is None) == (loaded is None), (body, loaded, parsed)
    if parsed is not None:
        assert parsed == loaded["context"]


# -- the fast answer is the Flask answer --------------------------------------------------------------

def _environ(path: str, body: Any, headers: dict[str, str], method: str = "POST",
             query: str = "", content_type: str = "application/json") -> dict[str, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(data)) if data else "",
               "wsgi.input": io.BytesIO(data), "SERVER_NAME": "localhost", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
               "REMOTE_ADDR": "127.0.0.1"}
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _call(wsgi: Any, environ: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

    body = b"".join(wsgi(environ, start_response))
    return answer["status"], answer["headers"], body


@pytest.fixture
def paths(app, api):
    """(fast path, Flask app behind it) over a store with flags and a running experiment."""
    api("post", "/segments", {"key": "staff", "conditions": [
        {"attribute": "email", "operator": "ends_with", "values": ["@corp.example"]}]}, 201)
    api("post", "/flags", boolean_flag("plain", rules=[
        {"kind": "force", "variant": "on", "conditions": [{"segment": "staff"}]},
        {"kind": "rollout", "variant": "on", "percentage": 50}]), 201)
    api("post", "/flags", {"key": "price", "type": "number", "variants": {"low": 1, "high": 2.5},
                           "default_variant": "low"}, 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "exp", "flag": "colour", "layer": "main",
                                 "traffic_percentage": 100, "variants": [
                                     {"variant": "a", "value": "A", "is_control": True},
                                     {"variant": "b", "value": {"shade": "B"}}]}, 201)
    api("post", "/experiments/exp/start")
    fast = app.extensions["flagship.fastpath"]
    assert app.wsgi_app is fast
    flask_app = fast.next

    def behind(environ: dict[str, Any], start_response: Any) -> Any:
        environ["test.declined"] = True
        return flask_app(environ, start_response)

    fast.next = behind
    return fast, flask_app


def _answered_fast(fast: Any, environ: dict[str, Any]) -> tuple[bool, tuple[int, dict[str, str], bytes]]:
    """Send `environ` through the fast path: (whether it answered itself, the answer)."""
    answer = _call(fast, environ)
    return "test.declined" not in environ, answer


@pytest.mark.parametrize("body", [
    {"context": {"key": "user-1", "email": "a@corp.example"}},
    {"context": {"key": "user-2"}, "flags": ["plain", "price"]},
    {"context": {}, "flags": ["plain", "missing-flag"]},
    {"context": {"key": 42, "country": ["NL"]}, "flags": []},
])
def test_evaluate_answers_as_the_flask_view(paths, sdk, body):
    fast, slow = paths
    fast_answer, (status, headers, data) = _answered_fast(fast, _environ("/api/v1/evaluate", body, sdk))
    assert fast_answer
    expected_status, expected_headers, expected = _call(slow, _environ("/api/v1/evaluate", body, sdk))
    assert status == expected_status == 200
    assert json.loads(data) == json.loads(expected)
    assert headers["Content-Type"] == expected_headers["Content-Type"] == "application/json"
    assert headers["X-Request-Id"] and int(headers["Content-Length"]) == len(data)


def test_assign_answers_as_the_flask_view(paths, sdk):
    fast, slow = paths
    first = json.loads(_call(fast, _environ("/api/v1/experiments/exp/assign", {"context": {"key": "u1"}}, sdk))[2])
    other = json.loads(_call(slow, _environ("/api/v1/experiments/exp/assign", {"context": {"key": "u2"}}, sdk))[2])
    assert first.keys() == other.keys() and first["in_experiment"] and not first["sticky"]
    for unit, known in (("u1", first), ("u2", other)):  # returning units, either way round
        a = json.loads(_call(fast, _environ("/api/v1/experiments/exp/assign", {"context": {"key": unit}}, sdk))[2])
        b = json.loads(_call(slow, _environ("/api/v1/experiments/exp/assign", {"context": {"key": unit}}, sdk))[2])
        assert a == b == {**known, "sticky": True}


def test_event_answers_as_the_flask_view_and_is_stored_once(paths, sdk, api):
    fast, slow = paths
    event = {"event_id": "e-1", "unit": "u1", "event": "purchase", "value": 3.5}
    fast_answer, (status, _, data) = _answered_fast(fast, _environ("/api/v1/experiments/events", event, sdk))
    assert fast_answer
    assert (status, json.loads(data)) == (202, {"accepted": 1, "duplicates": 0, "rejected": []})
    again = _call(slow, _environ("/api/v1/experiments/events", event, sdk))
    repeat = _call(fast, _environ("/api/v1/experiments/events", event, sdk))
    assert again[0] == repeat[0] == 202 and json.loads(again[2]) == json.loads(repeat[2])
    assert json.loads(repeat[2])["duplicates"] == 1
    assert repeat[2] == again[2]  # byte for byte: the fast path writes its answer itself
    assert api("get", "/events/quality")["counters"]["accepted"] == 1


def test_snapshot_answers_as_the_flask_view(paths, sdk):
    fast, slow = paths
    status, headers, data = _call(fast, _environ("/api/v1/sdk/snapshot", None, sdk, method="GET"))
    expected_status, expected_headers, expected = _call(slow, _environ("/api/v1/sdk/snapshot", None, sdk, method="GET"))
    assert status == expected_status == 200 and data == expected
    for name in ("ETag", "Cache-Control", "Vary", "X-Flagship-Revision", "X-Flagship-Environment"):
        assert headers[name] == expected_headers[name]
    conditional = {**sdk, "If-None-Match": f'W/"x", {headers["ETag"]}'}
    status, headers, data = _call(fast, _environ("/api/v1/sdk/snapshot", None, conditional, method="GET"))
    assert (status, data) == (304, b"") and headers["ETag"] == expected_headers["ETag"]


@pytest.mark.parametrize("case", [
    "no key", "revoked key", "bad json", "schema", "unknown field", "too deep", "unknown experiment",
    "unknown environment", "other query", "text body", "chunked", "bad event", "bound elsewhere",
])
def test_what_the_fast_path_declines_the_flask_views_answer(paths, sdk, runtime, api, case):
    from flagship.auth import create_key, revoke_key

    fast, _ = paths
    path, body, headers, query = "/api/v1/evaluate", {"context": {"key": "u"}}, dict(sdk), ""
    content_type, expected = "application/json", 200
    if case == "no key":
        headers, expected = {}, 401
    elif case == "revoked key":
        create_key(runtime, "t", "gone", "sdk", secret="fsk_sdk_gone_000000000000000000000000")
        revoke_key(runtime, "t", "gone")
        headers, expected = {"Authorization": "Bearer fsk_sdk_gone_000000000000000000000000"}, 401
    elif case == "bad json":
        body, expected = "{not json", 400
    elif case == "schema":
        body, expected = {"context": "text"}, 422
    elif case == "unknown field":
        body, expected = {"context": {}, "flag": ["x"]}, 422
    elif case == "too deep":
        deep: Any = 1
        for _ in range(200):
            deep = [deep]
        body, expected = {"context": {"key": "u", "x": deep}}, 422
    elif case == "unknown experiment":
        path, expected = "/api/v1/experiments/nope/assign", 404
    elif case == "unknown environment":
        headers = {"Authorization": f"Bearer {create_key(runtime, 't', 'any-env', 'admin')}"}
        query, expected = "environment=nowhere", 404
    elif case == "other query":
        query, expected = "pretty=1", 200
    elif case == "text body":
        content_type, expected = "text/plain", 400  # the body must be JSON, it says
    elif case == "chunked":
        expected = 200
    elif case == "bad event":
        path, body, expected = "/api/v1/experiments/events", {"unit": "u", "event": ""}, 422
    elif case == "bound elsewhere":
        api("post", "/environments", {"key": "staging", "name": "Staging"}, 201)
        secret = create_key(runtime, "t", "staging-sdk", "sdk", environment="staging")
        headers, query, expected = {"Authorization": f"Bearer {secret}"}, "environment=production", 403
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    environ = _environ(path, None, headers, query=query, content_type=content_type)
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))
    if case == "chunked":
        environ["CONTENT_LENGTH"], environ["HTTP_TRANSFER_ENCODING"] = "", "chunked"
        environ["wsgi.input_terminated"] = True
    fast_answer, (status, _, data) = _answered_fast(fast, environ)
    assert not fast_answer, case
    assert status == expected, (case, data)
    if status >= 400:
        error = json.loads(data)
        assert error["code"] == status and error["message"]


def test_fast_requests_are_counted_and_logged(paths, sdk, caplog):
    fast, _ = paths
    caplog.set_level(logging.INFO, logger="flagship.request")
    environ = _environ("/api/v1/evaluate", {"context": {"key": "u"}}, {**sdk, "X-Request-Id": "req-123"})
    status, headers, _ = _call(fast, environ)
    assert status == 200 and headers["X-Request-Id"] == "req-123"
    lines = [r.fields for r in caplog.records if r.name == "flagship.request"]
    assert lines[-1]["route"] == "/api/v1/evaluate" and lines[-1]["request_id"] == "req-123"
    assert lines[-1]["actor"] == "key:test-sdk" and lines[-1]["status"] == 200
    from flagship import telemetry

    counted = telemetry.REQUESTS.labels("/api/v1/experiments/<key>/assign", "POST", "200")
    before = counted._value.get()
    _call(fast, _environ("/api/v1/experiments/exp/assign", {"context": {"key": "u"}}, sdk))
    assert counted._value.get() == before + 1


def test_tracing_turns_the_fast_path_off(app):
    from flagship.observability import init_tracing

    class Exporter:
        def export(self, spans: Any) -> Any:
            return None

        def shutdown(self) -> None:
            pass

    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    try:
        assert init_tracing(app, app.extensions["flagship"], exporter=Exporter()) is True
        assert app.extensions["flagship.fastpath"].enabled is False
    finally:
        SQLAlchemyInstrumentor().uninstrument()  # instrumentation is process-wide


# -- freshness ----------------------------------------------------------------------------------------

def test_a_serving_process_rereads_the_revision_only_when_due(database_url, monkeypatch):
    from flagship import db as db_module
    from flagship.flags import service as flags
    from flagship.runtime import make_runtime

    clock = [1000.0]
    monkeypatch.setattr(db_module.time, "monotonic", lambda: clock[0])
    settings = {"DATABASE_URL": database_url, "ENTRY_POINTS": False, "PLUGINS": ""}
    serving, other = make_runtime(settings, server=True), make_runtime(settings, server=True)
    try:
        reads = []
        real = serving.db.read_snapshot_revision
        monkeypatch.setattr(serving.db, "read_snapshot_revision", lambda: reads.append(1) or real())
        start = serving.db.snapshot_revision()
        for _ in range(100):
            assert serving.db.snapshot_revision() == start
        assert len(reads) == 1, "one read, then the remembered revision"
        flags.create_flag(serving, "t", boolean_flag("mine"), "production")
        assert serving.db.snapshot_revision() == start + 1, "this process's change: at once"
        flags.create_flag(other, "t", boolean_flag("theirs"), "production")
        assert serving.db.snapshot_revision() == start + 1, "another process's: not yet"
        assert serving.db.snapshot_revision(at_least=start + 2) == start + 2, \
            "...unless the caller saw it committed"
        assert len(reads) == 3  # the first, after its own change, and this one
        flags.create_flag(other, "t", boolean_flag("third"), "production")
        clock[0] += serving.db.revision_check
        assert serving.db.snapshot_revision() == start + 3, "...but after revision_check"
        assert "third" in serving.snapshots.get("production").snapshot.flags
    finally:
        serving.close()
        other.close()


def test_a_rolled_back_change_does_not_force_a_reread(runtime):
    db = runtime.db
    from flagship.db import REVISION_FLAG, bump_snapshot_revision

    commits = db._commits
    with pytest.raises(RuntimeError):
        with db.write() as session:
            bump_snapshot_revision(session)
            assert session.info[REVISION_FLAG]
            raise RuntimeError("rolled back")
    assert db._commits == commits


@pytest.mark.xdist_group("serve")
def test_two_server_processes_agree_within_a_second(tmp_path):
    first = Server(tmp_path)
    first.start()
    second = Server(tmp_path)
    second.db = first.db
    try:
        second.start()
        first.ok("POST", "/api/v1/flags", boolean_flag("kill", default_variant="on"))
        body = {"context": {"key": "u"}, "flags": ["kill"]}
        assert wait_for(lambda: second.call("POST", "/api/v1/evaluate", body)[0] == 200, 5)
        assert second.ok("POST", "/api/v1/evaluate", body)["flags"]["kill"]["value"] is True
        # the kill switch, flipped through one process, reaches the other within 1 s
        first.ok("POST", "/api/v1/flags/kill/disable")
        assert first.ok("POST", "/api/v1/evaluate", body)["flags"]["kill"]["reason"] == "DISABLED"
        flipped = time.monotonic()
        assert wait_for(lambda: second.ok("POST", "/api/v1/evaluate", body)["flags"]["kill"]
                        ["reason"] == "DISABLED", 1.0, interval=0.02)
        assert time.monotonic() - flipped <= 1.0
        # an SDK key revoked in one process stops working in the other within 1 s
        name, secret = first.sdk_key()
        assert wait_for(lambda: second.call("POST", "/api/v1/evaluate", body, key=secret)[0] == 200, 2)
        first.ok("DELETE", f"/api/v1/keys/{name}")
        revoked = time.monotonic()
        assert wait_for(lambda: second.call("POST", "/api/v1/evaluate", body, key=secret)[0] == 401,
                        1.5, interval=0.02)
        assert time.monotonic() - revoked <= 1.5
    finally:
        second.kill()
        first.kill()


# -- sticky records remembered ------------------------------------------------------------------------

def test_a_returning_unit_is_served_from_memory(paths, runtime, sdk, client, monkeypatch):
    first = client.post("/api/v1/experiments/exp/assign", json={"context": {"key": "r1"}}, headers=sdk).json
    monkeypatch.setattr(runtime.assignments, "for_unit",
                        lambda unit: pytest.fail("the store was read for a remembered unit"))
    again = client.post("/api/v1/experiments/exp/assign", json={"context": {"key": "r1"}}, headers=sdk).json
    assert again == {**first, "sticky": True}
    flags = client.post("/api/v1/evaluate", json={"context": {"key": "r1"}}, headers=sdk).json["flags"]
    assert flags["colour"]["variant"] == first["variant"]


def test_remembered_records_never_hide_another_processes(database_url, api, runtime, sdk, client):
    """Process A remembers u in experiment one; process B puts u in experiment two; A asked
    about experiment two reads the store and serves B's variant, as sticky."""
    api("post", "/layers", {"key": "l1"}, 201)
    api("post", "/layers", {"key": "l2"}, 201)
    for key, flag, layer in (("one", "f1", "l1"), ("two", "f2", "l2")):
        api("post", "/experiments", {"key": key, "flag": flag, "layer": layer, "traffic_percentage": 100,
                                     "variants": [{"variant": "a", "value": "A", "is_control": True},
                                                  {"variant": "b", "value": "B"}]}, 201)
        api("post", f"/experiments/{key}/start")
    assert client.post("/api/v1/experiments/one/assign", json={"context": {"key": "u"}}, headers=sdk).json["in_experiment"]
    other = make_app(database_url)
    try:
        theirs = other.test_client().post("/api/v1/experiments/two/assign", json={"context": {"key": "u"}},
                                          headers=sdk).json
        ours = client.post("/api/v1/experiments/two/assign", json={"context": {"key": "u"}}, headers=sdk).json
        assert ours == {**theirs, "sticky": True}
    finally:
        other.extensions["flagship"].db.dispose()


def test_concurrent_first_assignments_agree(paths, sdk, client):
    answers: list[str] = []

    def assign() -> None:
        answers.append(client.post("/api/v1/experiments/exp/assign", json={"context": {"key": "race"}},
                                   headers=sdk).json["variant"])

    threads = [threading.Thread(target=assign) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(answers)) == 1 and len(answers) == 8
