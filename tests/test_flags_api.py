"""Flag and segment endpoints: every success and error path, on SQLite and PostgreSQL."""
from __future__ import annotations

from tests.conftest import boolean_flag


def create(client, headers, doc):
    response = client.post("/api/v1/flags", json=doc, headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def test_create_get_and_list(client, admin):
    created = create(client, admin, boolean_flag(tags=["checkout", "web"], description="New flow"))
    assert created["version"] == 1
    assert created["salt"] == "new-checkout" and created["enabled"] is True
    assert created["off_variant"] == "off"
    got = client.get("/api/v1/flags/new-checkout", headers=admin)
    assert got.status_code == 200 and got.headers["ETag"] == '"1"'
    assert got.json["variants"] == {"on": True, "off": False}
    create(client, admin, boolean_flag("other", tags=["web"]))
    create(client, admin, boolean_flag("third"))
    listing = client.get("/api/v1/flags?tag=web", headers=admin).json
    assert [f["key"] for f in listing["items"]] == ["new-checkout", "other"]
    assert listing["total"] == 2
    search = client.get("/api/v1/flags?q=NEW%20FLOW", headers=admin).json
    assert [f["key"] for f in search["items"]] == ["new-checkout"]
    page = client.get("/api/v1/flags?per_page=2&page=2", headers=admin).json
    assert [f["key"] for f in page["items"]] == ["third"] and page["total"] == 3


def test_tag_filter_does_not_match_substrings_or_wildcards(client, admin):
    create(client, admin, boolean_flag("a", tags=["web_app"]))
    create(client, admin, boolean_flag("b", tags=["webXapp"]))
    assert [f["key"] for f in client.get("/api/v1/flags?tag=web_app", headers=admin).json["items"]] == ["a"]
    assert client.get("/api/v1/flags?tag=web", headers=admin).json["total"] == 0


def test_update_needs_current_version_and_stale_write_changes_nothing(client, admin):
    create(client, admin, boolean_flag())
    doc = boolean_flag(description="v2")
    missing = client.put("/api/v1/flags/new-checkout", json=doc, headers=admin)
    assert missing.status_code == 428 and "version" in missing.json["errors"]
    ok = client.put("/api/v1/flags/new-checkout", json=doc, headers={**admin, "If-Match": '"1"'})
    assert ok.status_code == 200 and ok.json["version"] == 2 and ok.json["description"] == "v2"
    stale = client.put("/api/v1/flags/new-checkout", json={**doc, "description": "v3", "version": 1},
                       headers=admin)
    assert stale.status_code == 409 and "version 2" in stale.json["message"]
    assert client.get("/api/v1/flags/new-checkout", headers=admin).json["description"] == "v2"


def test_patch_merges_top_level_fields(client, admin):
    create(client, admin, boolean_flag(description="keep me"))
    rules = [{"kind": "rollout", "variant": "on", "percentage": 12.5, "conditions": []}]
    response = client.patch("/api/v1/flags/new-checkout", json={"rules": rules, "version": 1},
                            headers=admin)
    assert response.status_code == 200, response.json
    assert response.json["description"] == "keep me"
    assert response.json["rules"][0]["percentage"] == 12.5 and response.json["rules"][0]["id"]


def test_key_cannot_change(client, admin):
    create(client, admin, boolean_flag())
    response = client.patch("/api/v1/flags/new-checkout", json={"key": "renamed", "version": 1},
                            headers=admin)
    assert response.status_code == 422 and "key" in response.json["errors"]["json"]


def test_enable_disable_and_delete(client, admin):
    create(client, admin, boolean_flag())
    off = client.post("/api/v1/flags/new-checkout/disable", headers=admin)
    assert off.status_code == 200 and off.json["enabled"] is False and off.json["version"] == 2
    again = client.post("/api/v1/flags/new-checkout/disable", headers=admin)
    assert again.json["version"] == 2  # idempotent: no new revision
    on = client.post("/api/v1/flags/new-checkout/enable", headers=admin)
    assert on.json["enabled"] is True and on.json["version"] == 3
    assert client.delete("/api/v1/flags/new-checkout", headers={**admin, "If-Match": "1"}).status_code == 409
    assert client.delete("/api/v1/flags/new-checkout", headers=admin).status_code == 204
    assert client.get("/api/v1/flags/new-checkout", headers=admin).status_code == 404
    assert client.post("/api/v1/flags/new-checkout/enable", headers=admin).status_code == 404


def test_revisions_record_diff_and_restore(client, admin):
    create(client, admin, boolean_flag(description="one"))
    client.patch("/api/v1/flags/new-checkout", json={"description": "two", "version": 1}, headers=admin)
    revisions = client.get("/api/v1/flags/new-checkout/revisions", headers=admin).json
    assert [r["version"] for r in revisions["items"]] == [2, 1]
    latest = revisions["items"][0]
    assert latest["actor"] == "key:test-admin" and latest["action"] == "update"
    assert latest["diff"] == [{"path": "description", "op": "replace", "before": "one", "after": "two"}]
    assert latest["document"]["description"] == "two"
    restored = client.post("/api/v1/flags/new-checkout/revisions/1/restore", headers=admin)
    assert restored.status_code == 200 and restored.json["description"] == "one"
    assert restored.json["version"] == 3
    assert client.post("/api/v1/flags/new-checkout/revisions/9/restore", headers=admin).status_code == 404


def test_deleted_flag_keeps_history_and_can_be_restored(client, admin):
    create(client, admin, boolean_flag(description="precious"))
    client.delete("/api/v1/flags/new-checkout", headers=admin)
    history = client.get("/api/v1/flags/new-checkout/revisions", headers=admin).json["items"]
    assert [r["action"] for r in history] == ["delete", "create"]
    restored = client.post("/api/v1/flags/new-checkout/revisions/1/restore", headers=admin)
    assert restored.status_code == 200 and restored.json["version"] == 3
    assert restored.json["description"] == "precious"
    recreate = client.post("/api/v1/flags", json=boolean_flag(), headers=admin)
    assert recreate.status_code == 409


def test_duplicate_key_is_409(client, admin):
    create(client, admin, boolean_flag())
    response = client.post("/api/v1/flags", json=boolean_flag(), headers=admin)
    assert response.status_code == 409 and "key" in response.json["errors"]


def test_errors_name_the_field(client, admin):
    cases = [
        ({"key": "x", "type": "boolean", "variants": {"on": True}, "default_variant": "on",
          "colour": "red"}, "colour"),
        ({"key": "x", "type": "boolean", "variants": {"on": "yes"}, "default_variant": "on"},
         "variants.on"),
        ({"key": "x", "type": "number", "variants": {"a": 1}, "default_variant": "b"},
         "default_variant"),
        ({"key": "bad key!", "type": "boolean", "variants": {"on": True}, "default_variant": "on"},
         "key"),
        ({"key": "x", "type": "colour", "variants": {"on": True}, "default_variant": "on"}, "type"),
        (boolean_flag("x", rules=[{"kind": "force", "variant": "on", "conditions": [
            {"attribute": "plan", "operator": "frobnicate", "values": ["a"]}]}]), "rules.0.conditions.0.operator"),
        (boolean_flag("x", rules=[{"kind": "force", "variant": "on", "conditions": [
            {"attribute": "email", "operator": "matches", "values": ["("]}]}]), "rules.0.conditions.0.values"),
        (boolean_flag("x", rules=[{"kind": "force", "variant": "on", "conditions": [
            {"attribute": "v", "operator": "semver_gt", "values": ["1.x"]}]}]), "rules.0.conditions.0.values"),
        (boolean_flag("x", rules=[{"kind": "rollout", "variant": "on", "percentage": 101}]),
         "rules.0.percentage"),
        (boolean_flag("x", rules=[{"kind": "force", "variant": "on", "conditions": [
            {"segment": "nope"}]}]), "rules.0.conditions.0.segment"),
        (boolean_flag("x", allowlist={"u1": "maybe"}), "allowlist.u1"),
    ]
    for doc, field in cases:
        response = client.post("/api/v1/flags", json=doc, headers=admin)
        assert response.status_code == 422, (field, response.json)
        body = response.json
        assert body["code"] == 422 and body["status"] and body["message"]
        flat = str(body["errors"])
        assert field.split(".")[-1] in flat, (field, body)


def test_malformed_json_and_wrong_shapes(client, admin):
    bad = client.post("/api/v1/flags", data="{not json", headers={**admin, "Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json["code"] == 400
    not_object = client.post("/api/v1/flags", json=[1, 2], headers=admin)
    assert not_object.status_code == 422
    wrong_type = client.post("/api/v1/flags", json={**boolean_flag(), "enabled": "sometimes"}, headers=admin)
    assert wrong_type.status_code == 422 and "enabled" in str(wrong_type.json["errors"])


def test_oversize_body_is_413(app, client, admin):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = client.post("/api/v1/flags", json=boolean_flag(description="x" * 2000), headers=admin)
    assert response.status_code == 413 and response.json["code"] == 413


def test_unknown_route_and_method_are_json(client, admin):
    assert client.get("/api/v1/nothing", headers=admin).json["code"] == 404
    assert client.patch("/api/v1/flags", headers=admin).status_code == 405


def test_segments_crud_and_delete_in_use(client, admin):
    segment = {"key": "beta-testers", "name": "Beta", "conditions": [
        {"attribute": "email", "operator": "ends_with", "values": ["@example.com"]}]}
    created = client.post("/api/v1/segments", json=segment, headers=admin)
    assert created.status_code == 201 and created.json["version"] == 1
    assert client.post("/api/v1/segments", json=segment, headers=admin).status_code == 409
    create(client, admin, boolean_flag(rules=[{"kind": "force", "variant": "on",
                                               "conditions": [{"segment": "beta-testers"}]}]))
    listing = client.get("/api/v1/segments", headers=admin).json
    assert [s["key"] for s in listing] == ["beta-testers"]
    changed = client.put("/api/v1/segments/beta-testers", json={**segment, "name": "Beta 2"},
                         headers={**admin, "If-Match": '"1"'})
    assert changed.status_code == 200 and changed.json["version"] == 2
    in_use = client.delete("/api/v1/segments/beta-testers", headers=admin)
    assert in_use.status_code == 409 and in_use.json["errors"]["flags"] == ["new-checkout"]
    client.delete("/api/v1/flags/new-checkout", headers=admin)
    assert client.delete("/api/v1/segments/beta-testers", headers=admin).status_code == 204
    assert client.get("/api/v1/segments/beta-testers", headers=admin).status_code == 404
    bad = client.post("/api/v1/segments", json={"key": "s", "conditions": [
        {"attribute": "a", "operator": "gt", "values": ["ten"]}]}, headers=admin)
    assert bad.status_code == 422 and "conditions.0.values" in str(bad.json["errors"])


def test_audit_log_records_every_mutation_with_filters(client, admin):
    create(client, admin, boolean_flag())
    client.post("/api/v1/flags/new-checkout/disable", headers=admin)
    client.post("/api/v1/segments", json={"key": "s1", "conditions": []}, headers=admin)
    log = client.get("/api/v1/audit", headers=admin).json
    actions = [entry["action"] for entry in log["items"]]
    assert actions[:3] == ["segment.create", "flag.disable", "flag.create"]
    disable = log["items"][1]
    assert disable["before"]["enabled"] is True and disable["after"]["enabled"] is False
    assert disable["actor"] == "key:test-admin" and disable["target"] == "new-checkout"
    only_flags = client.get("/api/v1/audit?target_type=flag&per_page=1", headers=admin).json
    assert only_flags["total"] == 2 and len(only_flags["items"]) == 1
    assert client.get("/api/v1/audit?since=not-a-date", headers=admin).status_code == 422


def test_toggle_with_a_bad_version_is_422_not_500(client, admin):
    create(client, admin, boolean_flag())
    for bad in ("two", 1.5, True, [1]):
        response = client.post("/api/v1/flags/new-checkout/disable", json={"version": bad}, headers=admin)
        assert response.status_code == 422 and "version" in str(response.json["errors"])
    assert client.post("/api/v1/flags/new-checkout/disable", json={"version": 1},
                       headers=admin).json["enabled"] is False
