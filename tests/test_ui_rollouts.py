"""Progressive-delivery screens: rollouts (list, new from a template, detail with its live
fragment, legal moves only, roll back), policy templates, alerts, webhooks and their
deliveries, and the dashboard sections."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from flagship import jobs
from flagship.experiments.ingest import ingest
from flagship.rollout import alerting, notifications
from tests.ui_support import UI, audit, field_error, ui  # noqa: F401 - fixture

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
INTERVAL = 60
POLICY = {"evaluation_interval": INTERVAL, "min_consecutive_ok": 1,
          "steps": [{"percent": 10, "min_duration": 60, "min_units": 30},
                    {"percent": 25, "min_duration": 60, "min_units": 30},
                    {"percent": 50, "min_duration": 60, "min_units": 30}],
          "checks": [{"id": "errors", "type": "metric_regression", "metric": "errors", "min_units": 30,
                      "on_fail": "hold"}]}
MOVES = r' action="/ui/rollouts/\d+/(start|pause|resume|advance|approve|rollback|abort|restart)\?'


@pytest.fixture
def clock(api: Any, runtime: Any) -> dict[str, datetime]:
    """A flag with a rollout rule `ramp`, a metric, a template `guarded`; a clock we move."""
    runtime.config["ROLLOUT_INTERVAL"] = INTERVAL
    now = {"now": T0}
    runtime.clock = lambda: now["now"]
    api("post", "/flags", {"key": "checkout", "type": "boolean", "variants": {"on": True, "off": False},
                           "default_variant": "off",
                           "rules": [{"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 0}]}, 201)
    api("post", "/metrics", {"key": "errors", "event": "error", "kind": "conversion", "direction": "decrease"}, 201)
    api("post", "/rollout-templates", {"key": "guarded", "name": "Guarded", "policy": POLICY}, 201)
    return now


def moves(ui: UI, rollout_id: int) -> list[str]:
    """The action buttons of the detail page, in order."""
    html = ui.get(f"/ui/rollouts/{rollout_id}").text
    group = html[html.index('aria-label="Actions"'):]
    return re.findall(MOVES, group[:group.index("</div>")])


def create(ui: UI, **fields: str) -> int:
    made = ui.post("/ui/rollouts/-/new", {"flag": "checkout", "rule_id": "ramp", "template": "guarded", **fields},
                   status=303)
    return int(re.search(r"/ui/rollouts/(\d+)\?", made.headers["Location"]).group(1))


def traffic(runtime: Any, now: datetime, start: int, count: int, error_rate: dict[str, float]) -> None:
    """Units evaluate the flag as an SDK would, send their exposure, some an error."""
    snapshot = runtime.snapshots.get("production").snapshot
    items = []
    for i in range(start, start + count):
        result = snapshot.evaluate("checkout", {"key": f"u{i}"})
        if result.arm is None:
            continue
        items.append({"event_id": f"x{i}", "unit": f"u{i}", "event": "$exposure", "experiment": result.experiment,
                      "variant": result.arm, "timestamp": now.isoformat()})
        if (i * 7919 % 1000) / 1000 < error_rate[result.arm]:
            items.append({"event_id": f"e{i}", "unit": f"u{i}", "event": "error",
                          "timestamp": (now + timedelta(seconds=1)).isoformat()})
    assert not ingest(runtime, items, now=now + timedelta(seconds=2)).rejected


def tick(runtime: Any, clock: dict[str, datetime], seconds: float) -> dict[str, Any]:
    clock["now"] += timedelta(seconds=seconds)
    return jobs.periodic_round(runtime, jobs.slot_of(runtime, clock["now"]))


def test_policy_templates_list_create_edit_delete_with_errors_next_to_the_policy(ui: UI, api: Any,
                                                                                  clock: Any) -> None:
    listing = ui.get("/ui/rollouts/templates").text
    assert "Guarded" in listing and "10% → 25% → 50% → 100%" in listing and "errors (metric_regression)" in listing
    form = ui.get("/ui/rollouts/templates/-/new").text
    assert 'name="policy"' in form and "&#34;steps&#34;" in form and "metric_regression" in form  # example, check types
    policy = '{"steps": [{"percent": 5, "min_duration": "10m", "min_units": 100}]}'
    ui.post("/ui/rollouts/templates/-/new", {"key": "slow", "name": "<b>Slow</b>", "policy": policy}, status=303)
    assert api("get", "/rollout-templates/slow")["policy"]["steps"][0]["min_duration"] == 600
    assert audit(ui.runtime, action="rollout_template.create")[0]["actor"] == "ui:alice"
    assert "&lt;b&gt;Slow&lt;/b&gt;" in ui.get("/ui/rollouts/templates").text

    bad = ui.post("/ui/rollouts/templates/-/new", {"key": "bad", "policy": '{"steps": [{"percent": 0}]}'},
                  status=422).text
    assert "policy.steps.0.percent" in field_error(bad, "policy")  # the API's field path, next to the policy
    assert 'aria-invalid="true"' in bad and "{&#34;steps&#34;: [{&#34;percent&#34;: 0}]}" in bad  # kept as typed
    assert "is not JSON" in field_error(ui.post("/ui/rollouts/templates/-/new", {"key": "bad", "policy": "{"},
                                                status=422).text, "policy")
    assert "invalid key" in field_error(ui.post("/ui/rollouts/templates/-/new", {"key": "no spaces", "policy": policy},
                                                status=422).text, "key")
    duplicate = ui.post("/ui/rollouts/templates/-/new", {"key": "slow", "policy": policy}, status=409).text
    assert "already exists" in field_error(duplicate, "key")
    api("get", "/rollout-templates/bad", status=404)

    edit = ui.get("/ui/rollouts/templates/slow").text
    assert 'name="version" value="1"' in edit and "&#34;min_duration&#34;: 600" in edit
    ui.post("/ui/rollouts/templates/slow", {"version": "1", "name": "Slower", "policy": policy}, status=303)
    assert api("get", "/rollout-templates/slow")["name"] == "Slower"
    stale = ui.post("/ui/rollouts/templates/slow", {"version": "1", "name": "Late", "policy": policy}, status=409).text
    assert "This template was changed by ui:alice" in stale
    ui.post("/ui/rollouts/templates/slow/delete", status=303)
    api("get", "/rollout-templates/slow", status=404)


def test_a_rollout_from_a_template_and_its_moves(ui: UI, api: Any, clock: Any) -> None:
    form = ui.get("/ui/rollouts/-/new?flag=checkout").text
    assert '<option value="ramp" >ramp: rollout of on, now 0%</option>' in form
    assert '<option value="guarded" >Guarded (guarded)</option>' in form
    rules = ui.post("/ui/rollouts/-/new", {"flag": "checkout", "op": "rules"}, htmx=True, status=200).text
    assert rules.lstrip().startswith('<form id="rollout-form"') and 'value="ramp"' in rules
    nothing = ui.post("/ui/rollouts/-/new", {"flag": "nope", "op": "rules"}, htmx=True, status=200).text
    assert "There is no flag nope in Production." in nothing
    missing = ui.post("/ui/rollouts/-/new", {"flag": "nope", "rule_id": "ramp", "template": "guarded"},
                      status=422).text
    assert "not found" in field_error(missing, "flag")
    assert field_error(ui.post("/ui/rollouts/-/new", {"flag": "checkout"}, status=422).text, "rule_id") == "required"
    bad = ui.post("/ui/rollouts/-/new", {"flag": "checkout", "rule_id": "ramp", "policy": '{"steps": []}'},
                  status=422).text
    assert "policy.steps: must be a non-empty list" in field_error(bad, "policy")

    rid = create(ui, description="<script>alert(1)</script> ramp it")
    detail = ui.get(f"/ui/rollouts/{rid}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; ramp it" in detail and "<script>alert(1)" not in detail
    assert "hx-trigger" not in detail.split('id="rollout-live"')[1].split(">")[0]  # a draft does not poll
    assert moves(ui, rid) == ["start", "abort"]
    busy = ui.post("/ui/rollouts/-/new", {"flag": "checkout", "rule_id": "ramp", "template": "guarded"},
                   status=409).text
    assert f"already has rollout {rid}" in field_error(busy, "rule_id")

    ui.post(f"/ui/rollouts/{rid}/start", status=303)
    assert api("get", f"/rollouts/{rid}")["percentage"] == 10
    assert api("get", "/flags/checkout")["rules"][0]["percentage"] == 10
    assert moves(ui, rid) == ["pause", "advance", "rollback", "abort"]
    page = ui.get(f"/ui/rollouts/{rid}").text
    assert f'hx-get="/ui/rollouts/{rid}?env=production" hx-trigger="every 3s"' in page
    live = ui.get(f"/ui/rollouts/{rid}", htmx=True).text
    assert live.lstrip().startswith('<div id="rollout-live"') and "<html" not in live
    assert re.search(r'class="ramp-current"[^>]*aria-current="step">\s*<strong>Step 1: 10%', live)
    assert "Step 1 of 3" in live and "serving <strong>10%" in live
    assert "cannot start a rollout that is running" in ui.post(f"/ui/rollouts/{rid}/start", status=409).text

    ui.post(f"/ui/rollouts/{rid}/pause", status=303)
    assert moves(ui, rid) == ["resume", "rollback", "abort"]  # roll back stays visible
    ui.post(f"/ui/rollouts/{rid}/resume", status=303)
    version = api("get", f"/rollouts/{rid}")["version"]
    ui.post(f"/ui/rollouts/{rid}/advance", {"version": str(version)}, status=303)
    assert api("get", f"/rollouts/{rid}")["percentage"] == 25
    ui.post(f"/ui/rollouts/{rid}/advance", {"version": str(version)}, status=409)  # a second click: no skip
    assert api("get", f"/rollouts/{rid}")["percentage"] == 25

    page = ui.get(f"/ui/rollouts/{rid}").text
    assert re.search(r'hx-post="/ui/rollouts/\d+/rollback\?env=production"[^>]*\s+hx-confirm="Roll back rollout', page)
    rolled = ui.post(f"/ui/rollouts/{rid}/rollback", htmx=True, status=200)
    assert rolled.headers["HX-Redirect"] == f"/ui/rollouts/{rid}?env=production"
    assert api("get", f"/rollouts/{rid}")["status"] == "rolled_back"
    assert api("get", "/flags/checkout")["rules"][0]["percentage"] == 0
    assert moves(ui, rid) == ["restart"]
    timeline = ui.get(f"/ui/rollouts/{rid}").text.split("<h2>Timeline</h2>")[1]
    assert timeline.index("<code>rollback</code>") < timeline.index("<code>start</code>")  # newest first
    assert "rollback by ui:alice" in timeline and "25% → 0%" in timeline
    actions = [a["action"] for a in audit(ui.runtime, target_type="rollout", actor="ui:alice")]
    assert {"rollout.create", "rollout.start", "rollout.pause", "rollout.resume", "rollout.advance",
            "rollout.rollback"} <= set(actions)
    ui.post(f"/ui/rollouts/{rid}/bogus", status=404)


def test_the_list_groups_rollouts_by_status_and_filters_by_flag(ui: UI, api: Any, clock: Any) -> None:
    api("post", "/flags", {"key": "other", "type": "boolean", "variants": {"on": True, "off": False},
                           "default_variant": "off",
                           "rules": [{"id": "r", "kind": "rollout", "variant": "on", "percentage": 0}]}, 201)
    first = create(ui)
    ui.post(f"/ui/rollouts/{first}/start", status=303)
    create(ui, flag="other", rule_id="r")
    page = ui.get("/ui/rollouts").text
    assert page.index("Running (1)") < page.index("Draft (1)") and "step 1 of 3" in page
    only = ui.get("/ui/rollouts?flag=other").text
    assert "Draft (1)" in only and "Running (" not in only
    assert "Running (1)" in ui.get("/ui/rollouts?status=running").text
    assert 'href="/ui/rollouts?env=production&amp;flag=other">Rollouts of this flag' in ui.get("/ui/flags/other").text
    api("post", "/environments", {"key": "staging"}, 201)
    assert "is in environment &#39;production&#39;" in ui.get(f"/ui/rollouts/{first}?env=staging", status=404).text


def test_check_results_with_estimates_intervals_a_hold_and_dismiss(ui: UI, api: Any, runtime: Any,
                                                                   clock: Any) -> None:
    rid = create(ui)
    ui.post(f"/ui/rollouts/{rid}/start", status=303)
    assert "not evaluated yet" in ui.get(f"/ui/rollouts/{rid}", htmx=True).text
    traffic(runtime, clock["now"], 0, 8000, {"treatment": 0.6, "control": 0.02})
    assert tick(runtime, clock, 5)["rollouts"] == {"hold": 1}
    live = ui.get(f"/ui/rollouts/{rid}", htmx=True).text
    row = re.search(r"<code>errors</code>.*?</tr>", live, re.S).group(0)
    assert 'class="badge outcome-fail">fail<' in row and "(mSPRT" in row
    estimate = re.search(r'<td class="n">(\+[\d.]+)</td>', row).group(1)
    low, high = re.search(r"\[(\+[\d.]+), (\+[\d.]+)\]", row).groups()
    assert 0 < float(low) < float(estimate) < float(high)  # the estimate in its (harmful) interval
    assert "1 (limit 0)" in row and "Latest evaluation" in live and "<strong>hold</strong>" in live
    assert re.search(r"holding</span> <strong>Step 1 of 3", live)
    assert moves(ui, rid) == ["pause", "resume", "advance", "rollback", "abort"]
    assert 'aria-label="Dismiss the failure of errors for this step"' in row
    evaluations = ui.get(f"/ui/rollouts/{rid}/evaluations").text
    assert "Evaluations of rollout" in evaluations and re.search(r"<code>errors</code> fail: \+", evaluations)
    ui.post(f"/ui/rollouts/{rid}/dismiss", {"check_id": "errors"}, status=303)
    assert "errors" in api("get", f"/rollouts/{rid}")["state"]["dismissed"]
    assert "dismissed this step" in ui.get(f"/ui/rollouts/{rid}").text
    assert "unknown check" in ui.post(f"/ui/rollouts/{rid}/dismiss", {"check_id": "nope"}, status=422).text
    assert "dismiss" in [a["action"].split(".")[1] for a in audit(runtime, target_type="rollout", actor="ui:alice")]


def test_alerts_tabs_acknowledge_and_the_dashboard(ui: UI, api: Any, runtime: Any, clock: Any) -> None:
    rid = create(ui)
    ui.post(f"/ui/rollouts/{rid}/start", status=303)
    alerting.create_rule(runtime, "test", {"subject_type": "rollout", "subject_key": str(rid),
                                           "kind": "no_exposures", "hours": 0.5, "severity": "critical"})
    clock["now"] += timedelta(hours=1)
    opened = alerting.evaluate_alerts(runtime)
    alert_id = opened[0]["alert"]["id"]
    page = ui.get("/ui/alerts").text
    assert "Open (1)" in page and "no exposures for 0.5 hours" in page
    assert f'href="/ui/rollouts/{rid}?env=production">Rollout {rid}</a>' in page
    assert 'class="badge severity-critical"' in page and f'aria-label="Acknowledge alert {alert_id}"' in page
    assert f'href="/ui/alerts?env=production&amp;status=open&amp;subject=rollout:{rid}">Its alerts' in ui.get(
        f"/ui/rollouts/{rid}").text
    assert "no exposures for 0.5 hours" in ui.get(f"/ui/alerts?subject=rollout:{rid}").text
    assert "No open alerts of rollout:999 in Production." in ui.get("/ui/alerts?subject=rollout:999").text
    home = ui.get("/ui/").text
    assert "<h2>Open alerts</h2>" in home and "no exposures for 0.5 hours" in home
    assert "<h2>Active rollouts</h2>" in home and "step 1 of 3" in home
    assert f'href="/ui/rollouts/{rid}?env=production">Rollout {rid}</a>' in home

    assert ui.post(f"/ui/alerts/{alert_id}/ack", csrf=False).status_code == 400
    ui.post(f"/ui/alerts/{alert_id}/ack", {"back": "/ui/alerts?status=open"}, status=303)
    assert alerting.get_alert(runtime, alert_id)["acknowledged_by"] == "ui:alice"
    assert "No open alerts in Production." in ui.get("/ui/alerts").text
    tab = ui.get("/ui/alerts?status=acknowledged", htmx=True).text
    assert tab.lstrip().startswith('<div id="alerts">') and "by ui:alice" in tab
    assert 'aria-current="page">Acknowledged (1)' in tab
    assert "No open alerts in Production." in ui.get("/ui/").text

    ui.post(f"/ui/rollouts/{rid}/rollback", status=303)
    alerting.evaluate_alerts(runtime)  # the subject stopped running: resolved
    assert "subject not running" in ui.get("/ui/alerts?status=resolved").text
    assert "is resolved already" in ui.post(f"/ui/alerts/{alert_id}/ack", status=409).text
    assert "No rollout is ramping in Production." in ui.get("/ui/").text


def test_webhooks_secret_once_edit_delete_and_the_delivery_log(ui: UI, api: Any, runtime: Any) -> None:
    assert "No webhooks yet." in ui.get("/ui/webhooks").text
    form = {"name": "<i>ops</i>", "url": "http://127.0.0.1:9/hook", "event_types": "rollout.*\nalert.opened",
            "enabled": "1"}
    bad = ui.post("/ui/webhooks/-/new", {**form, "url": "ftp://x"}, status=422).text
    assert "http:// or https://" in field_error(bad, "url")
    bad = ui.post("/ui/webhooks/-/new", {**form, "event_types": "rollout.*, no spaces"}, status=422).text
    assert "event_types.1: must be an event type" in field_error(bad, "event_types")
    created = ui.post("/ui/webhooks/-/new", form, status=201).text
    secret = re.search(r'id="secret" type="text" readonly value="(whsec_[^"]+)"', created).group(1)
    assert "shown this once" in created and "&lt;i&gt;ops&lt;/i&gt;" in created
    hook = api("get", "/webhooks")[0]
    assert hook["event_types"] == ["rollout.*", "alert.opened"] and hook["created_by"] == "ui:alice"
    listing = ui.get("/ui/webhooks").text
    assert secret not in listing and "&lt;i&gt;ops&lt;/i&gt;" in listing and "<code>rollout.*</code>" in listing
    assert "already exists" in field_error(ui.post("/ui/webhooks/-/new", form, status=409).text, "name")

    edit = ui.get(f"/ui/webhooks/{hook['id']}").text
    assert secret not in edit and 'name="version" value="1"' in edit
    ui.post(f"/ui/webhooks/{hook['id']}", {**form, "enabled": "", "event_types": "*", "version": "1"}, status=303)
    changed = api("get", f"/webhooks/{hook['id']}")
    assert changed["enabled"] is False and changed["event_types"] == ["*"]
    stale = ui.post(f"/ui/webhooks/{hook['id']}", {**form, "version": "1"}, status=409).text
    assert "This webhook was changed by ui:alice" in stale
    ui.post(f"/ui/webhooks/{hook['id']}", {**form, "version": "2"}, status=303)

    event = {"id": "evt-1", "type": "rollout.started", "at": runtime.clock().isoformat(), "environment": "production"}
    with pytest.raises(notifications.WebhookDeliveryError):
        notifications.deliver_to_webhooks(runtime, event, timeout=2)
    log = ui.get(f"/ui/webhooks/{hook['id']}/deliveries").text
    assert "<code>rollout.started</code>" in log and "evt-1" in log and ">failed<" in log
    assert "ConnectionRefusedError" in log and re.search(r'<td class="n">[\d.]+ ms</td>', log)
    fragment = ui.get(f"/ui/webhooks/{hook['id']}/deliveries", htmx=True).text
    assert fragment.lstrip().startswith('<div id="deliveries">')
    ui.post(f"/ui/webhooks/{hook['id']}/delete", status=303)
    api("get", f"/webhooks/{hook['id']}", status=404)
    assert [a["action"] for a in audit(runtime, target_type="webhook", actor="ui:alice")][:3] == [
        "webhook.delete", "webhook.update", "webhook.update"]


def test_csrf_is_required_and_illegal_screens_are_refused(ui: UI, api: Any, runtime: Any, clock: Any) -> None:
    rid = create(ui)
    hook = notifications.create_webhook(runtime, "test", {"name": "h", "url": "http://127.0.0.1:9/",
                                                          "event_types": ["*"]})
    for path, data in ((f"/ui/rollouts/{rid}/start", {}), ("/ui/rollouts/-/new", {"flag": "checkout"}),
                       ("/ui/rollouts/templates/-/new", {"key": "x", "policy": "{}"}),
                       ("/ui/rollouts/templates/guarded/delete", {}), ("/ui/webhooks/-/new", {"name": "x"}),
                       (f"/ui/webhooks/{hook['id']}/delete", {}), ("/ui/alerts/1/ack", {})):
        assert ui.post(path, data, csrf=False).status_code == 400, path
        assert ui.post(path, {**data, "csrf_token": "forged"}, csrf=False, htmx=True).status_code == 400, path
    assert api("get", f"/rollouts/{rid}")["status"] == "draft"
    api("get", "/rollout-templates/guarded")
    api("get", f"/webhooks/{hook['id']}")


def test_a_key_bound_to_an_environment_cannot_manage_webhooks(client: Any, runtime: Any, api: Any) -> None:
    api("post", "/environments", {"key": "staging"}, 201)
    browser = UI(client, runtime)
    browser.sign_in("stager", environment="staging")
    assert "No webhooks yet." in browser.get("/ui/webhooks").text
    refused = browser.post("/ui/webhooks/-/new?env=staging", {"name": "x", "url": "http://127.0.0.1:9/",
                                                               "event_types": "*"}, status=403)
    assert "affects every environment" in refused.text
