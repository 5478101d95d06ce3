"""Progressive delivery in a real browser: a policy template and a rollout made in the UI,
started, rolled back through its confirmation dialog, and found in the audit log; a
webhook whose secret is shown once; axe-core on every new screen."""
from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.helpers import UIServer

pytestmark = pytest.mark.xdist_group("browser")
expect = pytest.importorskip("playwright.sync_api").expect


def rule_percentage(server: UIServer, flag: str) -> float:
    return server.ok("GET", f"/api/v1/flags/{flag}")["rules"][0]["percentage"]


def test_a_rollout_from_a_template_started_and_rolled_back(page: Any, ui_server: UIServer) -> None:
    base, screens = ui_server.base_url, page.screens
    ui_server.ok("POST", "/api/v1/flags", {
        "key": "browser-ramp", "type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "off",
        "rules": [{"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 0}]})

    # a policy template from the form (its example policy: 1%, 10%, 50% with an SRM check)
    page.goto(f"{base}/ui/rollouts/templates")
    page.get_by_role("link", name="New template").click()
    screens.check("rollout-template-form")
    page.get_by_label("Key").fill("browser-guarded")
    page.get_by_label("Name").fill("Guarded in a browser")
    page.get_by_role("button", name="Save template").click()
    page.get_by_text("Rollout template browser-guarded saved.").wait_for()
    assert "1% → 10% → 50% → 100%" in page.locator("main").inner_text()
    screens.check("rollout-templates")

    # a rollout: the flag's rules appear when the flag is chosen (htmx), then the template
    page.goto(f"{base}/ui/rollouts")
    page.get_by_role("link", name="New rollout").first.click()
    page.get_by_label("Flag", exact=True).fill("browser-ramp")
    page.get_by_label("Flag", exact=True).press("Tab")
    page.locator('#f-rule_id option[value="ramp"]').wait_for(state="attached")
    page.get_by_label("Rule", exact=True).select_option("ramp")
    page.get_by_label("Policy template").select_option("browser-guarded")
    page.get_by_label("Description").fill("<b>ramp</b> from a browser")
    screens.check("rollout-new")
    page.get_by_role("button", name="Create draft").click()
    page.wait_for_url(re.compile(r".*/ui/rollouts/\d+\?env=production$"))
    rollout_id = re.search(r"/ui/rollouts/(\d+)", page.url).group(1)
    assert page.get_by_text("<b>ramp</b> from a browser").is_visible()  # text, not markup

    actions = page.get_by_role("group", name="Actions")
    assert actions.get_by_role("button").all_inner_texts() == ["Start", "Abort"]
    actions.get_by_role("button", name="Start").click()
    page.get_by_text(f"Rollout {rollout_id}: start done; it is running at 1%.").wait_for()
    assert rule_percentage(ui_server, "browser-ramp") == 1
    expect(page.get_by_role("group", name="Actions").get_by_role("button")).to_have_text(
        ["Pause", "Advance one step", "Roll back", "Abort"])
    expect(page.locator('.ramp [aria-current="step"]')).to_contain_text("Step 1: 1%")
    page.locator("#rollout-live[hx-trigger]").wait_for()  # a live rollout refreshes itself
    screens.check("rollout-detail")

    # roll back: one confirmation, then the rule serves 0% at once
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))  # the fixture accepts it
    page.get_by_role("group", name="Actions").get_by_role("button", name="Roll back").click()
    page.get_by_text(f"Rollout {rollout_id}: roll back done; it is rolled back at 0%.").wait_for()
    assert dialogs == [f"Roll back rollout {rollout_id}? browser-ramp goes back to 0% for this rule at once."]
    assert rule_percentage(ui_server, "browser-ramp") == 0
    assert ui_server.ok("GET", f"/api/v1/rollouts/{rollout_id}")["status"] == "rolled_back"
    expect(page.get_by_role("group", name="Actions").get_by_role("button")).to_have_text(["Restart (new attempt)"])
    assert "rollback by ui:admin" in page.locator("#rollout-live").inner_text()
    screens.check("rollout-rolled-back")

    page.get_by_role("link", name="Every change in the audit log").click()
    table = page.locator("#audit-table").inner_text()
    for action in ("rollout.create", "rollout.start", "rollout.rollback"):
        assert action in table
    assert "ui:admin" in table


def test_a_webhook_shows_its_secret_once(page: Any, ui_server: UIServer) -> None:
    base, screens = ui_server.base_url, page.screens
    page.goto(f"{base}/ui/webhooks")
    page.get_by_role("link", name="New webhook").click()
    page.get_by_label("Name").fill("browser-hook")
    page.get_by_label("URL").fill("ftp://example.com/hook")
    page.get_by_role("button", name="Add webhook").click()
    expect(page.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
    screens.check("webhook-form-errors")
    page.get_by_label("URL").fill("http://127.0.0.1:9/hook")
    page.get_by_role("button", name="Add webhook").click()
    secret = page.get_by_label("Signing secret of browser-hook").input_value()
    assert secret.startswith("whsec_")
    screens.check("webhook-created")
    page.get_by_role("link", name="Back to webhooks").click()
    assert secret not in page.content()
    screens.check("webhooks")
    page.get_by_role("link", name="Deliveries").first.click()
    page.get_by_role("heading", name="Deliveries of browser-hook").wait_for()
    screens.check("webhook-deliveries")


NEW_SCREENS = ("/ui/", "/ui/rollouts", "/ui/rollouts/-/new", "/ui/rollouts/templates", "/ui/alerts",
               "/ui/alerts?status=resolved", "/ui/webhooks", "/ui/webhooks/-/new")


def test_every_new_screen_passes_axe(page: Any, ui_server: UIServer) -> None:
    for path in NEW_SCREENS:
        page.goto(ui_server.base_url + path)
        page.screens.check("new-" + (path.strip("/").replace("/", "-").replace("?", "-") or "home"))
