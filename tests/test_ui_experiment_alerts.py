"""An experiment's alert rules in the UI: the defaults it will get, saving a rule set as
JSON (errors next to the textarea with the API's field path), turning alerts off, the
unresolved alerts; audited under the UI user; CSRF required; text escaped."""
from __future__ import annotations

import json
import re
from typing import Any

from tests.test_ui_experiments import FORM, setup_catalog
from tests.ui_support import UI, audit, field_error, ui  # noqa: F401 - fixture

XSS = "<script>alert(1)</script>"


def _experiment(ui: UI, api: Any) -> None:
    setup_catalog(api)
    ui.post("/ui/experiments/-/new", FORM, status=303)


def _kinds(html: str) -> list[str]:
    section = html.split("<h2>Watching</h2>", 1)[1].split("<h2>", 1)[0]
    return re.findall(r"<tr><td><code>([a-z_]+)</code>", section)


def test_the_defaults_are_shown_until_the_experiment_has_rules(ui: UI, api: Any) -> None:
    _experiment(ui, api)
    assert 'href="/ui/experiments/btn/alerts' in ui.get("/ui/experiments/btn").text  # linked
    page = ui.get("/ui/experiments/btn/alerts").text
    assert _kinds(page) == ["srm", "guardrail_breach", "no_exposures"]
    assert "has the default rules" in page and page.count('<span class="badge">default</span>') == 3
    textarea = re.search(r'<textarea id="f-rules" name="rules"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    shown = json.loads(textarea.replace("&#34;", '"').replace("&quot;", '"'))
    assert [r["kind"] for r in shown] == ["srm", "guardrail_breach", "no_exposures"]
    assert all("id" not in r and "default" not in r for r in shown)  # documents, not records
    assert "volume_drop" in page and "robust z" in page  # the kinds are explained


def test_saving_a_rule_set_replaces_the_rules_and_is_audited(ui: UI, api: Any) -> None:
    _experiment(ui, api)
    rules = [{"kind": "srm", "p_value": 0.01, "severity": "critical"},
             {"kind": "volume_drop", "source": "events", "event": "purchase", "threshold": 4}]
    ui.post("/ui/experiments/btn/alerts", {"rules": json.dumps(rules)}, status=303)
    stored = api("get", "/experiments/btn/alerts")["rules"]
    assert [(r["kind"], r["severity"]) for r in stored] == [("srm", "critical"), ("volume_drop", "warning")]
    page = ui.get("/ui/experiments/btn/alerts").text
    assert _kinds(page) == ["srm", "volume_drop"] and "has the default rules" not in page
    assert "p_value 0.01" in page and "event purchase" in page
    record = audit(ui.runtime, action="experiment.alerts")[0]
    assert record["actor"] == "ui:alice" and record["target"] == "btn"
    ui.post("/ui/experiments/btn/alerts", {"rules": "[]"}, status=303)
    assert api("get", "/experiments/btn/alerts")["rules"] == []
    assert "alerts of btn are off" in ui.get("/ui/experiments/btn/alerts").text


def test_errors_are_shown_next_to_the_rules_with_their_path(ui: UI, api: Any) -> None:
    _experiment(ui, api)
    bad = ui.post("/ui/experiments/btn/alerts", {"rules": '[{"kind": "srm"}, {"kind": "bogus"}]'}, status=422).text
    assert "rules.1.kind" in field_error(bad, "rules") and "must be one of" in field_error(bad, "rules")
    assert "bogus" in bad  # what was typed is kept
    broken = ui.post("/ui/experiments/btn/alerts", {"rules": "[{"}, status=422).text
    assert "is not JSON" in field_error(broken, "rules")
    empty = ui.post("/ui/experiments/btn/alerts", {"rules": "  "}, status=422).text
    assert "[] turns this experiment" in field_error(empty, "rules")
    wrong = ui.post("/ui/experiments/btn/alerts", {"rules": '{"kind": "srm"}'}, status=422).text
    assert "must be a list" in field_error(wrong, "rules")
    assert len(api("get", "/experiments/btn/alerts")["rules"]) == 3  # still the defaults


def test_unknown_experiment_csrf_and_escaping(ui: UI, api: Any) -> None:
    ui.get("/ui/experiments/nope/alerts", status=404)
    _experiment(ui, api)
    assert ui.post("/ui/experiments/btn/alerts", {"rules": "[]"}, csrf=False).status_code == 400
    assert len(api("get", "/experiments/btn/alerts")["rules"]) == 3
    bad = ui.post("/ui/experiments/btn/alerts", {"rules": json.dumps([{"kind": XSS}])}, status=422).text
    assert XSS not in bad and "&lt;script&gt;" in bad


def test_another_environments_experiment_is_not_shown_here(ui: UI, api: Any) -> None:
    _experiment(ui, api)
    api("post", "/environments", {"key": "staging", "name": "Staging", "colour": "#1a7f37"}, 201)
    page = ui.get("/ui/experiments/btn/alerts?env=staging", status=404).text
    assert "is in environment &#39;production&#39;" in page
    ui.post("/ui/experiments/btn/alerts?env=staging", {"rules": "[]"}, status=404)
    assert len(api("get", "/experiments/btn/alerts")["rules"]) == 3
