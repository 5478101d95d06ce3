"""Environments: per-environment targeting, keys bound to one, snapshots, experiments, events."""
from __future__ import annotations

import pytest

from flagship import Snapshot, jobs
from flagship.auth import create_key
from flagship.flags.bucketing import bucket
from tests.conftest import boolean_flag

V = "/api/v1"


@pytest.fixture
def staging(api):
    api("post", "/environments", {"key": "staging", "name": "Staging", "colour": "#1a7f37"}, 201)
    return "staging"


def keys(runtime, env):
    return {"Authorization": f"Bearer {create_key(runtime, 'test', f'sdk-{env}', 'sdk', environment=env)}"}


def test_a_fresh_install_has_production_and_environments_are_listed(api, staging):
    listed = api("get", "/environments")
    assert [(e["key"], e["position"]) for e in listed] == [("production", 0), ("staging", 1)]
    assert api("get", "/environments/staging")["colour"] == "#1a7f37"
    api("post", "/environments", {"key": "staging"}, 409)
    api("post", "/environments", {"key": "bad key"}, 422)
    api("post", "/environments", {"key": "qa", "colour": "red"}, 422)
    api("patch", "/environments/staging", {"name": "Pre-production"}, 428)
    renamed = api("patch", "/environments/staging", {"name": "Pre-production", "version": 1})
    assert renamed["name"] == "Pre-production" and renamed["version"] == 2
    assert api("get", "/audit?action=environment.create")["items"][0]["environment"] == "staging"


def test_a_new_flag_is_on_where_it_was_created_and_off_elsewhere(api, staging):
    flag = boolean_flag(rules=[{"kind": "rollout", "variant": "on", "percentage": 50}])
    created = api("post", "/flags?environment=staging", flag, 201)
    assert created["environment"] == "staging" and created["enabled"] and created["rules"]
    production = api("get", "/flags/new-checkout")
    assert production["environment"] == "production" and not production["enabled"]
    assert production["rules"] == [] and production["variants"] == created["variants"]
    assert set(production["environments"]) == {"production", "staging"}
    assert production["environments"]["staging"]["enabled"] is True
    assert production["environments"]["staging"]["rules"] == 1
    canonical = api("get", "/flags/new-checkout/environments/staging")
    assert canonical["rules"] == created["rules"]


def test_targeting_versions_revisions_and_kill_switch_are_per_environment(api, staging):
    api("post", "/flags", boolean_flag(), 201)
    api("put", "/flags/new-checkout/environments/staging",
        boolean_flag(enabled=True, rules=[{"kind": "force", "variant": "on"}], version=1))
    assert api("get", "/flags/new-checkout/environments/staging")["version"] == 2
    assert api("get", "/flags/new-checkout")["version"] == 1  # production untouched
    api("post", "/flags/new-checkout/environments/staging/disable")
    assert not api("get", "/flags/new-checkout/environments/staging")["enabled"]
    assert api("get", "/flags/new-checkout")["enabled"]
    staging_history = api("get", "/flags/new-checkout/revisions?environment=staging")["items"]
    assert [r["action"] for r in staging_history] == ["disable", "update", "create"]
    assert all(r["environment"] == "staging" for r in staging_history)
    assert [r["action"] for r in api("get", "/flags/new-checkout/revisions")["items"]] == ["create"]
    audit = api("get", "/audit?action=flag.disable")["items"]
    assert [(a["target"], a["environment"]) for a in audit] == [("new-checkout", "staging")]
    api("patch", "/flags/new-checkout/environments/nowhere", {"enabled": True, "version": 1}, 404)


def test_a_definition_change_reaches_every_environment_or_none(api, staging):
    api("post", "/flags", {"key": "colour", "type": "string", "variants": {"a": "A", "b": "B", "c": "C"},
                           "default_variant": "a"}, 201)
    api("patch", "/flags/colour/environments/staging", {"version": 1, "enabled": True, "rules": [
        {"kind": "force", "variant": "c", "conditions": [{"attribute": "k", "operator": "eq", "values": [1]}]}]})
    api("patch", "/flags/colour", {"version": 1, "description": "button colour", "tags": ["ui"]})
    staging_doc = api("get", "/flags/colour/environments/staging")
    assert staging_doc["description"] == "button colour" and staging_doc["tags"] == ["ui"]
    assert staging_doc["rules"][0]["variant"] == "c"  # its targeting stayed
    body = api("patch", "/flags/colour", {"version": 2, "variants": {"a": "A", "b": "B"}}, 409)
    assert "staging" in body["message"] and body["errors"]["environments"] == ["staging"]
    assert set(api("get", "/flags/colour")["variants"]) == {"a", "b", "c"}  # nothing applied


def test_two_environments_evaluate_differently_server_side_and_locally(api, client, runtime, staging):
    flag = boolean_flag(enabled=True, rules=[{"kind": "force", "variant": "on", "conditions": [
        {"attribute": "country", "operator": "eq", "values": ["NL"]}]}])
    api("post", "/flags", flag, 201)
    api("patch", "/flags/new-checkout/environments/staging", {"version": 1, "enabled": True, "rules": [
        {"kind": "rollout", "variant": "on", "percentage": 100}]})
    production_key, staging_key = keys(runtime, "production"), keys(runtime, "staging")
    context = {"context": {"key": "u-1", "country": "US"}, "flags": ["new-checkout"]}
    prod = client.post(V + "/evaluate", json=context, headers=production_key).json
    stag = client.post(V + "/evaluate", json=context, headers=staging_key).json
    assert (prod["environment"], prod["flags"]["new-checkout"]["value"]) == ("production", False)
    assert (stag["environment"], stag["flags"]["new-checkout"]["value"]) == ("staging", True)
    snapshots = {}
    for env, headers in (("production", production_key), ("staging", staging_key)):
        response = client.get(V + "/sdk/snapshot", headers=headers)
        assert response.headers["X-Flagship-Environment"] == env
        snapshots[env] = Snapshot.from_dict(response.json)
    assert snapshots["production"].evaluate("new-checkout", {"key": "u-1", "country": "US"}).value is False
    assert snapshots["staging"].evaluate("new-checkout", {"key": "u-1", "country": "US"}).value is True
    # a key bound to staging cannot read production
    denied = client.get(V + "/sdk/snapshot?environment=production", headers=staging_key)
    assert denied.status_code == 403 and "staging" in denied.json["message"]
    assert client.post(V + "/evaluate?environment=production", json=context,
                       headers=staging_key).status_code == 403


def test_etags_are_per_environment(api, client, runtime, staging):
    api("post", "/flags", boolean_flag(), 201)
    production_key = keys(runtime, "production")
    etag = client.get(V + "/sdk/snapshot", headers=production_key).headers["ETag"]
    api("post", "/flags/new-checkout/environments/staging/enable")  # a change elsewhere
    again = client.get(V + "/sdk/snapshot", headers={**production_key, "If-None-Match": etag})
    assert again.status_code == 304
    api("post", "/flags/new-checkout/disable")
    assert client.get(V + "/sdk/snapshot", headers={**production_key, "If-None-Match": etag}).status_code == 200


def test_bucketing_ignores_the_environment(api, client, runtime, staging):
    flag = boolean_flag(enabled=True, rules=[{"kind": "rollout", "variant": "on", "percentage": 37}])
    api("post", "/flags", flag, 201)
    api("put", "/flags/new-checkout/environments/staging", {**flag, "version": 1})
    local = {env: Snapshot.from_dict(client.get(V + "/sdk/snapshot", headers=keys(runtime, env)).json)
             for env in ("production", "staging")}
    for i in range(300):
        unit = f"user-{i}"
        want = bucket("new-checkout", unit) < 3700
        assert [local[env].evaluate("new-checkout", {"key": unit}).value for env in local] == [want, want]


def test_segments_belong_to_one_environment(api, staging):
    api("post", "/segments", {"key": "staff", "included": ["ana"]}, 201)
    api("post", "/segments?environment=staging", {"key": "staff", "included": ["bob"]}, 201)
    assert api("get", "/segments/staff")["included"] == ["ana"]
    assert api("get", "/segments/staff?environment=staging")["included"] == ["bob"]
    api("post", "/segments?environment=staging", {"key": "beta"}, 201)
    api("get", "/segments/beta", status=404)
    flag = boolean_flag(rules=[{"kind": "force", "variant": "on", "conditions": [{"segment": "beta"}]}])
    api("post", "/flags", flag, 422)  # production has no segment beta
    api("post", "/flags?environment=staging", flag, 201)


def test_experiments_live_in_one_environment_with_their_events(api, client, runtime, staging):
    api("post", "/metrics", {"key": "buy", "event": "purchase", "kind": "conversion"}, 201)
    api("post", "/layers?environment=staging", {"key": "s-main"}, 201)
    api("post", "/experiments?environment=staging", {
        "key": "exp", "flag": "button", "layer": "s-main", "success_metrics": ["buy"],
        "variants": [{"variant": "a", "value": "A", "is_control": True}, {"variant": "b", "value": "B"}]}, 201)
    api("post", "/experiments?environment=production", {
        "key": "exp2", "flag": "button2", "layer": "s-main",
        "variants": [{"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]}, 422)
    api("post", "/experiments/exp/start")
    assert api("get", "/experiments/exp")["environment"] == "staging"
    assert [e["key"] for e in api("get", "/experiments?environment=staging")["items"]] == ["exp"]
    assert api("get", "/experiments")["total"] == 0
    staging_key, production_key = keys(runtime, "staging"), keys(runtime, "production")
    assigned = client.post(V + "/experiments/exp/assign", json={"context": {"key": "u1"}}, headers=staging_key)
    assert assigned.status_code == 200 and assigned.json["in_experiment"]
    assert client.post(V + "/experiments/exp/assign", json={"context": {"key": "u1"}},
                       headers=production_key).status_code == 404
    # a production event of the same unit is not a staging conversion
    for headers, event_id in ((production_key, "p"), (staging_key, "s")):
        body = {"event_id": event_id, "unit": "u1", "event": "purchase"}
        assert client.post(V + "/experiments/events", json=body, headers=headers).status_code == 202
    jobs.aggregate(runtime)
    quality = api("get", "/experiments/exp/monitor")["data_quality"]
    assert quality["accepted"] == 1
    bought = api("get", "/experiments/exp/monitor")["metrics"][0]["variants"]
    assert sum(v["mean"] * v["units"] for v in bought.values()) == 1


def test_deleting_an_environment(api, runtime, staging):
    api("post", "/flags", boolean_flag(), 201)
    api("delete", "/environments/production", status=409)
    keys(runtime, "staging")
    body = api("delete", "/environments/staging", status=409)
    assert body["errors"]["keys"] == ["sdk-staging"]
    api("delete", "/keys/sdk-staging", status=200)
    api("post", "/layers?environment=staging", {"key": "l"}, 201)
    assert api("delete", "/environments/staging", status=409)["errors"]["layers"] == ["l"]
    api("delete", "/layers/l", status=204)
    api("delete", "/environments/staging", status=204)
    assert [e["key"] for e in api("get", "/environments")] == ["production"]
    assert set(api("get", "/flags/new-checkout")["environments"]) == {"production"}


def test_a_new_environment_can_copy_another(api):
    api("post", "/segments", {"key": "staff", "included": ["ana"]}, 201)
    flag = boolean_flag(rules=[{"kind": "force", "variant": "on", "conditions": [{"segment": "staff"}]}])
    api("post", "/flags", flag, 201)
    api("post", "/environments", {"key": "qa", "copy_from": "production"}, 201)
    copied = api("get", "/flags/new-checkout/environments/qa")
    assert copied["rules"][0]["conditions"] == [{"segment": "staff", "negate": False}]
    assert copied["enabled"] and api("get", "/segments/staff?environment=qa")["included"] == ["ana"]


def test_keys_bound_to_an_environment(api, client, runtime, staging, runner):
    made = runner("keys", "create", "--scope", "sdk", "--name", "web-staging", "--environment", "staging")
    assert made.exit_code == 0
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    assert client.get(V + "/sdk/snapshot", headers=headers).headers["X-Flagship-Environment"] == "staging"
    assert runner("keys", "create", "--scope", "sdk", "--name", "x", "--environment", "nowhere").exit_code != 0
    listed = {k["name"]: k["environment"] for k in api("get", "/keys")}
    assert listed["web-staging"] == "staging" and listed["test-admin"] is None
    admin_staging = {"Authorization": f"Bearer {create_key(runtime, 'test', 'ops', 'admin', environment='staging')}"}
    api("post", "/flags", boolean_flag(), 201)
    # a bound admin key acts in its environment only; changes reaching every one need an unbound key
    assert client.post(V + "/flags/new-checkout/disable?environment=production",
                       headers=admin_staging).status_code == 403
    assert client.post(V + "/flags/new-checkout/enable", headers=admin_staging).json["environment"] == "staging"
    assert client.patch(V + "/flags/new-checkout", json={"version": 2, "description": "x"},
                        headers=admin_staging).status_code == 403
    assert client.delete(V + "/flags/new-checkout", headers=admin_staging).status_code == 403
    assert client.post(V + "/keys", json={"name": "k2", "scope": "sdk"}, headers=admin_staging).status_code == 403


def test_an_unknown_environment_is_a_404_everywhere(api, client, admin):
    """Events and layers used to act in a mistyped environment: events were stored where
    they could never count, a layer list came back empty."""
    event = {"unit": "u1", "event": "click"}
    for path, body in [("/experiments/events?environment=nope", event),
                       ("/experiments/events/batch?environment=nope", [event])]:
        response = client.post(V + path, json=body, headers=admin)
        assert response.status_code == 404 and response.json["message"] == "environment 'nope' not found"
    api("get", "/layers?environment=nope", status=404)
    api("post", "/layers?environment=nope", {"key": "l"}, status=404)
    assert [e["action"] for e in api("get", "/audit")["items"]] == ["api_key.create"]  # nothing else
    # the known ones still work, by query and by default
    assert client.post(V + "/experiments/events?environment=production", json=event,
                       headers=admin).status_code == 202
    assert api("get", "/layers?environment=production") == []
