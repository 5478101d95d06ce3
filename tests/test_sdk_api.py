"""Evaluation and the SDK snapshot over HTTP."""
from __future__ import annotations

from flagship import Snapshot
from tests.conftest import boolean_flag, make_app


def seed(client, admin):
    segment = {"key": "staff", "conditions": [
        {"attribute": "email", "operator": "ends_with", "values": ["@corp.example"]}]}
    assert client.post("/api/v1/segments", json=segment, headers=admin).status_code == 201
    rules = [{"id": "staff", "kind": "force", "variant": "on", "conditions": [{"segment": "staff"}]},
             {"id": "half", "kind": "rollout", "variant": "on", "percentage": 50}]
    doc = boolean_flag(rules=rules, allowlist={"vip": "on"}, blocklist=["banned"])
    assert client.post("/api/v1/flags", json=doc, headers=admin).status_code == 201
    colour = {"key": "colour", "type": "string", "variants": {"red": "#f00", "blue": "#00f"},
              "default_variant": "red"}
    assert client.post("/api/v1/flags", json=colour, headers=admin).status_code == 201


def test_evaluate_named_and_all_flags(client, admin, sdk):
    seed(client, admin)
    body = {"context": {"key": "someone", "email": "a@corp.example"}, "flags": ["new-checkout"]}
    result = client.post("/api/v1/evaluate", json=body, headers=sdk).json
    assert result["flags"] == {"new-checkout": {"value": True, "variant": "on",
                                                "reason": "TARGETING_MATCH", "rule_id": "staff"}}
    everything = client.post("/api/v1/evaluate", json={"context": {"key": "vip"}}, headers=sdk).json
    assert set(everything["flags"]) == {"new-checkout", "colour"}
    assert everything["flags"]["colour"]["value"] == "#f00"
    assert everything["flags"]["colour"]["reason"] == "DEFAULT"
    assert everything["flags"]["new-checkout"]["reason"] == "TARGETING_MATCH"
    missing = client.post("/api/v1/evaluate", json={"context": {}, "flags": ["nope"]}, headers=sdk).json
    assert missing["flags"]["nope"]["reason"] == "ERROR"
    assert missing["flags"]["nope"]["error_code"] == "FLAG_NOT_FOUND"


def test_evaluate_rejects_bad_bodies(client, sdk):
    assert client.post("/api/v1/evaluate", json={"flags": []}, headers=sdk).status_code == 422
    assert client.post("/api/v1/evaluate", json={"context": "me"}, headers=sdk).status_code == 422


def test_server_and_snapshot_evaluate_identically(client, admin, sdk):
    seed(client, admin)
    snapshot = Snapshot.from_dict(client.get("/api/v1/sdk/snapshot", headers=sdk).json)
    for i in range(200):
        context = {"key": f"user-{i}", "email": f"u{i}@{'corp.example' if i % 7 == 0 else 'x.org'}"}
        server = client.post("/api/v1/evaluate", json={"context": context}, headers=sdk).json["flags"]
        for key, result in server.items():
            local = snapshot.evaluate(key, context)
            assert (local.value, local.variant, local.reason, local.rule_id) == (
                result["value"], result["variant"], result["reason"], result["rule_id"])


def test_rollout_splits_about_half(client, admin, sdk):
    seed(client, admin)
    variants = [client.post("/api/v1/evaluate", json={"context": {"key": f"u{i}"},
                                                      "flags": ["new-checkout"]},
                            headers=sdk).json["flags"]["new-checkout"]["reason"] for i in range(400)]
    assert 160 < variants.count("SPLIT") < 240


def test_snapshot_etag_304_and_revision(client, admin, sdk):
    seed(client, admin)
    first = client.get("/api/v1/sdk/snapshot", headers=sdk)
    assert first.status_code == 200 and first.headers["ETag"].startswith('"')
    assert {f["key"] for f in first.json["flags"]} == {"new-checkout", "colour"}
    assert [s["key"] for s in first.json["segments"]] == ["staff"]
    revision = first.json["revision"]
    unchanged = client.get("/api/v1/sdk/snapshot", headers={**sdk, "If-None-Match": first.headers["ETag"]})
    assert unchanged.status_code == 304 and unchanged.data == b""
    client.post("/api/v1/flags/colour/disable", headers=admin)
    changed = client.get("/api/v1/sdk/snapshot", headers={**sdk, "If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and changed.json["revision"] > revision
    assert changed.headers["ETag"] != first.headers["ETag"]


def test_snapshot_sees_changes_made_by_another_process(database_url, client, admin, sdk):
    seed(client, admin)
    before = client.get("/api/v1/sdk/snapshot", headers=sdk).json
    other = make_app(database_url, AUTH=False)  # a second server process on the same store
    assert other.test_client().post("/api/v1/flags/colour/disable").status_code == 200
    after = client.get("/api/v1/sdk/snapshot", headers=sdk).json
    assert after["revision"] == before["revision"] + 1
    colour = next(f for f in after["flags"] if f["key"] == "colour")
    assert colour["enabled"] is False
    result = client.post("/api/v1/evaluate", json={"context": {"key": "u"}, "flags": ["colour"]},
                         headers=sdk).json["flags"]["colour"]
    assert result["reason"] == "DISABLED"
    other.extensions["flagship"].db.dispose()


def test_openapi_and_offline_docs(client):
    spec = client.get("/api/openapi.json")
    assert spec.status_code == 200
    paths = spec.json["paths"]
    for path in ["/api/v1/flags", "/api/v1/flags/{key}", "/api/v1/evaluate", "/api/v1/sdk/snapshot",
                 "/api/v1/segments", "/api/v1/audit", "/api/v1/flags/{key}/revisions"]:
        assert path in paths, path
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/docs/assets/swagger-ui-bundle.js" in html and "https://" not in html
    asset = client.get("/api/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000
