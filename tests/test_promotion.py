"""Promotion between environments: dry run, apply, versions, segments, tags, experiments."""
from __future__ import annotations

import pytest

from tests.conftest import boolean_flag


@pytest.fixture
def envs(api):
    api("post", "/environments", {"key": "staging"}, 201)
    api("post", "/segments?environment=staging", {"key": "beta", "included": ["ana"]}, 201)
    flag = boolean_flag(tags=["checkout"])
    api("post", "/flags", flag, 201)
    api("put", "/flags/new-checkout/environments/staging", {**flag, "version": 1, "enabled": True,
        "rules": [{"id": "beta", "kind": "force", "variant": "on", "conditions": [{"segment": "beta"}]},
                  {"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 25}],
        "allowlist": {"qa": "on"}})
    return api


def test_dry_run_shows_the_diff_and_changes_nothing(envs):
    api = envs
    body = api("post", "/flags/new-checkout/promote", {"from": "staging", "to": "production", "dry_run": True})
    plan = body["flags"][0]
    assert body["dry_run"] and plan["missing_segments"] == ["beta"] and plan["target_version"] == 1
    paths = {c["path"] for c in plan["changes"]}
    assert {"rules.0", "rules.1", "allowlist.qa"} <= paths
    assert api("get", "/flags/new-checkout")["rules"] == [] and api("get", "/flags/new-checkout")["version"] == 1
    assert api("get", "/audit?action=flag.promote")["total"] == 0


def test_missing_segments_are_named_or_copied(envs):
    api = envs
    refused = api("post", "/flags/new-checkout/promote", {"from": "staging", "to": "production"}, 409)
    assert refused["errors"]["segments"] == ["beta"] and api("get", "/flags/new-checkout")["version"] == 1
    done = api("post", "/flags/new-checkout/promote",
               {"from": "staging", "to": "production", "copy_segments": True})
    applied = done["applied"][0]
    assert applied["environment"] == "production" and [r["id"] for r in applied["rules"]] == ["beta", "ramp"]
    assert applied["allowlist"] == {"qa": "on"} and applied["enabled"] is True
    assert api("get", "/segments/beta")["included"] == ["ana"]
    assert api("get", "/flags/new-checkout/revisions")["items"][0]["action"] == "promote"
    summary = api("get", "/audit?action=flags.promote")["items"][0]
    assert summary["environment"] == "production" and summary["after"]["copied_segments"] == ["beta"]


def test_a_conflicting_change_aborts_the_promotion(envs):
    api = envs
    api("post", "/segments", {"key": "beta"}, 201)
    seen = api("post", "/flags/new-checkout/promote", {"from": "staging", "to": "production", "dry_run": True})
    version = seen["flags"][0]["target_version"]
    api("post", "/flags/new-checkout/disable")  # someone changes production meanwhile
    body = api("post", "/flags/new-checkout/promote",
               {"from": "staging", "to": "production", "version": version}, 409)
    assert "version" in body["message"]
    after = api("get", "/flags/new-checkout")
    assert after["rules"] == [] and after["version"] == version + 1


def test_experiment_rules_stay_in_their_environment(api):
    api("post", "/environments", {"key": "staging"}, 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "exp", "flag": "button", "layer": "main", "variants": [
        {"variant": "a", "value": "A", "is_control": True}, {"variant": "b", "value": "B"}]}, 201)
    staging = api("get", "/flags/button/environments/staging")
    api("patch", "/flags/button/environments/staging", {"version": staging["version"], "enabled": True,
        "rules": [{"id": "everyone", "kind": "force", "variant": "b"}]})
    done = api("post", "/flags/button/promote", {"from": "staging", "to": "production"})
    assert [r["id"] for r in done["applied"][0]["rules"]] == ["exp-exp", "everyone"]
    back = api("post", "/flags/button/promote", {"from": "production", "to": "staging"})
    assert [r["id"] for r in back["applied"][0]["rules"]] == ["everyone"]  # no experiment rule copied


def test_promoting_a_tag_is_one_transaction(api):
    api("post", "/environments", {"key": "staging"}, 201)
    for key in ("a", "b", "c"):
        api("post", "/flags", boolean_flag(key, tags=["release-7"] if key != "c" else []), 201)
        api("patch", f"/flags/{key}/environments/staging",
            {"version": 1, "enabled": True, "rules": [{"kind": "rollout", "variant": "on", "percentage": 10}]})
    plan = api("post", "/promote", {"from": "staging", "to": "production", "tag": "release-7", "dry_run": True})
    assert [f["flag"] for f in plan["flags"]] == ["a", "b"]
    body = api("post", "/promote", {"from": "staging", "to": "production", "tag": "release-7",
                                    "versions": {"a": 1, "b": 99}}, 409)
    assert "version" in body["message"]
    assert [api("get", f"/flags/{k}")["rules"] for k in "ab"] == [[], []]  # not even a
    done = api("post", "/promote", {"from": "staging", "to": "production", "tag": "release-7"})
    assert [f["key"] for f in done["applied"]] == ["a", "b"]
    assert api("get", "/flags/c")["rules"] == []


def test_compare(envs):
    api = envs
    body = api("get", "/flags/new-checkout/compare?environments=staging,production")
    assert body["environments"] == ["staging", "production"]
    assert set(body["differs"]) == {"rules", "allowlist"}
    assert body["fields"]["default_variant"] == {"staging": "off", "production": "off"}
    api("get", "/flags/new-checkout/compare?environments=staging", status=422)
    api("get", "/flags/new-checkout/compare?environments=staging,nowhere", status=404)


def test_promotion_refuses_nonsense(envs):
    api = envs
    api("post", "/flags/new-checkout/promote", {"from": "staging", "to": "staging"}, 422)
    api("post", "/flags/new-checkout/promote", {"from": "staging", "to": "nowhere"}, 404)
    api("post", "/flags/nope/promote", {"from": "staging", "to": "production"}, 404)
    api("post", "/flags/new-checkout/promote", {"to": "production"}, 422)
