"""Experiment revisions can be restored (issue 8, "Experiment revisions cannot be restored"):
`POST /experiments/{key}/revisions/{v}/restore` makes the configuration of revision v
current again on a draft or paused experiment, as a new revision, audited."""
from __future__ import annotations

from datetime import datetime, timezone

V = "/api/v1"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
CONFIG = ("variants", "traffic_percentage", "targeting", "allowlist", "blocklist", "hypothesis")


def setup(api, runtime):
    runtime.clock = lambda: T0
    api("post", "/layers", {"key": "main"}, 201)
    created = api("post", "/experiments", {
        "key": "exp", "flag": "f", "layer": "main", "traffic_percentage": 50, "hypothesis": "first",
        "targeting": [{"attribute": "country", "operator": "in", "values": ["US"]}],
        "variants": [{"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]}, 201)
    assert created["version"] == 1
    return created


def change(api, version):
    return api("patch", "/experiments/exp", {
        "version": version, "traffic_percentage": 30, "hypothesis": "second", "allowlist": {"qa": "b"},
        "targeting": [{"attribute": "country", "operator": "in", "values": ["NL"]}],
        "variants": [{"variant": "a", "weight": 1, "is_control": True}, {"variant": "b", "weight": 3}]})


def config(doc):
    return {k: doc[k] for k in CONFIG}


def rule_conditions(api):
    rule = next(r for r in api("get", "/flags/f")["rules"] if r["id"] == "exp-exp")
    return rule["conditions"]


def test_restore_a_draft(api, runtime):
    first = setup(api, runtime)
    second = change(api, 1)
    assert config(second) != config(first) and second["version"] == 2
    assert rule_conditions(api)[0]["values"] == ["NL"]

    restored = api("post", "/experiments/exp/revisions/1/restore")
    assert restored["version"] == 3 and restored["status"] == "draft" and restored["ranges"] == []
    assert config(restored) == config(first)
    assert config(api("get", "/experiments/exp")) == config(first)
    assert rule_conditions(api) == first["targeting"]  # the flag's rule follows the configuration
    revisions = api("get", "/experiments/exp/revisions")["items"]
    assert [(r["version"], r["action"]) for r in revisions] == [(3, "restore"), (2, "update"), (1, "create")]
    assert {"path": "traffic_percentage", "op": "replace", "before": 30.0, "after": 50.0} in revisions[0]["diff"]
    audit = api("get", "/audit?target_type=experiment")["items"][0]
    assert (audit["action"], audit["actor"], audit["target"]) == ("experiment.restore", "key:test-admin", "exp")
    assert audit["before"]["hypothesis"] == "second" and audit["after"]["hypothesis"] == "first"
    # restoring the restored-from revision again is a new revision too
    assert api("post", "/experiments/exp/revisions/2/restore")["version"] == 4
    assert config(api("get", "/experiments/exp")) == config(second)


def test_restore_a_paused_experiment(api, client, sdk, runtime):
    first = setup(api, runtime)
    started = api("post", "/experiments/exp/start")
    assert started["ranges"] == [[0, 5000]] and started["version"] == 2
    api("post", "/experiments/exp/pause")
    changed = change(api, 3)
    assert changed["ranges"] == [[0, 3000]] and len(changed["weight_epochs"]) == 2

    restored = api("post", "/experiments/exp/revisions/2/restore", {"version": 4})
    assert restored["status"] == "paused" and restored["version"] == 5
    assert config(restored) == config(first)
    assert restored["ranges"] == [[0, 5000]]  # the traffic claims its buckets again
    assert [e["weights"] for e in restored["weight_epochs"]] == [
        {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 3.0}, {"a": 1.0, "b": 1.0}]
    assert api("get", "/experiments/exp/revisions")["items"][0]["action"] == "restore"
    assert api("get", "/audit?target_type=experiment")["items"][0]["action"] == "experiment.restore"
    # and it runs on with the restored configuration
    assert api("post", "/experiments/exp/resume")["status"] == "running"
    response = client.post(V + "/experiments/exp/assign", json={"context": {"key": "qa", "country": "US"}},
                           headers=sdk)
    assert response.json["reason"] != "TARGETING_MATCH"  # the allowlist of revision 4 is gone


def test_restore_refuses_running_finished_unknown_and_stale(api, runtime):
    setup(api, runtime)
    change(api, 1)
    api("post", "/experiments/nope/revisions/1/restore", status=404)
    assert "99" in api("post", "/experiments/exp/revisions/99/restore", status=404)["message"]

    # a stale version (body or If-Match) is a 409, a current one is fine
    stale = api("post", "/experiments/exp/revisions/1/restore", {"version": 1}, 409)
    assert stale["errors"]["version"] == ["current version is 2"]
    api("post", "/experiments/exp/revisions/1/restore", status=409, headers={"If-Match": '"1"'})
    assert api("get", "/experiments/exp")["version"] == 2  # nothing changed
    assert api("post", "/experiments/exp/revisions/1/restore", headers={"If-Match": '"2"'})["version"] == 3

    api("post", "/experiments/exp/start")
    running = api("post", "/experiments/exp/revisions/1/restore", status=409)
    assert running["errors"]["status"] == ["running"] and "running" in running["message"]
    api("post", "/experiments/exp/stop", {"outcome": "completed"})
    done = api("post", "/experiments/exp/revisions/1/restore", status=409)
    assert done["errors"]["status"] == ["completed"] and "completed" in done["message"]
    revisions = api("get", "/experiments/exp/revisions")["items"]
    assert [r["action"] for r in revisions] == ["stop", "start", "restore", "update", "create"]
    assert [a["action"] for a in api("get", "/audit?target_type=experiment")["items"]].count(
        "experiment.restore") == 1
