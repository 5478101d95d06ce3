"""Regression tests for the inputs that gave a 500 (issue 13), on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import json
import re

import pytest

from tests.conftest import boolean_flag

HUGE = 4611686018427387904  # 2^62: overflowed OFFSET (page x per_page) on both backends
LISTS = ["/audit", "/flags", "/experiments", "/metrics", "/flags/f/revisions",
         "/experiments/e/revisions"]


def _spec_operations(client) -> list[tuple[str, str, dict]]:
    spec = client.get("/api/openapi.json").json
    return [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()
            if isinstance(op, dict) and "responses" in op]


def _concrete(path: str) -> str:
    path = re.sub(r"\{\w+_id\}", "1", path).replace("{action}", "start")
    return path.replace("{version}", "1").replace("{key}", "f").replace("{env}", "production") \
        .replace("{name}", "n").replace("{unit}", "u").replace("{metric}", "m")


def test_a_huge_page_is_a_422_on_every_list(api):
    api("post", "/flags", boolean_flag("f"), 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "e", "flag": "g", "layer": "main", "variants": [
        {"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]}, 201)
    for path in LISTS:
        body = api("get", f"{path}?page={HUGE}", status=422)
        assert "page" in json.dumps(body["errors"]), (path, body)
        api("get", f"{path}?page=1000000&per_page=500")  # the largest page allowed: just empty


def test_a_huge_version_in_restore_is_a_404(api):
    api("post", "/flags", boolean_flag("f"), 201)
    for version in (HUGE, 10 ** 30, 2 ** 31):
        api("post", f"/flags/f/revisions/{version}/restore", status=404)
        api("post", f"/experiments/e/revisions/{version}/restore", status=404)
    assert api("post", "/flags/f/revisions/1/restore", headers={"If-Match": str(HUGE)},
               status=409)["code"] == 409


def test_an_id_beyond_the_integer_column_is_a_404_on_every_route(client, admin):
    """`/webhooks/99999999999999999999` overflowed the SQLite driver, and 2^31 PostgreSQL's
    INTEGER: a 500 on every route with an integer id. Every such parameter is documented
    with its bound and answers 404 beyond it."""
    checked = 0
    spec = client.get("/api/openapi.json").json
    for path, method, op in _spec_operations(client):
        ids = [p for p in spec["paths"][path].get("parameters", []) + op.get("parameters", [])
               if p["in"] == "path" and p["schema"]["type"] == "integer"]
        if not ids:
            continue
        assert all(p["schema"].get("maximum", 2 ** 64) <= 2 ** 31 - 1 for p in ids), (path, ids)
        concrete = re.sub(r"\{\w+\}", lambda m: "99999999999999999999" if m.group(0)[1:-1] in
                          {p["name"] for p in ids} else "f", path)
        body = {} if method in ("post", "put", "patch") else None
        response = client.open(concrete, method=method.upper(), json=body, headers=admin)
        assert response.status_code == 404, (method, concrete, response.status_code, response.json)
        checked += 1
    assert checked >= 15
    for beyond in (2 ** 31, 2 ** 63):
        assert client.get(f"/api/v1/webhooks/{beyond}", headers=admin).status_code == 404
    assert client.get(f"/api/v1/webhooks/{2 ** 31 - 1}", headers=admin).json["message"] == \
        f"webhook {2 ** 31 - 1} not found"


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_deep_json_on_every_json_endpoint_is_401_without_a_key_and_400_with_one(client, admin):
    operations = [(p, m) for p, m, op in _spec_operations(client) if "requestBody" in op]
    assert len(operations) > 25
    for path, method in operations:
        url = _concrete(path)
        for levels in (990, 100_000):
            anonymous = client.open(url, method=method.upper(), data=_deep(levels),
                                    content_type="application/json")
            assert anonymous.status_code == 401, (method, url, anonymous.json)
            keyed = client.open(url, method=method.upper(), data=_deep(levels),
                                content_type="application/json", headers=admin)
            assert keyed.status_code in (400, 422), (method, url, keyed.status_code, keyed.json)
            message = keyed.json.get("message") or keyed.json.get("errorDetails") or ""
            assert "nested" in message or "body" in message, (method, url, keyed.json)


def test_body_bounds_are_422_naming_the_field(api):
    nested: object = 1
    for _ in range(70):
        nested = {"a": nested}
    body = api("post", "/flags", {"key": "x", "description": nested}, 422)
    assert "nested deeper than 64" in body["message"]
    body = api("post", "/flags", {"key": "x", "tags": [2 ** 64]}, 422)
    assert body["errors"] == {"json": {"tags.0": ["integers must be between -2^63 and 2^63 - 1"]}}


def test_a_json_variant_nested_500_deep_is_refused(api, runtime):
    value: object = {"leaf": True}
    for _ in range(500):
        value = {"a": value}
    body = api("post", "/flags", {"key": "j", "type": "json", "variants": {"x": value, "y": {}},
                                  "default_variant": "y"}, status=422)
    assert body["code"] == 422
    shallow: object = 1
    for _ in range(40):  # fine for the body (< 64), too deep for a stored value (> 32)
        shallow = [shallow]
    body = api("post", "/flags", {"key": "j", "type": "json", "variants": {"x": shallow, "y": {}},
                                  "default_variant": "y"}, status=422)
    assert "variants.x" in body["errors"]["json"] and "32 levels" in body["message"]
    from flagship.errors import ValidationError
    from flagship.flags.model import flag_from_dict

    with pytest.raises(ValidationError):  # the model refuses it too (the config file path)
        flag_from_dict({"key": "j", "type": "json", "variants": {"x": value, "y": 1},
                        "default_variant": "y"}, runtime.operators)


@pytest.mark.parametrize("digits", [4000, 4301, 5000])
def test_a_number_variant_with_thousands_of_digits_is_a_4xx(client, admin, digits):
    raw = ('{"key": "n", "type": "number", "variants": {"x": ' + "9" * digits +
           ', "y": 1}, "default_variant": "y"}')
    response = client.post("/api/v1/flags", data=raw, content_type="application/json", headers=admin)
    assert response.status_code == (400 if digits > 4300 else 422), response.json
    assert "digits" in response.json["message"] or "2^63" in response.json["message"]
    event = client.post("/api/v1/experiments/events", data='{"unit": "u", "event": "e", "value": '
                        + "9" * digits + "}", content_type="application/json", headers=admin)
    assert event.status_code in (400, 422)


def test_a_chunked_body_over_the_limit_is_a_413(client, admin):
    big = b'{"key": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    for path in ("/api/v1/flags", "/api/v1/evaluate"):
        response = client.post(path, input_stream=io.BytesIO(big), headers={
            **admin, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True})
        assert response.status_code == 413, (path, response.json)
    small = json.dumps(boolean_flag("chunky")).encode()
    response = client.post("/api/v1/flags", input_stream=io.BytesIO(small), headers={
        **admin, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 201, response.json
    batch = json.dumps([{"unit": f"u{i}", "event": "e", "properties": {"pad": "x" * 500}}
                        for i in range(3000)]).encode()  # > 1 MiB: the events' own limit applies
    response = client.post("/api/v1/experiments/events/batch", data=batch,
                           content_type="application/json", headers=admin)
    assert response.status_code == 200 and response.json["accepted"] == 3000


def test_authentication_comes_before_the_body(client, sdk):
    bad = ["{", '{"key": "a\\u0000"}', "9" * 5000, _deep(990)]
    for body in bad:
        for path in ("/api/v1/flags", "/api/v1/evaluate", "/api/v1/experiments/events"):
            response = client.post(path, data=body, content_type="application/json")
            assert response.status_code == 401, (path, body[:20], response.json)
    # an SDK key on an admin call: 403 before the body is looked at
    assert client.post("/api/v1/flags", data="{", content_type="application/json",
                       headers=sdk).status_code == 403


def test_event_properties_are_bounded_item_by_item(api):
    deep: object = 1
    for _ in range(40):
        deep = {"a": deep}
    body = api("post", "/experiments/events/batch", [
        {"unit": "u1", "event": "e"}, {"unit": "u2", "event": "e", "properties": {"p": deep}},
        {"unit": "u3", "event": "e", "properties": {"k": "a\x00"}}])
    assert body["accepted"] == 1 and [r["index"] for r in body["rejected"]] == [1, 2]


def test_405_says_which_methods_are_allowed(client, admin):
    response = client.delete("/api/v1/flags", headers=admin)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert response.json["code"] == 405


def test_html_responses_carry_security_headers_without_overwriting(app, client):
    page = client.get("/api/docs")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "same-origin"

    from flask import Response

    from flagship.api import _security_headers

    with app.test_request_context("/ui/page"):  # a page that set its own policy keeps it
        own = _security_headers(Response("<p>x</p>", mimetype="text/html",
                                         headers={"Content-Security-Policy": "default-src 'none'"}))
    assert own.headers["Content-Security-Policy"] == "default-src 'none'"
    assert own.headers["X-Content-Type-Options"] == "nosniff"
    with app.test_request_context("/x", base_url="https://flagship.example"):
        cookie = Response("<p>x</p>", mimetype="text/html")
        cookie.set_cookie("session", "v", httponly=True, samesite="Lax")
        assert "Secure" in _security_headers(cookie).headers["Set-Cookie"]
    assert "Content-Security-Policy" not in client.get("/healthz").headers  # JSON: none


def test_revoking_the_last_unrestricted_admin_key_is_a_409(client, runtime):
    from flagship.auth import create_key

    first = {"Authorization": f"Bearer {create_key(runtime, 't', 'first', 'admin')}"}
    create_key(runtime, "t", "bound", "admin", environment="production")
    body = client.delete("/api/v1/keys/first", headers=first).json
    assert body["code"] == 409 and "last admin key" in body["message"]
    assert client.get("/api/v1/keys", headers=first).status_code == 200  # still works
    create_key(runtime, "t", "second", "admin")
    assert client.delete("/api/v1/keys/first", headers=first).status_code == 200
    assert client.delete("/api/v1/keys/bound", headers={
        "Authorization": f"Bearer {create_key(runtime, 't', 'third', 'admin')}"}).status_code == 200


def test_every_response_has_a_request_id(client, admin):
    response = client.get("/api/v1/flags", headers={**admin, "X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    generated = client.get("/api/v1/flags", headers={"X-Request-Id": "bad id <script>"})
    assert generated.status_code == 401 and len(generated.headers["X-Request-Id"]) == 32


def test_a_body_that_is_not_declared_json_is_a_400_saying_so(client, admin):
    body = json.dumps(boolean_flag("f"))
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**admin, **({"Content-Type": content_type} if content_type else {})}
        response = client.post("/api/v1/flags", data=body, headers=headers)
        assert response.status_code == 400, (content_type, response.json)
        assert response.json["message"].startswith("the body must be JSON (Content-Type: application/json)")
    assert client.post("/api/v1/flags", data=body, headers={**admin, "Content-Type": "application/json"}
                       ).status_code == 201


def test_an_empty_json_body_names_what_is_missing_and_actions_take_none(client, admin):
    empty = {**admin, "Content-Type": "application/json"}
    response = client.post("/api/v1/flags", data=b"", headers=empty)
    assert response.status_code == 422 and "key" in response.json["errors"]["json"]
    # an action without a body, sent the way curl -H 'Content-Type: application/json' does
    client.post("/api/v1/flags", json=boolean_flag("f"), headers=admin)
    response = client.post("/api/v1/flags/f/enable", data=b"", headers=empty)
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("method, path, body", [
    ("patch", "/flags/nope", {"enabled": True}), ("put", "/flags/nope", boolean_flag("nope")),
    ("put", "/segments/nope", {"key": "nope", "conditions": []}),
    ("patch", "/environments/nope", {"name": "n"}), ("patch", "/layers/nope", {"name": "n"}),
    ("patch", "/experiments/nope", {"name": "n"}), ("put", "/metrics/nope", {"event": "e", "kind": "count"}),
    ("put", "/rollout-templates/nope", {"policy": {"steps": [{"percent": 50, "min_duration": 600, "min_units": 100}]}}),
])
def test_an_unknown_object_is_a_404_before_a_missing_version_is_a_428(api, method, path, body):
    """PATCH /flags/nope without a version asked for the version of a flag that does not
    exist (428); the 428 now comes once the object is known."""
    assert api(method, path, body, 404)["code"] == 404


def test_a_missing_version_is_still_a_428_on_every_versioned_write(api):
    api("post", "/flags", boolean_flag("f"), 201)
    api("post", "/segments", {"key": "s", "conditions": []}, 201)
    api("post", "/layers", {"key": "l"}, 201)
    api("post", "/metrics", {"key": "m", "event": "e", "kind": "count"}, 201)
    api("post", "/experiments", {"key": "e", "flag": "g", "layer": "l", "variants": [
        {"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]}, 201)
    api("post", "/rollout-templates", {"key": "t", "policy": {"steps": [{"percent": 50, "min_duration": 600, "min_units": 100}]}}, 201)
    for method, path, body in [
            ("patch", "/flags/f", {"enabled": False}), ("put", "/flags/f", boolean_flag("f")),
            ("put", "/segments/s", {"key": "s", "conditions": []}),
            ("patch", "/environments/production", {"name": "n"}), ("patch", "/layers/l", {"name": "n"}),
            ("patch", "/experiments/e", {"name": "n"}), ("put", "/metrics/m", {"event": "e", "kind": "count"}),
            ("put", "/rollout-templates/t", {"policy": {"steps": [{"percent": 50, "min_duration": 600, "min_units": 100}]}})]:
        error = api(method, path, body, 428)
        assert error["errors"] == {"version": ["required"]} and "send the version" in error["message"], path
    assert [e["action"] for e in api("get", "/audit?per_page=100")["items"]][0] == "rollout_template.create"
