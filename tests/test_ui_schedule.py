"""A flag's scheduled changes in the UI: list, schedule (errors next to their fields),
cancel, history once the job applied them; audited under the UI user; CSRF required."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from flagship.flags.schedule import apply_due
from tests.conftest import boolean_flag
from tests.ui_support import UI, audit, field_error, ui  # noqa: F401 - fixture

NOW = datetime(2030, 5, 1, 9, 0, tzinfo=timezone.utc)
RAMP = {"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 10}


def _flag(api: Any, ui: UI, **extra: Any) -> None:
    api("post", "/flags", boolean_flag("checkout", enabled=False, **extra), 201)
    ui.runtime.clock = lambda: NOW


def _pending_rows(html: str) -> list[str]:
    section = html.split("<h2>Pending</h2>", 1)[1].split("<h2>", 1)[0]
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip()
            for row in re.findall(r"<tr><td>.*?</tr>", section, re.S)]


def test_the_page_lists_nothing_and_offers_the_percentage_rules(ui: UI, api: Any) -> None:
    _flag(api, ui, rules=[RAMP])
    page = ui.get("/ui/flags/checkout/schedule").text
    assert "Nothing is scheduled for checkout in Production" in page or "Nothing is scheduled for checkout" in page
    assert 'name="at"' in page and 'type="datetime-local"' in page
    assert '<option value="ramp"' in page and "ramp (rollout, now 10 %)" in page
    assert 'href="/ui/flags/checkout/schedule' in ui.get("/ui/flags/checkout").text  # linked from the flag
    api("post", "/flags", boolean_flag("plain"), 201)
    assert "only turning it on or off can be scheduled" in ui.get("/ui/flags/plain/schedule").text


def test_scheduling_lists_the_change_audits_the_ui_user_and_the_job_applies_it(ui: UI, api: Any) -> None:
    _flag(api, ui, rules=[RAMP])
    at = NOW + timedelta(hours=2)
    done = ui.post("/ui/flags/checkout/schedule", {"at": "2030-05-01T11:00", "change.action": "set_percentage",
                                                   "change.rule_id": "ramp", "change.percentage": "35"}, status=303)
    assert done.headers["Location"].startswith("/ui/flags/checkout/schedule")
    ui.post("/ui/flags/checkout/schedule", {"at": "2030-05-01T10:00", "change.action": "enable"}, status=303)
    rows = _pending_rows(ui.get("/ui/flags/checkout/schedule").text)
    assert rows[0].startswith("2030-05-01 10:00") and "Turn on" in rows[0] and "ui:alice" in rows[0]
    assert "Set rule ramp to 35 %" in rows[1]
    listed = api("get", "/flags/checkout/schedule")  # the API sees the same changes, in UTC
    assert [c["at"] for c in listed] == [(at - timedelta(hours=1)).isoformat(), at.isoformat()]
    assert [a["actor"] for a in audit(ui.runtime, action="flag.schedule")] == ["ui:alice", "ui:alice"]
    ui.runtime.clock = lambda: at
    assert len(apply_due(ui.runtime)) == 2
    page = ui.get("/ui/flags/checkout/schedule").text
    assert "Nothing is scheduled" in page and "<h2>History</h2>" in page
    assert page.count("status-applied") == 2
    flag = api("get", "/flags/checkout")
    assert flag["enabled"] and flag["rules"][0]["percentage"] == 35


def test_errors_appear_next_to_their_fields(ui: UI, api: Any) -> None:
    _flag(api, ui, rules=[RAMP])
    past = ui.post("/ui/flags/checkout/schedule", {"at": "2030-05-01T08:00", "change.action": "enable"}, status=422).text
    assert "must be in the future" in field_error(past, "at")
    garbled = ui.post("/ui/flags/checkout/schedule", {"at": "soon", "change.action": "enable"}, status=422).text
    assert "a date and time" in field_error(garbled, "at")
    too_much = ui.post("/ui/flags/checkout/schedule", {"at": "2030-05-02T08:00", "change.action": "set_percentage",
                                                       "change.rule_id": "ramp", "change.percentage": "150"},
                       status=422).text
    assert field_error(too_much, "change.percentage")
    assert 'value="150"' in too_much  # what was typed is kept
    nonsense = ui.post("/ui/flags/checkout/schedule", {"at": "2030-05-02T08:00", "change.action": "set_percentage",
                                                       "change.rule_id": "ramp", "change.percentage": "lots"},
                       status=422).text
    assert "a number from 0 to 100" in field_error(nonsense, "change.percentage")
    assert api("get", "/flags/checkout/schedule") == []  # nothing was scheduled


def test_cancel_a_pending_change_and_not_twice(ui: UI, api: Any) -> None:
    _flag(api, ui)
    ui.post("/ui/flags/checkout/schedule", {"at": "2030-05-01T10:00", "change.action": "enable"}, status=303)
    change_id = api("get", "/flags/checkout/schedule")[0]["id"]
    ui.post(f"/ui/flags/checkout/schedule/{change_id}/cancel", status=303)
    page = ui.get("/ui/flags/checkout/schedule").text
    assert "Nothing is scheduled" in page and "cancelled by ui:alice" in page
    again = ui.post(f"/ui/flags/checkout/schedule/{change_id}/cancel", status=409).text
    assert "only a pending change can be cancelled" in again
    assert audit(ui.runtime, action="flag.schedule_cancel")[0]["actor"] == "ui:alice"


def test_state_changes_need_the_csrf_token(ui: UI, api: Any) -> None:
    _flag(api, ui)
    assert ui.post("/ui/flags/checkout/schedule", {"at": "2030-05-01T10:00", "change.action": "enable"},
                   csrf=False).status_code == 400
    assert api("get", "/flags/checkout/schedule") == []


def test_a_rule_a_rollout_is_ramping_is_not_offered(ui: UI, api: Any) -> None:
    _flag(api, ui, rules=[RAMP, {"id": "other", "kind": "rollout", "variant": "on", "percentage": 1}])
    rollout = api("post", "/rollouts", {"flag": "checkout", "rule_id": "ramp", "policy": {
        "steps": [{"percent": 5, "min_duration": "1h", "min_units": 10}], "evaluation_interval": "1m"}}, 201)
    api("post", f"/rollouts/{rollout['id']}/start")
    assert api("get", "/flags/checkout")["rules"][0]["params"]["rollout"] == rollout["id"]
    page = ui.get("/ui/flags/checkout/schedule").text
    assert '<option value="other"' in page and '<option value="ramp"' not in page
