"""Rollouts through the API and the periodic round, on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from flagship import jobs
from flagship.experiments.ingest import ingest
from flagship.rollout.evaluation import evaluate_all
from flagship.rollout.store import RolloutEvaluationRecord, TransitionRecord
from flagship.store import OutboxRecord

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
INTERVAL = 60
POLICY = {
    "evaluation_interval": INTERVAL, "min_consecutive_ok": 1,
    "steps": [{"percent": 10, "min_duration": 60, "min_units": 30},
              {"percent": 25, "min_duration": 60, "min_units": 30},
              {"percent": 50, "min_duration": 60, "min_units": 30}],
    "completion": {"percent": 100, "then": "collapse"},
    "no_data": {"grace": 3600, "action": "hold"},
    "checks": [{"id": "errors", "type": "metric_regression", "metric": "errors", "min_units": 30,
                "on_fail": "rollback"}],
}


@pytest.fixture
def setup(api, runtime):
    runtime.config["ROLLOUT_INTERVAL"] = INTERVAL
    clock = {"now": T0}
    runtime.clock = lambda: clock["now"]
    api("post", "/flags", {"key": "checkout", "type": "boolean", "variants": {"on": True, "off": False},
                           "default_variant": "off",
                           "rules": [{"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 0}]}, 201)
    api("post", "/metrics", {"key": "errors", "event": "error", "kind": "conversion",
                             "direction": "decrease"}, 201)
    api("post", "/rollout-templates", {"key": "guarded", "policy": POLICY}, 201)
    return clock


def move(runtime, clock, seconds):
    clock["now"] = clock["now"] + timedelta(seconds=seconds)


def traffic(runtime, clock, start, count, error_rate=None):
    """Units evaluate the flag (as an SDK would), send their exposure and maybe an error."""
    snapshot = runtime.snapshots.get("production").snapshot
    items = []
    for i in range(start, start + count):
        unit = f"u{i}"
        result = snapshot.evaluate("checkout", {"key": unit})
        if result.arm is None:
            continue
        items.append({"event_id": f"x-{unit}-{result.experiment}", "unit": unit, "event": "$exposure",
                      "experiment": result.experiment, "variant": result.arm,
                      "timestamp": clock["now"].isoformat()})
        rate = (error_rate or {}).get(result.arm, 0.0)
        if rate and (i * 7919 % 1000) / 1000 < rate:
            items.append({"event_id": f"e-{unit}", "unit": unit, "event": "error",
                          "timestamp": (clock["now"] + timedelta(seconds=1)).isoformat()})
    outcome = ingest(runtime, items, now=clock["now"] + timedelta(seconds=2))
    assert not outcome.rejected, outcome.rejected[:2]
    return len(items)


def rule(api):
    return next(r for r in api("get", "/flags/checkout")["rules"] if r["id"] == "ramp")


def round_(runtime, clock):
    return jobs.periodic_round(runtime, jobs.slot_of(runtime, clock["now"]))


def test_a_rollout_advances_through_its_steps_and_completes(api, runtime, setup):
    clock = setup
    created = api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "template": "guarded"}, 201)
    assert created["status"] == "draft" and created["policy"]["steps"][0]["percent"] == 10
    started = api("post", f"/rollouts/{created['id']}/start", {})
    assert started["status"] == "running" and started["percentage"] == 10
    ramp = rule(api)
    assert ramp["percentage"] == 10 and ramp["params"] == {
        "rollout": created["id"], "subject": f"rollout:{created['id']}:1", "control": True}
    api("put", "/flags/checkout", {**api("get", "/flags/checkout"), "rules": [], "version": 3}, 422)
    for step, percentage in ((0, 25), (1, 50), (2, 100)):
        traffic(runtime, clock, step * 1000, 1000, {"treatment": 0.02, "control": 0.02})
        move(runtime, clock, INTERVAL + 1)
        report = round_(runtime, clock)
        assert report["rollouts"] == {"complete" if percentage == 100 else "advance": 1}, report
        assert rule(api)["percentage"] == percentage
    done = api("get", f"/rollouts/{created['id']}")
    assert done["status"] == "completed" and "params" not in rule(api)  # collapsed: plain rule
    assert [t["action"] for t in done["transitions"]] == ["start", "advance", "advance", "complete"]
    assert done["latest_evaluation"]["results"][0]["check_id"] == "errors"


def test_a_regression_rolls_back_and_a_restart_is_a_new_attempt(api, runtime, setup):
    clock = setup
    rollout = api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "template": "guarded"}, 201)
    api("post", f"/rollouts/{rollout['id']}/start", {})
    traffic(runtime, clock, 0, 8000, {"treatment": 0.6, "control": 0.02})
    move(runtime, clock, 5)
    report = round_(runtime, clock)
    assert report["rollouts"] == {"rollback": 1}, report
    body = api("get", f"/rollouts/{rollout['id']}")
    assert body["status"] == "rolled_back" and rule(api)["percentage"] == 0
    evidence = body["transitions"][-1]["evidence"][0]
    assert evidence["outcome"] == "fail" and evidence["evidence"]["method"] == "mSPRT"
    assert evidence["evidence"]["ci"][0] > 0  # the whole interval is on the harmful side
    # rollback is terminal: later rounds do nothing
    move(runtime, clock, INTERVAL)
    assert round_(runtime, clock)["rollouts"] == {}
    restarted = api("post", f"/rollouts/{rollout['id']}/restart", {})
    assert (restarted["attempt"], restarted["status"], restarted["percentage"]) == (2, "running", 10)
    assert rule(api)["params"]["subject"] == f"rollout:{rollout['id']}:2"
    with runtime.db.engine.connect() as conn:
        events = [r[0] for r in conn.execute(sa.select(OutboxRecord.type).order_by(OutboxRecord.id))]
    assert "rollout.rolled_back" in events and events.count("rollout.started") == 2


def test_a_slot_is_evaluated_once_even_by_concurrent_appliers(api, runtime, setup):
    clock = setup
    rollout = api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "template": "guarded"}, 201)
    api("post", f"/rollouts/{rollout['id']}/start", {})
    traffic(runtime, clock, 0, 1000)
    move(runtime, clock, INTERVAL + 1)
    jobs.aggregate(runtime)
    slot = jobs.slot_of(runtime, clock["now"])
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(evaluate_all(runtime, slot))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes, key=str) == sorted([{"advance": 1}, {"skipped": 1}, {"skipped": 1}], key=str)
    assert evaluate_all(runtime, slot) == {"skipped": 1}  # the same slot again: nothing
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(RolloutEvaluationRecord)).scalar()
        moves = conn.execute(sa.select(sa.func.count()).select_from(TransitionRecord)
                             .where(TransitionRecord.action == "advance")).scalar()
    assert (rows, moves) == (1, 1)


def test_manual_actions_take_effect_in_the_request(api, runtime, setup):
    rollout = api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "policy": POLICY}, 201)
    rid = rollout["id"]
    api("post", f"/rollouts/{rid}/pause", {}, 409)  # a draft cannot pause
    api("post", f"/rollouts/{rid}/start", {})
    paused = api("post", f"/rollouts/{rid}/pause", {})
    assert paused["status"] == "paused" and rule(api)["percentage"] == 10
    api("post", f"/rollouts/{rid}/resume", {})
    advanced = api("post", f"/rollouts/{rid}/advance", {})
    assert advanced["percentage"] == 25 and rule(api)["percentage"] == 25
    api("post", f"/rollouts/{rid}/dismiss", {"check_id": "nope"}, 422)
    api("post", f"/rollouts/{rid}/dismiss", {"check_id": "errors"})
    api("post", f"/rollouts/{rid}/bogus", {}, 422)
    api("post", f"/rollouts/{rid}/rollback", {"version": 1}, 409)  # stale version
    rolled = api("post", f"/rollouts/{rid}/rollback", {})
    assert rolled["status"] == "rolled_back" and rule(api)["percentage"] == 0
    snapshot = api("get", "/sdk/snapshot")
    assert next(r for r in snapshot["flags"][0]["rules"] if r["id"] == "ramp")["percentage"] == 0
    actions = [a["action"] for a in api("get", "/audit?target_type=rollout")["items"]]
    assert actions[:3] == ["rollout.rollback", "rollout.dismiss", "rollout.advance"]


def test_creation_is_validated(api, runtime, setup):
    api("post", "/rollouts", {"flag": "nope", "rule_id": "ramp", "policy": POLICY}, 422)
    api("post", "/rollouts", {"flag": "checkout", "rule_id": "nope", "policy": POLICY}, 422)
    api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "template": "nope"}, 422)
    bad = api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp",
                                    "policy": {**POLICY, "checks": [{"id": "x", "type": "nope"}]}}, 422)
    assert "policy.checks.0.type" in bad["errors"]["json"]
    missing = {**POLICY, "checks": [{"id": "x", "type": "metric_threshold", "metric": "nope", "max": 1}]}
    assert "policy.checks.0.metric" in api("post", "/rollouts", {
        "flag": "checkout", "rule_id": "ramp", "policy": missing}, 422)["errors"]["json"]
    api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "policy": POLICY}, 201)
    api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "policy": POLICY}, 409)


def test_the_lease_lets_one_process_run_the_round(runtime, setup):
    assert jobs.take_lease(runtime, "round", "a", 60) is True
    assert jobs.take_lease(runtime, "round", "b", 60) is False
    assert jobs.take_lease(runtime, "round", "a", 60) is True  # renewal
    setup["now"] += timedelta(seconds=61)
    assert jobs.take_lease(runtime, "round", "b", 60) is True  # expired: b takes over


def test_a_pending_approval_is_reminded_without_a_new_transition(api, runtime, setup):
    clock = setup
    policy = {"evaluation_interval": INTERVAL, "min_consecutive_ok": 1, "reminder_interval": "1h",
              "steps": [{"percent": 10, "min_duration": 60, "min_units": 0, "approval": True},
                        {"percent": 50, "min_duration": 60, "min_units": 0}]}
    created = api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "policy": policy}, 201)
    api("post", f"/rollouts/{created['id']}/start")

    def events(kind):
        with runtime.db.session() as session:
            return session.scalars(sa.select(OutboxRecord).where(OutboxRecord.type == kind)).all()

    def transitions():
        with runtime.db.session() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(TransitionRecord)
                                  .where(TransitionRecord.rollout_id == created["id"]))

    for _ in range(3):  # the step's minute passes, then it waits for a human
        move(runtime, clock, INTERVAL)
        round_(runtime, clock)
    assert len(events("approval.required")) == 1 and not events("rollout.reminder")
    before = transitions()
    move(runtime, clock, 3600)
    round_(runtime, clock)
    reminders = events("rollout.reminder")
    assert len(reminders) == 1 and transitions() == before  # told again, nothing transitioned
    assert reminders[0].payload["rollout"]["id"] == created["id"]
    move(runtime, clock, INTERVAL)
    round_(runtime, clock)
    assert len(events("rollout.reminder")) == 1  # not again within the hour


def test_a_template_naming_a_missing_metric_is_refused_when_saved(api, setup):
    """It used to be saved, then refused by every rollout created from it."""
    bad = {**POLICY, "checks": [{**POLICY["checks"][0], "metric": "checkout-errors"}]}
    error = api("post", "/rollout-templates", {"key": "other", "policy": bad}, 422)
    assert error["errors"]["json"] == {"policy.checks.0.metric": [
        "no metric 'checkout-errors': create it under /api/v1/metrics first"]}
    version = api("get", "/rollout-templates/guarded")["version"]
    api("put", "/rollout-templates/guarded", {"version": version, "policy": bad}, 422)
    api("get", "/rollout-templates/other", status=404)
