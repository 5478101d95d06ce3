"""The main journeys in a real browser (Debian's Chromium, headless) against a real
`flagship serve`: sign in, a flag with a rule, the kill switch and /evaluate, the rollout
percentage, a stale save, an experiment from the form to its released winner with the
monitor updating by itself, and all of it in the audit log; axe-core on every main screen."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.browser.helpers import ADMIN_KEY, UIServer, axe_violations
from tests.browser.seed import send_traffic

pytestmark = pytest.mark.xdist_group("browser")
expect = pytest.importorskip("playwright.sync_api").expect


def evaluate(server: UIServer, flag: str, context: dict[str, Any]) -> dict[str, Any]:
    return server.ok("POST", "/api/v1/evaluate", {"context": context, "flags": [flag]})["flags"][flag]


def test_sign_in_needs_a_live_admin_key(chromium: Any, ui_server: UIServer) -> None:
    page = chromium.new_page()
    try:
        page.goto(f"{ui_server.base_url}/ui/flags")
        assert "/ui/sign-in?next=/ui/flags" in page.url
        assert axe_violations(page) == []
        page.get_by_label("Admin API key").fill("fsk_admin_wrong")
        page.get_by_role("button", name="Sign in").click()
        key = page.get_by_label("Admin API key")
        assert key.get_attribute("aria-invalid") == "true"
        assert page.locator("#f-key-error").inner_text() == "That is not a live API key."
        key.fill(ADMIN_KEY)
        key.press("Enter")  # the keyboard is enough
        page.wait_for_url(re.compile(r".*/ui/flags$"))
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r".*/ui/sign-in\?reason=signed-out"))
    finally:
        page.close()


def test_a_flag_from_creation_to_kill_switch_rollout_and_audit(page: Any, ui_server: UIServer) -> None:
    base, screens = ui_server.base_url, page.screens
    page.goto(f"{base}/ui/flags")
    page.get_by_role("link", name="New flag").click()
    page.get_by_label("Key").fill("browser-flag")
    page.get_by_label("Description").fill("<script>alert(1)</script> made in a browser")
    page.get_by_label("Tags").fill("web")
    page.get_by_role("button", name="Create flag").click()
    page.wait_for_url(re.compile(r".*/ui/flags/browser-flag\?env=production$"))
    assert page.get_by_text("<script>alert(1)</script> made in a browser").first.is_visible()  # text, not markup

    # a rule from the condition builder, then a rollout; each button re-renders the form (htmx)
    page.get_by_role("button", name="Add a targeting rule").click()
    page.get_by_role("button", name="Add a condition").click()
    page.get_by_label("Attribute").fill("country")
    page.get_by_label("Operator").select_option("in")
    page.get_by_label("Values, one per line").fill("NL\nBE")
    page.get_by_label("Serve variant").select_option("on")
    page.get_by_role("button", name="Add a percentage rollout").click()
    page.get_by_label("Rollout percentage").fill("0")
    screens.check("flag-editor")
    page.get_by_role("button", name="Save targeting").click()
    page.get_by_text("Targeting of browser-flag saved in production.").wait_for()
    assert evaluate(ui_server, "browser-flag", {"key": "u1", "country": "NL"})["value"] is True
    screens.check("flag-detail")

    # evaluate for a context: every step with its bucket numbers
    page.get_by_label("Context (JSON)").fill(json.dumps({"key": "user-7", "country": "US"}))
    page.get_by_role("button", name="Evaluate").click()
    page.locator("#explain-result").get_by_text("condition 1 did not match").wait_for()
    assert re.search(r"bucket \d+ of 10,000", page.locator("#explain-result").inner_text())

    # the list: search (the URL follows, so the back button works), then the kill switch
    page.goto(f"{base}/ui/flags")
    page.get_by_label("Search key and description").fill("browser")
    page.wait_for_url(re.compile(r".*q=browser.*"))
    switch = page.get_by_role("switch", name="Kill switch of browser-flag")
    assert switch.get_attribute("aria-checked") == "true"
    screens.check("flags")
    switch.focus()
    page.keyboard.press("Enter")
    page.locator('#flag-row-browser-flag [aria-checked="false"]').wait_for()
    assert evaluate(ui_server, "browser-flag", {"key": "u1", "country": "NL"})["reason"] == "DISABLED"
    page.go_back()
    page.wait_for_url(re.compile(r".*/ui/flags(\?env=production)?$"))
    # htmx restores the page from its history cache after the URL changed: wait for it
    expect(page.get_by_label("Search key and description")).to_have_value("")
    page.get_by_role("switch", name="Kill switch of browser-flag").click()
    page.locator('#flag-row-browser-flag [aria-checked="true"]').wait_for()
    assert evaluate(ui_server, "browser-flag", {"key": "u1", "country": "NL"})["value"] is True

    # the rollout percentage saves with the version; a stale page is told, not obeyed
    page.goto(f"{base}/ui/flags/browser-flag")
    other = page.context.new_page()
    other.goto(f"{base}/ui/flags/browser-flag")
    other.get_by_label("Rollout percentage").fill("40")
    other.get_by_role("button", name="Save targeting").click()
    other.get_by_text("Targeting of browser-flag saved").wait_for()
    other.close()
    assert ui_server.ok("GET", "/api/v1/flags/browser-flag")["rules"][1]["percentage"] == 40
    page.get_by_label("Rollout percentage").fill("55")
    page.get_by_role("button", name="Save targeting").click()
    page.get_by_text("This flag was changed by ui:admin").wait_for()
    screens.check("flag-stale")
    assert ui_server.ok("GET", "/api/v1/flags/browser-flag")["rules"][1]["percentage"] == 40
    page.get_by_role("link", name="Reload").first.click()
    page.get_by_label("Rollout percentage").fill("55")
    page.get_by_role("button", name="Save targeting").click()
    page.get_by_text("Targeting of browser-flag saved").wait_for()
    assert ui_server.ok("GET", "/api/v1/flags/browser-flag")["rules"][1]["percentage"] == 55

    # all of it in the audit log, by the UI user
    page.goto(f"{base}/ui/audit")
    page.get_by_label("Object key").fill("browser-flag")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r".*target=browser-flag.*"))
    table = page.locator("#audit-table").inner_text()
    for action in ("flag.create", "flag.update", "flag.disable", "flag.enable"):
        assert action in table
    assert "ui:admin" in table
    screens.check("audit")


def test_an_experiment_from_the_form_to_its_released_winner(page: Any, ui_server: UIServer) -> None:
    base, screens = ui_server.base_url, page.screens
    ui_server.ok("POST", "/api/v1/layers", {"key": "web"})
    ui_server.ok("POST", "/api/v1/metrics", {"key": "purchases", "event": "purchase", "kind": "conversion"})
    sdk = ui_server.ok("POST", "/api/v1/keys", {"name": "browser-sdk", "scope": "sdk"})["key"]

    page.goto(f"{base}/ui/experiments")
    page.get_by_role("link", name="New experiment").click()
    page.get_by_label("Key", exact=True).fill("button-test")
    page.get_by_label("Name", exact=True).fill("Button colour")
    page.get_by_label("Hypothesis").fill("green sells more")
    page.get_by_label("Flag", exact=True).fill("button-colour")
    page.get_by_label("Layer", exact=True).select_option("web")
    page.get_by_label("Variant 1 name").fill("blue")
    page.get_by_label("Value (new flag only)").first.fill("#00f")
    page.get_by_label("Variant 2 name").fill("green")
    page.get_by_label("Value (new flag only)").nth(1).fill("#0a0")
    page.get_by_label("purchases", exact=True).first.check()
    page.get_by_role("button", name="Calculate").click()
    page.get_by_text(re.compile(r"You need [\d,]+ users per variant")).wait_for()
    page.get_by_role("button", name=re.compile(r"Use [\d,]+ as the minimum sample")).click()
    expect(page.get_by_label("Minimum sample per variant")).to_have_value(re.compile(r"^\d{4,}$"))
    page.get_by_label("Minimum sample per variant").fill("300")  # the traffic below reaches it
    screens.check("experiment-form")
    page.get_by_role("button", name="Create draft").click()
    page.wait_for_url(re.compile(r".*/ui/experiments/button-test\?env=production$"))

    lifecycle = page.get_by_role("group", name="Lifecycle")
    assert lifecycle.get_by_role("button").all_inner_texts() == ["Start", "Delete draft"]
    lifecycle.get_by_role("button", name="Start").click()
    page.get_by_text("Experiment button-test: start done.").wait_for()
    assert lifecycle.get_by_role("button").all_inner_texts() == ["Pause", "Complete", "Terminate"]

    # the monitor refreshes itself: events go in through the API, the page is not reloaded
    monitor = page.locator("#monitor")
    monitor.wait_for()
    assert monitor.locator('[data-variant="blue"]').inner_text() == "0"
    screens.check("experiment-monitor")
    send_traffic(ui_server, sdk, "button-test", {"blue": 0.1, "green": 0.3}, 600, "b")
    page.locator('#monitor [data-variant="blue"]', has_text="300").wait_for(timeout=20_000)
    assert "SRM: ok" in page.locator("#monitor").inner_text()

    page.get_by_role("link", name="Results", exact=True).click()
    page.get_by_text("Ship green").first.wait_for()
    assert page.locator("svg[aria-labelledby='forest-title']").count() == 1
    screens.check("experiment-results")
    page.get_by_label("Variant").select_option("green")
    page.get_by_label("Share of the audience (%)").fill("100")
    page.get_by_role("button", name="Release").click()
    page.get_by_text("Released green of button-test to 100% of its audience.").wait_for()
    flag = ui_server.ok("GET", "/api/v1/flags/button-colour")
    assert flag["rules"][0] == {**flag["rules"][0], "kind": "release", "variant": "green", "percentage": 100}

    page.goto(f"{base}/ui/audit?actor=ui:admin&target=button-test")
    table = page.locator("#audit-table").inner_text()
    for action in ("experiment.create", "experiment.start", "experiment.release"):
        assert action in table


# the flag and experiment screens, the audit log and the sign-in page are checked in the journeys
MAIN_SCREENS = ("/ui/", "/ui/experiments", "/ui/layers", "/ui/layers/web", "/ui/segments",
                "/ui/segments/-/new", "/ui/metrics", "/ui/metrics/-/new", "/ui/environments",
                "/ui/environments/-/new", "/ui/keys", "/ui/flags/-/new")


def test_every_main_screen_passes_axe(page: Any, ui_server: UIServer) -> None:
    status, _ = ui_server.call("POST", "/api/v1/layers", {"key": "web"})
    assert status in (201, 409)
    for path in MAIN_SCREENS:
        page.goto(ui_server.base_url + path)
        page.screens.check(path.strip("/").replace("/", "-") or "home")
