"""A flag's scheduled changes and an experiment's alert rules in a real browser: a change
scheduled with the datetime control and cancelled through its confirmation, a rule set
saved as JSON (an error shown next to the textarea first); axe-core on both screens."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.helpers import UIServer

pytestmark = pytest.mark.xdist_group("browser")
expect = pytest.importorskip("playwright.sync_api").expect


def test_schedule_a_change_then_cancel_it(page: Any, ui_server: UIServer) -> None:
    base, screens = ui_server.base_url, page.screens
    ui_server.ok("POST", "/api/v1/flags", {
        "key": "browser-later", "type": "boolean", "variants": {"on": True, "off": False},
        "default_variant": "off", "rules": [{"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 5}]})
    page.goto(f"{base}/ui/flags/browser-later")
    page.get_by_role("link", name="Scheduled changes").click()
    page.get_by_role("heading", name="Scheduled changes of browser-later in Production").wait_for()
    page.get_by_label("When (UTC)").fill("2099-01-31T09:30")
    page.get_by_label("Change", exact=True).select_option("set_percentage")
    page.get_by_label("Rule (for a percentage)").select_option("ramp")
    page.get_by_label("Percentage (0-100)").fill("40")
    page.get_by_role("button", name="Schedule").click()
    expect(page.get_by_role("status")).to_contain_text("Scheduled: Set rule ramp to 40 %")
    expect(page.get_by_role("row", name="2099-01-31 09:30")).to_contain_text("Set rule ramp to 40 %")
    screens.check("flag-schedule")
    listed = ui_server.ok("GET", "/api/v1/flags/browser-later/schedule")
    assert [(c["at"], c["status"]) for c in listed] == [("2099-01-31T09:30:00+00:00", "pending")]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Cancel scheduled change {listed[0]['id']}").click()
    expect(page.get_by_role("status")).to_contain_text("cancelled")
    assert ui_server.ok("GET", "/api/v1/flags/browser-later/schedule")[0]["status"] == "cancelled"


def test_edit_an_experiments_alert_rules(page: Any, ui_server: UIServer) -> None:
    base, screens = ui_server.base_url, page.screens
    for path, body in (("/api/v1/layers", {"key": "alerts-layer"}),
                       ("/api/v1/metrics", {"key": "alerts-buy", "event": "buy", "kind": "conversion"}),
                       ("/api/v1/experiments", {
                           "key": "alerts-exp", "flag": "alerts-flag", "layer": "alerts-layer",
                           "success_metrics": ["alerts-buy"],
                           "variants": [{"variant": "a", "value": "A", "is_control": True},
                                        {"variant": "b", "value": "B"}]})):
        status, _ = ui_server.call("POST", path, body)
        assert status in (201, 409)
    page.goto(f"{base}/ui/experiments/alerts-exp")
    page.get_by_role("link", name="Alert rules").click()
    page.get_by_role("heading", name="Alert rules of alerts-exp").wait_for()
    screens.check("experiment-alerts")
    rules = page.get_by_label("Rules (JSON list)")
    rules.fill(json.dumps([{"kind": "srm", "p_value": 2}]))
    page.get_by_role("button", name="Save rules").click()
    expect(page.locator("#f-rules-error")).to_contain_text("rules.0.p_value")
    screens.check("experiment-alerts-error")
    rules.fill(json.dumps([{"kind": "srm", "severity": "critical"}, {"kind": "no_exposures", "hours": 6}]))
    page.get_by_role("button", name="Save rules").click()
    expect(page.get_by_role("status")).to_contain_text("2 rules")
    stored = ui_server.ok("GET", "/api/v1/experiments/alerts-exp/alerts")["rules"]
    assert [(r["kind"], r["severity"]) for r in stored] == [("srm", "critical"), ("no_exposures", "warning")]
