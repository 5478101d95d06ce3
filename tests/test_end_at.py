"""`end_at` ends an experiment (issue 8, "`end_at` does not end anything"): evaluation stops
enrolling new units the moment it passes, enrolled units keep their variant until the
periodic job completes the experiment and frees its buckets."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flagship import jobs
from flagship.experiments import service

V = "/api/v1"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
END = T0 + timedelta(days=1)


def assign(client, sdk, unit, key="exp"):
    response = client.post(f"{V}/experiments/{key}/assign", json={"context": {"key": unit}}, headers=sdk)
    assert response.status_code == 200, response.json
    return response.json


def evaluate(client, sdk, unit):
    response = client.post(f"{V}/evaluate", json={"context": {"key": unit}, "flags": ["f"]}, headers=sdk)
    assert response.status_code == 200, response.json
    return response.json["flags"]["f"]


def setup_experiment(api, runtime):
    runtime.clock = lambda: T0
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "exp", "flag": "f", "layer": "main", "traffic_percentage": 100,
                                 "end_at": END.isoformat(),
                                 "variants": [{"variant": "a", "value": 1, "is_control": True},
                                              {"variant": "b", "value": 2}]}, 201)
    assert api("post", "/experiments/exp/start")["ranges"] == [[0, 10000]]


def test_no_new_units_after_end_at_and_enrolled_units_keep_their_variant(api, client, sdk, runtime):
    setup_experiment(api, runtime)
    enrolled = {f"early-{i}": assign(client, sdk, f"early-{i}") for i in range(20)}
    assert all(r["in_experiment"] for r in enrolled.values())
    assert {r["variant"] for r in enrolled.values()} == {"a", "b"}

    runtime.clock = lambda: END - timedelta(seconds=1)  # the last second still enrols
    assert assign(client, sdk, "just-in-time")["in_experiment"]

    for now in (END, END + timedelta(hours=5)):  # at end_at and after it: no one new
        runtime.clock = lambda now=now: now
        for i in range(20):
            late = assign(client, sdk, f"late-{i}")
            assert not late["in_experiment"] and late["variant"] is None, late
            flag = evaluate(client, sdk, f"late-{i}")
            assert "experiment" not in flag and flag["variant"] == "a", flag  # the default
        for unit, first in enrolled.items():
            again = assign(client, sdk, unit)
            assert again["in_experiment"] and again["variant"] == first["variant"] and again["sticky"]
            flag = evaluate(client, sdk, unit)
            assert flag["experiment"] == "exp" and flag["variant"] == first["variant"]
    # the evaluation stopped; the state changes only when the job runs
    assert api("get", "/experiments/exp")["status"] == "running"
    for i in range(20):  # and nothing was recorded for the late units
        assert client.get(f"{V}/experiments/user/late-{i}", headers=sdk).json["assignments"] == []


def test_the_schedule_completes_ended_experiments_once(api, client, sdk, runtime):
    setup_experiment(api, runtime)
    assign(client, sdk, "early")
    assert service.complete_ended(runtime, END - timedelta(seconds=1)) == []  # not before its end
    runtime.clock = lambda: END - timedelta(seconds=1)
    assert jobs.complete_ended(runtime) == []
    assert api("get", "/experiments/exp")["status"] == "running"
    assert api("get", "/layers/main")["free_percentage"] == 0.0

    runtime.clock = lambda: END + timedelta(minutes=3)
    assert jobs.complete_ended(runtime) == ["exp"]
    shown = api("get", "/experiments/exp")
    assert shown["status"] == "completed" and shown["ranges"] == []
    assert shown["ended_at"] == (END + timedelta(minutes=3)).isoformat()
    layer = api("get", "/layers/main")
    assert layer["allocations"] == [] and layer["free_percentage"] == 100.0
    assert layer["free_ranges"] == [[0, 10000]]
    audit = api("get", "/audit?target_type=experiment")["items"]
    assert (audit[0]["action"], audit[0]["actor"], audit[0]["target"]) == (
        "experiment.complete", "system:schedule", "exp")
    assert audit[0]["before"]["status"] == "running" and audit[0]["after"]["status"] == "completed"
    revisions = api("get", "/experiments/exp/revisions")["items"]
    assert [(r["action"], r["actor"]) for r in revisions[:2]] == [("complete", "system:schedule"),
                                                                   ("start", "key:test-admin")]

    # idempotent: a second run (and the service called directly) changes nothing
    assert jobs.complete_ended(runtime) == []
    assert service.complete_ended(runtime, END + timedelta(days=1)) == []
    assert api("get", "/experiments/exp")["version"] == shown["version"]
    assert len(api("get", "/audit?target_type=experiment")["items"]) == len(audit)
    assert not assign(client, sdk, "early")["in_experiment"]  # completed: no one is in it

    # the freed buckets can be claimed in full by the next experiment of the layer
    api("post", "/experiments", {"key": "next", "flag": "g", "layer": "main", "traffic_percentage": 100,
                                 "variants": [{"variant": "x", "value": 1, "is_control": True},
                                              {"variant": "y", "value": 2}]}, 201)
    assert api("post", "/experiments/next/start")["ranges"] == [[0, 10000]]


def test_only_active_experiments_past_their_end_are_completed(api, runtime):
    runtime.clock = lambda: T0
    api("post", "/layers", {"key": "main"}, 201)

    def create(key, flag, traffic, end):
        api("post", "/experiments", {"key": key, "flag": flag, "layer": "main", "traffic_percentage": traffic,
                                     "end_at": end.isoformat() if end else None,
                                     "variants": [{"variant": "a", "value": 1, "is_control": True},
                                                  {"variant": "b", "value": 2}]}, 201)

    create("ends-soon", "f1", 20, END)
    create("paused", "f2", 20, END)
    create("ends-later", "f3", 20, END + timedelta(days=7))
    create("open", "f4", 20, None)
    create("draft", "f5", 20, END)
    for key in ("ends-soon", "paused", "ends-later", "open"):
        api("post", f"/experiments/{key}/start")
    api("post", "/experiments/paused/pause")
    runtime.clock = lambda: END + timedelta(hours=1)
    assert sorted(jobs.complete_ended(runtime)) == ["ends-soon", "paused"]
    status = {e["key"]: e["status"] for e in api("get", "/experiments")["items"]}
    assert status == {"ends-soon": "completed", "paused": "completed", "ends-later": "running",
                      "open": "running", "draft": "draft"}
    assert api("get", "/layers/main")["free_percentage"] == 60.0
