"""Scheduled flag changes: applied at their time through the flag service as system:schedule,
failures recorded (never raised), validation with 422s naming the field, one apply per change."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from flagship.flags.schedule import apply_due
from tests.conftest import boolean_flag, make_app

T0 = datetime(2030, 5, 1, 9, 0, tzinfo=timezone.utc)
AT = T0 + timedelta(hours=1)
RAMP = {"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 10}


@pytest.fixture
def app(database_url: str) -> Any:
    """The app with the schedule endpoints (registered here until the app registers them)."""
    from flagship.rollout.api import schedules

    app = make_app(database_url)
    if schedules.blp.name not in app.blueprints:
        app.extensions["flask-smorest"]["apis"][""]["ext_obj"].register_blueprint(schedules.blp)
    yield app
    app.extensions["flagship"].db.dispose()


@pytest.fixture
def clock(runtime: Any) -> Any:
    """Set the runtime's clock: clock(t)."""
    def set_to(when: datetime) -> None:
        runtime.clock = lambda: when
    set_to(T0)
    return set_to


def schedule(api: Any, change: dict[str, Any], at: datetime = AT, status: int = 201,
             path: str = "/flags/new-checkout/schedule", **extra: Any) -> Any:
    return api("post", path, {"at": at.isoformat(), "change": change, **extra}, status)


def test_due_changes_are_applied_at_their_time_and_audited_as_system_schedule(api, runtime, clock):
    api("post", "/flags", boolean_flag(enabled=False, rules=[RAMP]), 201)
    on = schedule(api, {"action": "enable"})
    ramp = schedule(api, {"action": "set_percentage", "rule_id": "ramp", "percentage": 50},
                    at=AT + timedelta(hours=1))
    assert on["status"] == "pending" and on["created_by"] == "key:test-admin"
    assert ramp["change"] == {"action": "set_percentage", "rule_id": "ramp", "percentage": 50}
    assert apply_due(runtime) == []  # nothing is due yet
    clock(AT)
    applied = apply_due(runtime)
    assert [(a["id"], a["status"], a["outcome"]) for a in applied] == [(on["id"], "applied", "applied")]
    flag = api("get", "/flags/new-checkout")
    assert flag["enabled"] and flag["rules"][0]["percentage"] == 10 and flag["updated_by"] == "system:schedule"
    assert apply_due(runtime) == []  # applied once
    clock(AT + timedelta(hours=2))
    assert [a["id"] for a in apply_due(runtime)] == [ramp["id"]]
    assert api("get", "/flags/new-checkout")["rules"][0]["percentage"] == 50
    audit = api("get", "/audit?actor=system:schedule")["items"]
    assert [(a["action"], a["target"]) for a in audit] == [("flag.update", "new-checkout"),
                                                           ("flag.enable", "new-checkout")]
    assert audit[0]["before"]["rules"][0]["percentage"] == 10
    listed = api("get", "/flags/new-checkout/schedule")
    assert [(c["id"], c["status"]) for c in listed] == [(on["id"], "applied"), (ramp["id"], "applied")]
    assert listed[0]["applied_at"] == AT.isoformat()
    assert api("get", "/flags/new-checkout/schedule?status=pending") == []


def test_a_change_that_is_already_in_effect_is_applied_without_a_revision(api, runtime, clock):
    api("post", "/flags", boolean_flag(enabled=True), 201)
    schedule(api, {"action": "enable"})
    clock(AT)
    assert apply_due(runtime)[0]["outcome"] == "unchanged"
    assert api("get", "/flags/new-checkout")["version"] == 1


def test_failures_are_recorded_notified_and_never_raised(api, runtime, clock):
    from flagship.rollout.notifications import pending_events

    api("post", "/flags", boolean_flag(enabled=False, rules=[RAMP]), 201)
    api("post", "/flags", boolean_flag("gone"), 201)
    gone = schedule(api, {"action": "enable"}, path="/flags/gone/schedule")
    stale = schedule(api, {"action": "enable"}, version=1)
    no_rule = schedule(api, {"action": "set_percentage", "rule_id": "ramp", "percentage": 30})
    fine = schedule(api, {"action": "enable"}, at=AT + timedelta(minutes=5))
    api("delete", "/flags/gone", None, 204)
    api("patch", "/flags/new-checkout", {"rules": [{**RAMP, "id": "other"}], "version": 1})
    clock(AT + timedelta(minutes=5))
    results = {r["id"]: r for r in apply_due(runtime)}
    assert {i: r["status"] for i, r in results.items()} == {
        gone["id"]: "failed", stale["id"]: "failed", no_rule["id"]: "failed", fine["id"]: "applied"}
    assert "no longer exists" in results[gone["id"]]["error"]
    assert "stale" in results[stale["id"]]["error"] and "planned against version 1" in results[stale["id"]]["error"]
    assert "no rule 'ramp'" in results[no_rule["id"]]["error"]
    listed = {c["id"]: c for c in api("get", "/flags/new-checkout/schedule")}
    assert listed[stale["id"]]["status"] == "failed" and listed[stale["id"]]["error"].startswith("stale")
    assert listed[no_rule["id"]]["applied_at"] == (AT + timedelta(minutes=5)).isoformat()
    failed_events = [e for e in pending_events(runtime) if e["type"] == "schedule.failed"]
    assert len(failed_events) == 3
    assert apply_due(runtime) == []  # a failure is final
    assert api("get", "/flags/new-checkout")["enabled"]  # the good change was not held up


INVALID = [
    ({"at": (T0 - timedelta(minutes=1)).isoformat(), "change": {"action": "enable"}}, "at"),
    ({"at": "2030-05-01T11:00:00", "change": {"action": "enable"}}, "at"),
    ({"change": {"action": "enable"}}, "at"),
    ({"at": AT.isoformat()}, "change"),
    ({"at": AT.isoformat(), "change": {"action": "explode"}}, "change.action"),
    ({"at": AT.isoformat(), "change": {"action": "enable", "percentage": 5}}, "change.percentage"),
    ({"at": AT.isoformat(), "change": {"action": "set_percentage", "percentage": 5}}, "change.rule_id"),
    ({"at": AT.isoformat(), "change": {"action": "set_percentage", "rule_id": "nope", "percentage": 5}},
     "change.rule_id"),
    ({"at": AT.isoformat(), "change": {"action": "set_percentage", "rule_id": "staff", "percentage": 5}},
     "change.rule_id"),
    ({"at": AT.isoformat(), "change": {"action": "set_percentage", "rule_id": "ramp"}}, "change.percentage"),
    ({"at": AT.isoformat(), "change": {"action": "set_percentage", "rule_id": "ramp", "percentage": 150}},
     "change.percentage"),
    ({"at": AT.isoformat(), "change": {"action": "set_percentage", "rule_id": "ramp", "percentage": 1.234}},
     "change.percentage"),
]


def test_invalid_schedules_are_422_naming_the_field(api, clock):
    staff = {"id": "staff", "kind": "force", "variant": "on"}
    api("post", "/flags", boolean_flag(rules=[staff, RAMP]), 201)
    for body, field in INVALID:
        error = api("post", "/flags/new-checkout/schedule", body, 422)
        errors = error["errors"]["json"]
        flat = {f"{k}.{sub}" if isinstance(v, dict) else k for k, v in errors.items()
                for sub in (v if isinstance(v, dict) else [None])}
        assert field in flat and error["message"], (body, errors)
    assert api("get", "/flags/new-checkout/schedule") == []


def test_unknown_flag_stale_version_and_cancel(api, runtime, clock):
    schedule(api, {"action": "enable"}, status=404)
    api("post", "/flags", boolean_flag(), 201)
    schedule(api, {"action": "enable"}, version=7, status=409)
    change = schedule(api, {"action": "disable"})
    cancelled = api("delete", f"/flags/new-checkout/schedule/{change['id']}")
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_by"] == "key:test-admin"
    again = api("delete", f"/flags/new-checkout/schedule/{change['id']}", None, 409)
    assert "cancelled" in again["message"]
    api("delete", "/flags/new-checkout/schedule/999", None, 404)
    clock(AT)
    assert apply_due(runtime) == []
    assert api("get", "/flags/new-checkout")["enabled"]
    actions = [a["action"] for a in api("get", "/audit?target=new-checkout")["items"]]
    assert actions[:2] == ["flag.schedule_cancel", "flag.schedule"]


def test_a_schedule_acts_in_its_environment_only(api, runtime, clock):
    api("post", "/environments", {"key": "staging", "name": "Staging", "colour": "#1a7f37"}, 201)
    api("post", "/flags", boolean_flag(enabled=True), 201)
    path = "/flags/new-checkout/environments/staging/schedule"
    change = schedule(api, {"action": "enable"}, path=path)
    assert change["environment"] == "staging"
    assert api("get", path)[0]["id"] == change["id"] and api("get", "/flags/new-checkout/schedule") == []
    clock(AT)
    assert [r["environment"] for r in apply_due(runtime)] == ["staging"]
    assert api("get", "/flags/new-checkout/environments/staging")["enabled"]
    assert api("get", "/flags/new-checkout")["version"] == 1  # production untouched


def test_two_job_runs_at_once_apply_a_change_once(api, runtime, clock):
    api("post", "/flags", boolean_flag(enabled=False, rules=[RAMP]), 201)
    for minute in range(5):
        schedule(api, {"action": "set_percentage", "rule_id": "ramp", "percentage": 20 + minute},
                 at=AT + timedelta(minutes=minute))
    clock(AT + timedelta(hours=1))
    results: list[list[dict[str, Any]]] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        results.append(apply_due(runtime))
    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    applied = sorted(r["id"] for batch in results for r in batch)
    assert len(applied) == 5 and len(set(applied)) == 5
    revisions = api("get", "/flags/new-checkout/revisions")["items"]
    assert len(revisions) == 6 and revisions[0]["document"]["rules"][0]["percentage"] == 24


def test_a_rule_a_rollout_is_ramping_cannot_be_scheduled(api, runtime, clock):
    from flagship.flags import service

    api("post", "/flags", boolean_flag(rules=[RAMP]), 201)
    schedule(api, {"action": "set_percentage", "rule_id": "ramp", "percentage": 40})

    def guard(doc: dict[str, Any]) -> dict[str, Any]:  # what the rollout service does to its rule
        doc["rules"][0]["params"] = {"rollout": 7, "subject": "rollout:7:1"}
        return doc
    with runtime.change("system:rollout") as tx:
        service.rewrite_flag(tx, runtime, "new-checkout", "production", guard, "update")
    error = schedule(api, {"action": "set_percentage", "rule_id": "ramp", "percentage": 50}, status=422)
    assert "rollout 7" in error["message"] and "change.rule_id" in error["errors"]["json"]
    clock(AT)
    [failed] = apply_due(runtime)
    assert failed["status"] == "failed" and "ramped by rollout 7" in failed["error"]
    assert api("get", "/flags/new-checkout")["rules"][0]["percentage"] == 10
