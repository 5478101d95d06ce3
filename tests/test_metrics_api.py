"""Metric definitions through the API: CRUD, validation, versions, use by experiments, audit."""
from __future__ import annotations

import pytest

V = "/api/v1"


def metric(key="revenue", event="purchase", kind="sum", **extra):
    return {"key": key, "event": event, "kind": kind, **extra}


def test_create_get_list_replace_delete_with_audit(client, admin, api):
    response = client.post(f"{V}/metrics", json=metric(winsorize_percentile=99, description="net"),
                           headers=admin)
    assert response.status_code == 201 and response.headers["ETag"] == '"1"'
    created = response.json
    assert {k: created[k] for k in ("key", "name", "event", "kind", "denominator_event", "direction",
                                    "winsorize_percentile", "description", "version", "created_by")} == {
        "key": "revenue", "name": "revenue", "event": "purchase", "kind": "sum",
        "denominator_event": None, "direction": "increase", "winsorize_percentile": 99.0,
        "description": "net", "version": 1, "created_by": "key:test-admin"}
    assert created["created_at"].endswith("+00:00")
    api("post", "/metrics", metric("aov", "purchase", "ratio", denominator_event="checkout",
                                   direction="increase"), 201)
    api("post", "/metrics", metric("errors", "error", "count", direction="decrease"), 201)
    assert api("get", "/metrics/aov")["denominator_event"] == "checkout"
    listed = api("get", "/metrics")
    assert [m["key"] for m in listed["items"]] == ["aov", "errors", "revenue"] and listed["total"] == 3
    page = api("get", "/metrics?page=2&per_page=2")
    assert [m["key"] for m in page["items"]] == ["revenue"] and page["total"] == 3

    # PUT replaces: fields left out go back to their defaults
    replaced = api("put", "/metrics/revenue", {"event": "purchase", "kind": "mean", "name": "Revenue"},
                   headers={"If-Match": '"1"'})
    assert (replaced["kind"], replaced["name"], replaced["version"]) == ("mean", "Revenue", 2)
    assert replaced["description"] == "" and replaced["winsorize_percentile"] is None
    assert replaced["updated_at"] >= replaced["created_at"]
    again = api("put", "/metrics/revenue", metric(kind="mean", version=2, direction="decrease"))
    assert again["version"] == 3 and again["direction"] == "decrease"
    assert api("get", "/metrics/revenue") == again

    api("delete", "/metrics/revenue", status=204)
    api("get", "/metrics/revenue", status=404)
    log = api("get", "/audit?target_type=metric&target=revenue")["items"]
    assert [e["action"] for e in log] == ["metric.delete", "metric.update", "metric.update",
                                          "metric.create"]
    assert log[3]["before"] is None and log[3]["after"]["winsorize_percentile"] == 99.0
    assert (log[2]["before"]["kind"], log[2]["after"]["kind"]) == ("sum", "mean")
    assert log[0]["before"]["direction"] == "decrease" and log[0]["after"] is None
    assert all(e["actor"] == "key:test-admin" for e in log)


def test_auth_malformed_json_and_not_found(client, admin, sdk, api):
    api("post", "/metrics", metric(), 201)
    calls = [("get", "/metrics"), ("post", "/metrics"), ("get", "/metrics/revenue"),
             ("put", "/metrics/revenue"), ("delete", "/metrics/revenue")]
    for method, path in calls:
        assert getattr(client, method)(V + path, json=metric()).status_code == 401, (method, path)
        denied = getattr(client, method)(V + path, json=metric(), headers=sdk)
        assert denied.status_code == 403 and "admin" in denied.json["message"], (method, path)
    for method, path in (("post", "/metrics"), ("put", "/metrics/revenue")):
        response = getattr(client, method)(V + path, data="{not json", headers={
            **admin, "Content-Type": "application/json", "If-Match": '"1"'})
        assert response.status_code == 400 and "JSON" in response.json["message"], (method, path)
    for method, path in (("get", "/metrics/nope"), ("delete", "/metrics/nope")):
        assert "'nope' not found" in api(method, path, status=404)["message"]
    api("put", "/metrics/nope", metric("nope", version=1), 404)
    assert api("get", "/metrics/revenue")["version"] == 1  # nothing above changed it


BAD = [
    ({"event": "purchase", "kind": "sum"}, "key"),
    (metric(key="-revenue"), "key"),
    (metric(key="r" * 129), "key"),
    ({"key": "m", "kind": "sum"}, "event"),
    (metric(event=""), "event"),
    (metric(event="e" * 129), "event"),
    (metric(event="$exposure"), "event"),
    (metric(event=7), "event"),
    ({"key": "m", "event": "purchase"}, "kind"),
    (metric(kind="median"), "kind"),
    (metric(kind="ratio"), "denominator_event"),
    (metric(kind="ratio", denominator_event=None), "denominator_event"),
    (metric(kind="ratio", denominator_event="$exposure"), "denominator_event"),
    (metric(kind="ratio", denominator_event="purchase"), "denominator_event"),
    (metric(kind="ratio", denominator_event=""), "denominator_event"),
    (metric(kind="sum", denominator_event="checkout"), "denominator_event"),
    (metric(direction="up"), "direction"),
    (metric(winsorize_percentile=50), "winsorize_percentile"),
    (metric(winsorize_percentile=100), "winsorize_percentile"),
    (metric(winsorize_percentile=True), "winsorize_percentile"),
    (metric(winsorize_percentile="high"), "winsorize_percentile"),
    (metric(kind="conversion", winsorize_percentile=99), "winsorize_percentile"),
    (metric(kind="ratio", denominator_event="checkout", winsorize_percentile=99), "winsorize_percentile"),
    (metric(name="n" * 257), "name"),
    (metric(description=5), "description"),
    (metric(colour="red"), "colour"),
    (metric(version="one"), "version"),
]


def test_each_bad_field_is_a_422_naming_it(api):
    for doc, field in BAD:
        body = api("post", "/metrics", doc, 422)
        assert field in body["errors"]["json"] and field in body["message"], (doc, body)
    assert api("get", "/metrics")["total"] == 0
    api("post", "/metrics", metric(kind="mean", winsorize_percentile=99.5), 201)
    for doc, field in BAD:
        if "key" in doc:  # a PUT may leave the key out
            body = api("put", "/metrics/revenue", {"version": 1, **doc}, 422)
            assert field in body["errors"]["json"], (doc, body)
    assert "key" in api("put", "/metrics/revenue", metric("other", version=1), 422)["errors"]["json"]
    body = api("put", "/metrics/revenue", metric(), 422, headers={"If-Match": "latest"})
    assert "If-Match" in body["errors"]["json"]
    assert api("get", "/metrics/revenue")["version"] == 1


def test_duplicates_stale_versions_and_missing_version(api):
    api("post", "/metrics", metric(), 201)
    assert api("post", "/metrics", metric(kind="count"), 409)["errors"] == {"key": ["already exists"]}
    body = api("put", "/metrics/revenue", metric(), 428)
    assert body["errors"] == {"version": ["required"]}
    api("put", "/metrics/revenue", metric(name="Revenue"), headers={"If-Match": 'W/"1"'})
    stale = api("put", "/metrics/revenue", metric(name="Late"), 409, headers={"If-Match": '"1"'})
    assert stale["errors"] == {"version": ["current version is 2"]}
    api("put", "/metrics/revenue", metric(name="Late", version=1), 409)
    assert api("get", "/metrics/revenue")["name"] == "Revenue"


def experiment(key, success=(), guardrails=()):
    return {"key": key, "flag": f"flag-{key}", "layer": "main", "traffic_percentage": 10,
            "variants": [{"variant": "off", "is_control": True, "value": False},
                         {"variant": "on", "value": True}],
            "success_metrics": list(success),
            "guardrail_metrics": [{"metric": m, "margin": 0.02} for m in guardrails]}


def test_metrics_used_by_experiments(api):
    for doc in (metric(), metric("latency", "page_load", "mean", direction="decrease"),
                metric("spare", "click", "count")):
        api("post", "/metrics", doc, 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", experiment("checkout", success=["revenue"], guardrails=["latency"]), 201)
    api("post", "/experiments", experiment("search", guardrails=["latency"]), 201)

    body = api("delete", "/metrics/latency", status=409)
    assert body["errors"] == {"experiments": ["checkout", "search"]} and "checkout, search" in body["message"]
    assert api("delete", "/metrics/revenue", status=409)["errors"] == {"experiments": ["checkout"]}
    # a draft collects nothing yet: the meaning may still change
    api("put", "/metrics/revenue", metric(kind="mean", version=1))

    api("post", "/experiments/checkout/start")
    for change in ({"kind": "count"}, {"event": "order"},
                   {"kind": "ratio", "denominator_event": "visit"}):
        body = api("put", "/metrics/revenue", {**metric(kind="mean", version=2), **change}, 409)
        assert body["errors"]["experiments"] == ["checkout"] and "checkout" in body["message"]
        assert set(change) <= set(body["errors"])
    live = api("put", "/metrics/revenue", metric(kind="mean", version=2, name="Revenue", direction="decrease",
                                                 winsorize_percentile=99, description="gross"))
    assert live["version"] == 3 and live["kind"] == "mean"
    api("post", "/experiments/checkout/pause")
    api("put", "/metrics/latency", metric("latency", "page_load", "sum", version=1), 409)
    api("post", "/experiments/checkout/stop")
    # finished: nothing is collecting, but its results still reference the metric
    api("put", "/metrics/latency", metric("latency", "page_load", "sum", version=1))
    api("delete", "/metrics/latency", status=409)
    api("delete", "/metrics/spare", status=204)
    assert [m["key"] for m in api("get", "/metrics")["items"]] == ["latency", "revenue"]
    assert api("get", "/audit?action=metric.delete")["total"] == 1


def test_validate_metric_outside_http():
    from flagship.errors import ValidationError
    from flagship.experiments.model import metric_from_dict, metric_to_dict

    def validate_metric(doc):
        return metric_to_dict(metric_from_dict(doc))

    assert validate_metric(metric(winsorize_percentile=99)) == {
        "key": "revenue", "name": "revenue", "event": "purchase", "kind": "sum",
        "denominator_event": None, "direction": "increase", "winsorize_percentile": 99.0,
        "description": ""}
    for doc, field in [(metric(winsorize_percentile=100), "winsorize_percentile"),
                       (metric(winsorize_percentile=float("nan")), "winsorize_percentile"),
                       (metric(key="a b"), "key"), (metric(kind="median"), "kind"),
                       (metric(direction="up"), "direction"), (metric(event="$exposure"), "event")]:
        with pytest.raises(ValidationError) as raised:
            validate_metric(doc)
        assert raised.value.field == field, doc
