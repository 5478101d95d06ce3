"""No input produces a 500: random JSON bodies against the write endpoints."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import boolean_flag

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
condition = st.fixed_dictionaries({"attribute": st.text(max_size=6), "operator": st.sampled_from(
    ["eq", "in", "matches", "gt", "semver_gt", "before", "exists", "contains", "nope"]),
    "values": st.lists(scalars, max_size=3)}, optional={"negate": json_values})
rule = st.fixed_dictionaries({"kind": st.sampled_from(["force", "rollout", "experiment", "x"])},
                             optional={"variant": json_values, "percentage": json_values,
                                       "conditions": st.lists(condition | json_values, max_size=3),
                                       "id": json_values})
flag_like = st.fixed_dictionaries({}, optional={
    "key": st.text(max_size=10) | json_values, "type": st.sampled_from(["boolean", "string", "number", "json"]) | json_values,
    "variants": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
    "default_variant": st.text(max_size=5) | json_values, "rules": st.lists(rule, max_size=3) | json_values,
    "allowlist": json_values, "blocklist": json_values, "tags": json_values, "enabled": json_values,
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=flag_like | json_values)
def test_flag_writes_never_500(client, admin, body):
    for method, path in [("post", "/api/v1/flags"), ("put", "/api/v1/flags/fuzzed"),
                         ("post", "/api/v1/evaluate"), ("post", "/api/v1/segments")]:
        response = getattr(client, method)(path, data=json.dumps(body),
                                           headers={**admin, "Content-Type": "application/json",
                                                    "If-Match": "1"})
        assert response.status_code < 500, (path, body, response.json)
        assert response.json is None or "code" in response.json or response.status_code < 300


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=json_values)
def test_evaluate_never_500_on_any_context(client, admin, context):
    client.post("/api/v1/flags", json=boolean_flag("f", rules=[
        {"kind": "rollout", "variant": "on", "percentage": 50,
         "conditions": [{"attribute": "n", "operator": "gt", "values": [3]}]}]), headers=admin)
    response = client.post("/api/v1/evaluate", json={"context": context}, headers=admin)
    assert response.status_code in (200, 422)


WRITE_PATHS = [("post", "/api/v1/flags/fuzzed/enable"), ("post", "/api/v1/flags/fuzzed/disable"),
               ("post", "/api/v1/flags/fuzzed/revisions/1/restore"), ("post", "/api/v1/layers"),
               ("patch", "/api/v1/layers/main"), ("post", "/api/v1/experiments"),
               ("patch", "/api/v1/experiments/exp"), ("post", "/api/v1/experiments/exp/stop"),
               ("post", "/api/v1/experiments/exp/release"), ("post", "/api/v1/experiments/exp/assign"),
               ("post", "/api/v1/experiments/events"), ("post", "/api/v1/experiments/events/batch"),
               ("post", "/api/v1/metrics"), ("put", "/api/v1/metrics/m"), ("post", "/api/v1/explain"),
               ("post", "/api/v1/stats/sample-size"), ("post", "/api/v1/stats/power"),
               ("post", "/api/v1/keys")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | st.dictionaries(st.sampled_from(
    ["key", "flag", "layer", "variants", "version", "variant", "percentage", "outcome", "context",
     "unit", "event", "value", "timestamp", "kind", "baseline", "mde", "metric_type", "name", "scope",
     "traffic_percentage", "events"]), json_values, max_size=6))
def test_no_write_endpoint_answers_500(client, admin, body):
    client.post("/api/v1/flags", json=boolean_flag("fuzzed"), headers=admin)
    client.post("/api/v1/layers", json={"key": "main"}, headers=admin)
    client.post("/api/v1/experiments", json={"key": "exp", "flag": "f", "layer": "main", "variants": [
        {"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]}, headers=admin)
    for method, path in WRITE_PATHS:
        response = getattr(client, method)(path, data=json.dumps(body),
                                           headers={**admin, "Content-Type": "application/json"})
        assert response.status_code < 500, (path, body, response.get_json(silent=True))


def test_review_findings_are_4xx_not_500(client, admin):
    """Inputs a review found to crash the server (overflows, NUL characters, huge weights)."""
    huge = int("9" * 401)
    cases = [
        ("/api/v1/experiments/events", {"unit": huge, "event": "x"}, 422),  # 401 digits > 256
        ("/api/v1/experiments/events", {"unit": "u", "event": "x", "value": huge}, 422),
        ("/api/v1/experiments/events", {"unit": "u", "event": "x", "timestamp": "0001-01-01T00:00:00+14:00"}, 422),
        ("/api/v1/experiments/events", {"unit": "a\x00b", "event": "x"}, 422),
        ("/api/v1/layers", {"key": "l1", "name": "x\x00"}, 422),
        ("/api/v1/keys", {"name": "k\x00", "scope": "sdk"}, 422),
    ]
    for path, body, status in cases:
        response = client.post(path, json=body, headers=admin)
        assert response.status_code == status, (path, body, response.get_json(silent=True))
    batch = client.post("/api/v1/experiments/events/batch", json=[
        {"unit": "ok", "event": "x"}, {"unit": "u", "event": "x", "value": huge},
        {"unit": "a\x00", "event": "x"}], headers=admin).json
    assert batch["accepted"] == 1 and [r["index"] for r in batch["rejected"]] == [1, 2]
    client.post("/api/v1/layers", json={"key": "main"}, headers=admin)
    bad_window = client.post("/api/v1/experiments", json={
        "key": "e", "flag": "f", "layer": "main", "start_at": "0001-01-01T00:00:00+01:00",
        "variants": [{"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]},
        headers=admin)
    assert bad_window.status_code == 422 and "start_at" in str(bad_window.json["errors"])
    heavy = client.post("/api/v1/experiments", json={
        "key": "w", "flag": "g", "layer": "main",
        "variants": [{"variant": "a", "value": 1, "is_control": True, "weight": 1e308},
                     {"variant": "b", "value": 2, "weight": 1e308}]}, headers=admin)
    assert heavy.status_code == 422 and "weight" in str(heavy.json["errors"])
    ratio = client.post("/api/v1/metrics", json={"key": "r", "event": "a", "kind": "ratio",
                                                  "denominator_event": "b", "winsorize_percentile": 99},
                        headers=admin)
    assert ratio.status_code == 422 and "winsorize_percentile" in str(ratio.json["errors"])


# -- issue 13: deep nesting, huge numbers, huge pages, bodies without a key -------------------

BODY_PATHS = [("post", "/api/v1/flags"), ("put", "/api/v1/flags/fuzzed"), ("post", "/api/v1/evaluate"),
              ("post", "/api/v1/segments"), ("post", "/api/v1/experiments/events"),
              ("post", "/api/v1/experiments/events/batch"), ("post", "/api/v1/explain"),
              ("patch", "/api/v1/layers/main"), ("post", "/api/v1/config/apply"),
              ("post", "/api/v1/keys"), ("post", "/api/v1/stats/power")]
huge_ints = st.integers(min_value=2 ** 62, max_value=10 ** 400) | st.integers(max_value=-(2 ** 62),
                                                                                min_value=-(10 ** 400))


def _nest(leaf, depth: int, as_dict: bool):
    value = leaf
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(min_value=0, max_value=1100), as_dict=st.booleans(),
       leaf=scalars | huge_ints, where=st.sampled_from(["variants", "context", "properties", "config", "top"]),
       keyed=st.booleans())
def test_deep_or_huge_bodies_never_500_and_need_a_key_first(client, admin, depth, as_dict, leaf,
                                                            where, keyed):
    value = _nest(leaf, depth, as_dict)
    body = value if where == "top" else {
        "key": "fuzzed", "type": "json", "variants": {"x": value, "y": 1}, "default_variant": "y",
        "unit": "u", "event": "e", "context": value, "properties": {"p": value},
        "config": {"flags": {"x": {"type": "json", "variants": {"v": value}}}}, "version": 1}
    try:
        raw = json.dumps(body)
    except (RecursionError, ValueError):
        return  # not representable by the test's own encoder
    for method, path in BODY_PATHS:
        headers = {"Content-Type": "application/json", **(admin if keyed else {})}
        response = getattr(client, method)(path, data=raw, headers=headers)
        assert response.status_code < 500, (path, depth, response.get_json(silent=True))
        if not keyed:
            assert response.status_code == 401, (path, response.status_code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(page=st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.text(max_size=5),
       per_page=st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
       path=st.sampled_from(["/audit", "/flags", "/experiments", "/metrics", "/flags/f/revisions",
                             "/experiments/e/revisions"]))
def test_any_page_of_any_list_is_never_a_500(client, admin, page, per_page, path):
    response = client.get(f"/api/v1{path}", query_string={"page": page, "per_page": per_page},
                          headers=admin)
    assert response.status_code in (200, 404, 422), (path, page, per_page, response.get_json())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.integers(min_value=-(2 ** 70), max_value=10 ** 40), if_match=st.integers(
    min_value=-(2 ** 70), max_value=10 ** 40) | st.none(), digits=st.integers(min_value=1, max_value=6000))
def test_versions_and_long_numbers_are_never_a_500(client, admin, version, if_match, digits):
    client.post("/api/v1/flags", json=boolean_flag("f"), headers=admin)
    headers = {**admin, **({"If-Match": str(if_match)} if if_match is not None else {})}
    for path in (f"/api/v1/flags/f/revisions/{version}/restore",
                 f"/api/v1/experiments/e/revisions/{version}/restore"):
        assert client.post(path, headers=headers).status_code in (200, 404, 409, 422)
    raw = '{"key": "n", "type": "number", "variants": {"x": ' + "7" * digits + ', "y": 1}, ' \
          '"default_variant": "y"}'
    response = client.post("/api/v1/flags", data=raw, content_type="application/json", headers=admin)
    assert response.status_code in (201, 400, 409, 422), response.get_json()
