"""Layers and experiments through the API: configuration, lifecycle, assignment, release."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone


from tests.conftest import boolean_flag

V = "/api/v1"


def colour_flag(api):
    api("post", "/flags", {"key": "colour", "type": "string", "variants": {
        "red": "#f00", "blue": "#00f", "green": "#0f0"}, "default_variant": "red"}, 201)


def experiment(key="exp-a", flag="colour", layer="main", traffic=50, **extra):
    doc = {"key": key, "flag": flag, "layer": layer, "traffic_percentage": traffic,
           "hypothesis": "blue converts better", "owner": "ana",
           "variants": [{"variant": "red", "weight": 1, "is_control": True},
                        {"variant": "blue", "weight": 1}]}
    doc.update(extra)
    return doc


def assign(client, sdk, key, unit, **attributes):
    response = client.post(f"{V}/experiments/{key}/assign", json={"context": {"key": unit, **attributes}},
                           headers=sdk)
    assert response.status_code == 200, response.json
    return response.json


def test_layer_crud_and_allocation_map(api):
    layer = api("post", "/layers", {"key": "main", "name": "Main"}, 201)
    assert layer["salt"] == "layer:main" and layer["free_percentage"] == 100.0  # its own hash namespace
    api("post", "/layers", {"key": "main"}, 409)
    colour_flag(api)
    api("post", "/experiments", experiment(traffic=40), 201)
    api("post", "/experiments/exp-a/start")
    shown = api("get", "/layers/main")
    assert shown["allocations"] == [{"experiment": "exp-a", "status": "running",
                                     "ranges": [[0, 4000]], "percentage": 40.0}]
    assert shown["free_percentage"] == 60.0 and shown["free_ranges"] == [[4000, 10000]]
    assert api("delete", "/layers/main", status=409)["errors"]["experiments"] == ["exp-a"]
    version = api("get", "/layers/main")["version"]
    assert api("patch", "/layers/main", {"name": "x"}, 428)["errors"] == {"version": ["required"]}
    assert "salt" in api("patch", "/layers/main", {"salt": "new", "version": version}, 409)["errors"]
    assert api("patch", "/layers/main", {"name": "n", "version": version + 5}, 409)
    assert api("patch", "/layers/main", {"name": "Renamed", "version": version})["name"] == "Renamed"
    api("post", "/experiments/exp-a/stop", {"outcome": "terminated"})
    assert api("get", "/layers/main")["free_percentage"] == 100.0
    api("delete", "/layers/main", status=204)
    api("get", "/layers/main", status=404)


def test_create_places_rule_and_validates(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("patch", "/flags/colour", {"version": 1, "rules": [
        {"id": "qa", "kind": "force", "variant": "green",
         "conditions": [{"attribute": "qa", "operator": "eq", "values": [True]}]}]})
    created = api("post", "/experiments", experiment(rule_position=1, targeting=[
        {"attribute": "country", "operator": "in", "values": ["US"]}]), 201)
    assert created["status"] == "draft" and created["version"] == 1
    assert created["significance_level"] == 0.05 and created["multiple_testing"] == "holm"
    rules = api("get", "/flags/colour")["rules"]
    assert [r["id"] for r in rules] == ["qa", "exp-exp-a"]
    assert rules[1]["conditions"][0]["values"] == ["US"]
    errors = [
        (experiment("x", layer="nope"), "layer"),
        (experiment("x", variants=[{"variant": "red", "is_control": True}]), "variants"),
        (experiment("x", variants=[{"variant": "red"}, {"variant": "blue"}]), "variants"),
        (experiment("x", variants=[{"variant": "red", "is_control": True}, {"variant": "pink"}]),
         "variants.1.variant"),
        (experiment("x", traffic=0), "traffic_percentage"),
        (experiment("x", traffic=100.001), "traffic_percentage"),
        (experiment("x", targeting=[{"attribute": "a", "operator": "matches", "values": ["("]}]),
         "targeting.0.values"),
        (experiment("x", allowlist={"u": "green"}), "allowlist.u"),
        (experiment("x", start_at="2026-02-01T00:00:00Z", end_at="2026-01-01T00:00:00Z"), "end_at"),
        (experiment("x", flag="brand-new"), "variants.0.value"),
        (experiment("x", significance_level=0.7), "significance_level"),
    ]
    for doc, field in errors:
        body = api("post", "/experiments", doc, 422)
        assert field in str(body["errors"]), (field, body)
    api("post", "/experiments", experiment(), 409)


def test_new_flag_is_created_from_variant_values(api):
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", experiment("price", flag="price-test", variants=[
        {"variant": "low", "value": 9.99, "is_control": True}, {"variant": "high", "value": 12.5}]), 201)
    flag = api("get", "/flags/price-test")
    assert flag["type"] == "number" and flag["variants"] == {"low": 9.99, "high": 12.5}
    assert flag["default_variant"] == "low" and flag["rules"][0]["kind"] == "experiment"


def test_lifecycle_state_machine(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(), 201)
    for action in ("pause", "resume", "stop"):
        body = api("post", f"/experiments/exp-a/{action}", {} if action == "stop" else None, 409)
        assert body["errors"]["status"] == ["draft"] and "draft" in body["message"]
    assert api("post", "/experiments/exp-a/start")["status"] == "running"
    api("post", "/experiments/exp-a/start", status=409)
    api("post", "/experiments/exp-a/resume", status=409)
    assert api("post", "/experiments/exp-a/pause")["status"] == "paused"
    api("post", "/experiments/exp-a/pause", status=409)
    assert api("post", "/experiments/exp-a/resume")["status"] == "running"
    api("post", "/experiments/exp-a/stop", {"outcome": "nope"}, 422)
    stopped = api("post", "/experiments/exp-a/stop", {"outcome": "completed"})
    assert stopped["status"] == "completed" and stopped["ranges"] == [] and stopped["ended_at"]
    for action in ("start", "pause", "resume"):
        api("post", f"/experiments/exp-a/{action}", status=409)
    api("delete", "/experiments/exp-a", status=409)
    revisions = api("get", "/experiments/exp-a/revisions")["items"]
    assert [r["action"] for r in revisions] == ["stop", "resume", "pause", "start", "create"]
    assert {"path": "status", "op": "replace", "before": "running", "after": "completed"} in revisions[0]["diff"]
    audit = api("get", "/audit?target_type=experiment")["items"]
    assert audit[0]["action"] == "experiment.stop" and audit[0]["actor"] == "key:test-admin"


def test_start_conflicts(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/flags", boolean_flag("other"), 201)
    api("post", "/experiments", experiment("a", traffic=70), 201)
    api("post", "/experiments", experiment("b", flag="colour", traffic=10), 201)
    api("post", "/experiments", experiment("c", flag="other", traffic=40, variants=[
        {"variant": "off", "is_control": True}, {"variant": "on"}]), 201)
    api("post", "/experiments/a/start")
    same_flag = api("post", "/experiments/b/start", status=409)
    assert "active experiment" in same_flag["message"]
    too_big = api("post", "/experiments/c/start", status=409)
    assert "30.00% free" in too_big["message"]
    api("patch", "/experiments/c", {"traffic_percentage": 30, "version": 1})
    assert api("post", "/experiments/c/start")["ranges"] == [[7000, 10000]]
    api("post", "/experiments/c/stop", {})
    past = api("post", "/experiments", experiment("d", flag="other", traffic=10, end_at="2020-01-01T00:00:00Z",
                                                  variants=[{"variant": "off", "is_control": True},
                                                            {"variant": "on"}]), 422)
    assert "could never run" in past["errors"]["json"]["end_at"][0]  # was created, then never startable


def test_draft_delete_removes_rule(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(), 201)
    api("delete", "/experiments/exp-a", status=204)
    assert api("get", "/flags/colour")["rules"] == []
    api("get", "/experiments/exp-a", status=404)


def test_flag_api_cannot_edit_managed_rules(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(), 201)
    flag = api("get", "/flags/colour")
    removed = api("put", "/flags/colour", {**{k: flag[k] for k in ("type", "variants", "default_variant")},
                                           "rules": [], "version": flag["version"]}, 422)
    assert "managed" in removed["message"]
    moved = [{"id": "first", "kind": "force", "variant": "green", "conditions": []}, *flag["rules"]]
    assert api("patch", "/flags/colour", {"rules": moved, "version": flag["version"]})["rules"][1]["kind"] == "experiment"
    assert api("delete", "/flags/colour", status=409)["errors"]["experiments"] == ["exp-a"]
    api("post", "/flags", boolean_flag("sneaky", rules=[
        {"kind": "experiment", "params": {"experiment": "exp-a"}}]), 422)


def test_assign_is_sticky_and_records_the_first_exposure_once(api, client, sdk):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(traffic=100, allowlist={"qa-1": "blue"}, blocklist=["bot"]), 201)
    api("post", "/experiments/exp-a/start")
    first = assign(client, sdk, "exp-a", "u1")
    assert first["in_experiment"] and first["variant"] in ("red", "blue") and not first["sticky"]
    again = assign(client, sdk, "exp-a", "u1")
    assert again["variant"] == first["variant"] and again["sticky"]
    units = client.get(f"{V}/experiments/user/u1", headers=sdk).json["assignments"]
    assert [(a["experiment"], a["variant"]) for a in units] == [("exp-a", first["variant"])]
    forced = assign(client, sdk, "exp-a", "qa-1")
    assert forced["variant"] == "blue" and forced["reason"] == "TARGETING_MATCH"
    assert client.get(f"{V}/experiments/user/qa-1", headers=sdk).json["assignments"] == []
    blocked = assign(client, sdk, "exp-a", "bot")
    assert blocked == {"experiment": "exp-a", "variant": None, "value": None, "in_experiment": False,
                       "reason": "DEFAULT", "sticky": False}
    through_evaluate = client.post(f"{V}/evaluate", json={"context": {"key": "u1"}}, headers=sdk).json
    assert through_evaluate["flags"]["colour"]["variant"] == first["variant"]
    assert through_evaluate["flags"]["colour"]["experiment"] == "exp-a"
    assert client.post(f"{V}/experiments/nope/assign", json={"context": {}}, headers=sdk).status_code == 404


def test_exclusion_and_filtering_through_the_api(api, client, sdk):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/flags", boolean_flag("checkout"), 201)
    api("post", "/experiments", experiment("a", traffic=50, targeting=[
        {"attribute": "country", "operator": "eq", "values": ["US"]}]), 201)
    api("post", "/experiments", experiment("b", flag="checkout", traffic=50, variants=[
        {"variant": "off", "is_control": True}, {"variant": "on"}]), 201)
    api("post", "/experiments/a/start")
    api("post", "/experiments/b/start")
    in_a = in_b = 0
    for i in range(1200):
        context = {"key": f"user-{i}", "country": "US" if i % 2 else "NL"}
        flags = client.post(f"{V}/evaluate", json={"context": context}, headers=sdk).json["flags"]
        a, b = flags["colour"].get("experiment"), flags["checkout"].get("experiment")
        assert not (a and b)
        assert not (a and context["country"] != "US")
        in_a, in_b = in_a + bool(a), in_b + bool(b)
    assert 0.44 < in_b / 1200 < 0.56 and 0.19 < in_a / 1200 < 0.31


def test_shrink_and_reallocate_keeps_assigned_units(api, client, sdk):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/flags", boolean_flag("checkout"), 201)
    api("post", "/experiments", experiment("a", traffic=60), 201)
    api("post", "/experiments/a/start")
    before = {f"u{i}": assign(client, sdk, "a", f"u{i}") for i in range(300)}
    assigned = {u: r["variant"] for u, r in before.items() if r["in_experiment"]}
    assert 130 < len(assigned) < 230
    shrunk = api("patch", "/experiments/a", {"traffic_percentage": 10, "version": 2,
                                             "variants": [{"variant": "red", "weight": 9, "is_control": True},
                                                          {"variant": "blue", "weight": 1}]})
    assert shrunk["ranges"] == [[0, 1000]]
    api("post", "/experiments", experiment("c", flag="checkout", traffic=90, variants=[
        {"variant": "off", "is_control": True}, {"variant": "on"}]), 201)
    assert api("post", "/experiments/c/start")["ranges"] == [[1000, 10000]]
    for unit, variant in assigned.items():
        assert assign(client, sdk, "a", unit)["variant"] == variant
        assert not assign(client, sdk, "c", unit)["in_experiment"]
    fresh = [assign(client, sdk, "a", f"new-{i}")["in_experiment"] for i in range(400)]
    assert sum(fresh) < 80  # new units follow the 10 % allocation


def test_pause_keeps_enrolled_units_and_stops_new_ones(api, client, sdk):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(traffic=100), 201)
    api("post", "/experiments/exp-a/start")
    enrolled = assign(client, sdk, "exp-a", "early")
    api("post", "/experiments/exp-a/pause")
    assert assign(client, sdk, "exp-a", "early")["variant"] == enrolled["variant"]
    assert not assign(client, sdk, "exp-a", "late")["in_experiment"]
    api("post", "/experiments/exp-a/resume")
    assert assign(client, sdk, "exp-a", "late")["in_experiment"]
    api("post", "/experiments/exp-a/stop", {"outcome": "terminated"})
    assert not assign(client, sdk, "exp-a", "early")["in_experiment"]


def test_time_window(api, client, sdk, runtime):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    now = datetime.now(timezone.utc)
    api("post", "/experiments", experiment(traffic=100, start_at=(now + timedelta(days=1)).isoformat(),
                                           end_at=(now + timedelta(days=2)).isoformat()), 201)
    api("post", "/experiments/exp-a/start")
    assert not assign(client, sdk, "exp-a", "u1")["in_experiment"]
    runtime.clock = lambda: now + timedelta(days=1, hours=1)
    assert assign(client, sdk, "exp-a", "u1")["in_experiment"]
    runtime.clock = lambda: now + timedelta(days=3)
    assert not assign(client, sdk, "exp-a", "u2")["in_experiment"]
    assert assign(client, sdk, "exp-a", "u1")["in_experiment"]  # enrolled units keep their variant


def test_release_promotes_and_ramps(api, client, sdk):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(traffic=50, targeting=[
        {"attribute": "country", "operator": "eq", "values": ["US"]}]), 201)
    api("post", "/experiments/exp-a/start")
    api("post", "/experiments/exp-a/release", {"variant": "pink", "percentage": 10}, 422)
    api("post", "/experiments/exp-a/release", {"variant": "blue", "percentage": 101}, 422)
    released = api("post", "/experiments/exp-a/release", {"variant": "blue", "percentage": 20})
    assert released["status"] == "completed" and released["ranges"] == []
    assert api("get", "/layers/main")["free_percentage"] == 100.0
    rules = api("get", "/flags/colour")["rules"]
    assert [(r["id"], r["kind"], r["percentage"]) for r in rules] == [("rel-exp-a", "release", 20)]

    def served():
        out = set()
        for i in range(600):
            flags = client.post(f"{V}/evaluate", json={"context": {"key": f"u{i}", "country": "US"}},
                                headers=sdk).json["flags"]
            if flags["colour"]["variant"] == "blue":
                out.add(i)
        return out

    low = served()
    api("post", "/experiments/exp-a/release", {"variant": "blue", "percentage": 70})
    high = served()
    assert low <= high and 0.6 < len(high) / 600 < 0.8 and 0.12 < len(low) / 600 < 0.28
    outside = client.post(f"{V}/evaluate", json={"context": {"key": "u1", "country": "NL"}}, headers=sdk).json
    assert outside["flags"]["colour"]["variant"] == "red"
    api("post", "/experiments/exp-a/stop", {}, 409)


def test_listing_filters(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment("a"), 201)
    api("post", "/experiments", experiment("b", traffic=10), 201)
    api("post", "/experiments/a/start")
    assert [e["key"] for e in api("get", "/experiments?status=running")["items"]] == ["a"]
    assert api("get", "/experiments?layer=main")["total"] == 2
    api("get", "/experiments?status=bogus", status=422)
    snapshot = api("get", "/sdk/snapshot")
    assert [e["key"] for e in snapshot["experiments"]] == ["a", "b"]
    assert snapshot["layers"] == [{"key": "main", "salt": "layer:main"}]


def test_explain_shows_the_raw_numbers(api, client, sdk):
    import mmh3
    api("post", "/layers", {"key": "main", "salt": "main-salt"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(traffic=50), 201)
    api("post", "/experiments/exp-a/start")
    inside = next(f"u{i}" for i in range(100) if assign(client, sdk, "exp-a", f"u{i}")["in_experiment"])
    body = client.post(f"{V}/explain", json={"flag": "colour", "context": {"key": inside}}, headers=sdk).json
    step = next(s for s in body["steps"] if s.get("kind") == "experiment")
    assert step["layer_bucket"] == mmh3.hash(f"main-salt:{inside}", 0, signed=False) % 10000
    assert step["bucket_owner"] == "exp-a" and step["sticky_variant"] == body["result"]["variant"]
    assert body["result"]["experiment"] == "exp-a" and "mismatch" not in body
    missing = client.post(f"{V}/explain", json={"flag": "nope", "context": {}}, headers=sdk).json
    assert missing["result"]["error_code"] == "FLAG_NOT_FOUND"
    assert client.post(f"{V}/explain", json={"context": {}}, headers=sdk).status_code == 422


def test_sdk_snapshot_evaluates_experiments_like_the_server(api, client, sdk):
    from flagship import Snapshot
    from flagship.flags.evaluate import EvalState

    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(traffic=60, targeting=[
        {"attribute": "country", "operator": "in", "values": ["US", "NL"]}]), 201)
    api("post", "/experiments/exp-a/start")
    snapshot = Snapshot.from_dict(client.get(V + "/sdk/snapshot", headers=sdk).json)
    state = EvalState(now=datetime.now(timezone.utc).timestamp())
    for i in range(300):
        context = {"key": f"user-{i}", "country": ["US", "NL", "DE"][i % 3]}
        local = snapshot.evaluate("colour", context, state)  # no sticky record yet
        server = client.post(V + "/evaluate", json={"context": context, "flags": ["colour"]},
                             headers=sdk).json["flags"]["colour"]
        assert (local.variant, local.reason, local.experiment) == (
            server["variant"], server["reason"], server.get("experiment"))


def test_referenced_metrics_must_exist(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    body = api("post", "/experiments", experiment(success_metrics=["ghost"]), 422)
    assert "success_metrics.0" in body["errors"]["json"] and "ghost" in body["message"]
    body = api("post", "/experiments", experiment(guardrail_metrics=[{"metric": "ghost", "margin": 0.1}]), 422)
    assert "guardrail_metrics.0.metric" in body["errors"]["json"]
    api("post", "/metrics", {"key": "ghost", "event": "boo", "kind": "count"}, 201)
    api("post", "/experiments", experiment(success_metrics=["ghost"]), 201)
    assert api("delete", "/metrics/ghost", status=409)["errors"]["experiments"] == ["exp-a"]


def test_a_flag_cannot_lose_the_variants_or_type_an_experiment_splits_on(api, client, sdk):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(traffic=100), 201)

    def patch(change, status):
        version = api("get", "/flags/colour")["version"]
        return api("patch", "/flags/colour", {**change, "version": version}, status)

    two = {"variants": {"red": "#f00", "green": "#0f0"}}
    # a draft names its variants too: starting it later would split on a missing one
    assert "'blue' is used by experiment 'exp-a'" in patch(two, 409)["errors"]["variants"][0]
    api("post", "/experiments/exp-a/start")
    refused = patch(two, 409)
    assert "exp-a" in refused["message"] and "running" in refused["message"]
    number = {"type": "number", "variants": {"red": 1, "blue": 2, "green": 3}}
    assert patch(number, 409)["errors"]["type"] == ["used by experiment 'exp-a'"]
    # nothing changed: units still split over both variants
    seen = {assign(client, sdk, "exp-a", f"u{i}")["variant"] for i in range(40)}
    assert seen == {"red", "blue"}
    # what the experiment does not use may change; values stay editable
    assert "teal" in patch({"variants": {"red": "#f00", "blue": "#00f", "green": "#0f0",
                                         "teal": "#0ff"}}, 200)["variants"]
    api("post", "/experiments/exp-a/stop", {"outcome": "completed"})
    assert "blue" not in patch(two, 200)["variants"]


def test_experiment_metadata_is_bounded(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    error = api("post", "/experiments", experiment(metadata={"notes": "x" * 100_000}), 422)
    assert error["errors"]["json"] == {"metadata": ["must be at most 16,384 bytes of JSON"]}
    assert api("post", "/experiments", experiment(metadata={"notes": "x" * 10_000}), 201)["metadata"]
