"""Configuration as code: export, apply (dry run, conflicts, idempotence), CLI and HTTP."""
from __future__ import annotations

import json

import pytest

from flagship import configfile
from flagship.errors import ConflictError, ValidationError
from flagship.rollout import notify_store
from tests.conftest import boolean_flag, make_app

POLICY = {"evaluation_interval": 60, "steps": [{"percent": 10, "min_duration": 600, "min_units": 100},
                                               {"percent": 50, "min_duration": "1h", "min_units": 100}],
          "checks": [{"id": "errors", "type": "metric_regression", "metric": "purchases"}]}
OPS_SECRET = "s3cret-" + "x" * 20


def _populate(api) -> None:
    api("post", "/environments", {"key": "staging", "name": "Staging", "colour": "#1a7f37"}, 201)
    api("post", "/segments", {"key": "staff", "conditions": [
        {"attribute": "email", "operator": "ends_with", "values": ["@example.com"]}]}, 201)
    api("post", "/flags", boolean_flag("checkout", tags=["web"], rules=[
        {"kind": "force", "variant": "on", "conditions": [{"segment": "staff"}]},
        {"kind": "rollout", "variant": "on", "percentage": 25}]), 201)
    api("patch", "/flags/checkout/environments/staging", {"version": 1, "enabled": True,
                                                          "rules": [{"kind": "rollout", "variant": "on",
                                                                     "percentage": 100}]})
    api("post", "/metrics", {"key": "purchases", "event": "purchase", "kind": "conversion"}, 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "button", "flag": "colour", "layer": "main",
                                 "traffic_percentage": 40, "success_metrics": ["purchases"],
                                 "variants": [{"variant": "blue", "value": "#00f", "is_control": True},
                                              {"variant": "green", "value": "#0a0"}]}, 201)


def test_export_then_apply_to_an_empty_store_round_trips(api, runtime, database_url, tmp_path):
    _populate(api)
    exported = configfile.export_config(runtime)
    assert list(exported) == ["flagship", *configfile.SECTIONS]
    assert all(r["kind"] != "experiment" for r in
               exported["flags"]["colour"]["environments"]["production"]["rules"])
    text = configfile.dump_text(exported)
    assert configfile.apply_config(runtime, "t", configfile.load_text(text))["changes"] == []

    from flagship.db import upgrade

    url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(url)
    fresh = make_app(url).extensions["flagship"]
    try:
        dry = configfile.apply_config(fresh, "t", configfile.load_text(text), dry_run=True)
        assert dry["applied"] is False and {(c["kind"], c["key"], c["action"]) for c in dry["changes"]} >= {
            ("environment", "staging", "create"), ("flag", "checkout", "create"),
            ("segment", "staff", "create"), ("experiment", "button", "create")}
        assert configfile.export_config(fresh)["flags"] == {}  # a dry run writes nothing
        done = configfile.apply_config(fresh, "t", configfile.load_text(text))
        assert done["applied"] and done["change_set"]
        assert configfile.export_config(fresh) == exported
        again = configfile.apply_config(fresh, "t", configfile.load_text(text))
        assert again["changes"] == [] and again["applied"] is False and again["unchanged"] > 8
    finally:
        fresh.close()


def test_apply_shows_a_diff_and_is_audited_as_one_change_set(api, runtime):
    _populate(api)
    doc = configfile.export_config(runtime)
    doc["flags"]["checkout"]["environments"]["production"]["rules"][1]["percentage"] = 50
    doc["flags"]["checkout"]["description"] = "the new checkout"
    doc["metrics"]["purchases"]["direction"] = "decrease"
    result = configfile.apply_config(runtime, "key:ci", doc)
    changed = {(c["kind"], c["key"], c["environment"]): c["changes"] for c in result["changes"]}
    assert {"path": "rules.1.percentage", "op": "replace", "before": 25.0, "after": 50} in \
        changed[("flag", "checkout", "production")] or any(
            d["path"] == "rules.1.percentage" for d in changed[("flag", "checkout", "production")])
    assert ("metric", "purchases", None) in changed
    flag = api("get", "/flags/checkout")
    assert flag["rules"][1]["percentage"] == 50 and flag["description"] == "the new checkout"
    assert api("get", "/flags/checkout/environments/staging")["description"] == "the new checkout"
    records = api("get", "/audit?action=config.apply")["items"]
    assert len(records) == 1 and records[0]["target"] == result["change_set"]
    assert records[0]["actor"] == "key:ci" and len(records[0]["after"]["changes"]) == len(result["changes"])
    assert api("get", "/flags/checkout/revisions")["items"][0]["action"] == "config"


def test_a_concurrent_change_aborts_the_whole_apply_naming_the_object(api, runtime):
    _populate(api)
    doc = configfile.export_config(runtime)
    doc["segments"]["production"]["staff"]["conditions"][0]["values"] = ["@example.org"]
    doc["flags"]["checkout"]["environments"]["production"]["enabled"] = False
    changes, _ = configfile.plan(runtime, doc)
    api("post", "/flags/checkout/disable")  # someone else, between plan and apply
    with pytest.raises(ConflictError) as raised:
        configfile.execute(runtime, "t", changes)
    assert "checkout" in raised.value.message
    segment = api("get", "/segments/staff")
    assert segment["conditions"][0]["values"] == ["@example.com"]  # nothing was applied
    changes, _ = configfile.plan(runtime, doc)
    api("put", "/segments/staff", {"version": segment["version"], "conditions": []})
    with pytest.raises(ConflictError) as raised:
        configfile.execute(runtime, "t", changes)
    assert "segment 'staff'" in raised.value.message


def test_bad_files_are_refused_with_the_object_named(runtime):
    with pytest.raises(ValidationError, match="unknown section 'rollouts'"):
        configfile.apply_config(runtime, "t", {"flagship": 1, "rollouts": {}})
    with pytest.raises(ValidationError, match="flags.bad"):
        configfile.apply_config(runtime, "t", {"flags": {"bad": {"type": "boolean", "variants": {}}}})
    with pytest.raises(ValidationError, match="aliases"):
        configfile.load_text("a: &x [1]\nb: *x\n")
    with pytest.raises(ValidationError, match="format version"):
        configfile.load_text("flagship: 2\n")
    assert configfile.load_text("experiments:\n  e:\n    start_at: 2026-01-01T00:00:00Z\n")[
        "experiments"]["e"]["start_at"] == "2026-01-01T00:00:00Z"  # dates stay strings


def test_the_cli_exports_and_applies(runner, api, runtime, tmp_path):
    _populate(api)
    exported = runner("config", "export")
    assert exported.exit_code == 0 and exported.stdout.startswith("flagship: 1")
    path = tmp_path / "flagship.yaml"
    path.write_text(exported.stdout.replace("percentage: 25", "percentage: 30"))
    dry = runner("config", "apply", str(path), "--dry-run")
    assert dry.exit_code == 0 and "~ flag checkout (production)" in dry.stdout
    assert "rules.1.percentage: 25.0 -> 30" in dry.stdout and "dry run" in dry.stdout
    assert api("get", "/flags/checkout")["rules"][1]["percentage"] == 25
    applied = runner("config", "apply", str(path))
    assert applied.exit_code == 0 and "applied as change set" in applied.stdout
    assert api("get", "/flags/checkout")["rules"][1]["percentage"] == 30
    again = runner("config", "apply", str(path), "--json")
    assert json.loads(again.stdout)["changes"] == []


def test_the_http_api_exports_and_applies(api, client, admin, runtime):
    _populate(api)
    doc = api("get", "/config")
    assert doc["flags"]["checkout"]["type"] == "boolean"
    yaml_text = client.get("/api/v1/config?format=yaml", headers=admin)
    assert yaml_text.mimetype == "application/yaml" and configfile.load_text(yaml_text.get_data(as_text=True)) == doc
    doc["layers"]["main"]["description"] = "the main layer"
    dry = api("post", "/config/apply", {"config": doc, "dry_run": True})
    assert [c["kind"] for c in dry["changes"]] == ["layer"] and not dry["applied"]
    done = api("post", "/config/apply", {"config": doc})
    assert done["applied"] and api("get", "/layers/main")["description"] == "the main layer"
    assert api("post", "/config/apply", {"config": doc})["changes"] == []
    assert api("post", "/config/apply", {"config": {"flagship": 1, "rollouts": {}}}, 422)["code"] == 422


# -- rollout templates and webhooks --------------------------------------------------------------

def _populate_rollout(api) -> str:
    """A template and two webhooks (one with a given secret); the generated secret."""
    api("post", "/rollout-templates", {"key": "guarded", "description": "10 then 50", "policy": POLICY}, 201)
    api("post", "/webhooks", {"name": "ops", "url": "https://hooks.example.com/ops",
                              "event_types": ["rollout.*", "alert.opened"], "secret": OPS_SECRET}, 201)
    return api("post", "/webhooks", {"name": "staging feed", "url": "https://hooks.example.com/s",
                                     "event_types": ["flag.*"], "environment": "staging",
                                     "enabled": False}, 201)["secret"]


def _secret(runtime, name):
    with runtime.db.session() as session:
        return notify_store.webhook_by_name(session, name).secret


def test_templates_and_webhooks_are_exported_without_secrets_and_round_trip(api, client, admin, runtime,
                                                                            tmp_path):
    _populate(api)
    generated = _populate_rollout(api)
    exported = configfile.export_config(runtime)
    assert exported["rollout_templates"] == {"guarded": {
        "name": "guarded", "description": "10 then 50", "policy": api("get", "/rollout-templates/guarded")["policy"]}}
    assert exported["webhooks"] == {
        "ops": {"url": "https://hooks.example.com/ops", "event_types": ["rollout.*", "alert.opened"],
                "environment": None, "enabled": True},
        "staging feed": {"url": "https://hooks.example.com/s", "event_types": ["flag.*"],
                         "environment": "staging", "enabled": False}}
    text = configfile.dump_text(exported)
    for shown in (text, json.dumps(api("get", "/config")),
                  client.get("/api/v1/config?format=yaml", headers=admin).get_data(as_text=True)):
        assert OPS_SECRET not in shown and generated not in shown and "secret" not in shown

    from flagship.db import upgrade

    url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(url)
    fresh = make_app(url).extensions["flagship"]
    try:
        dry = configfile.apply_config(fresh, "t", configfile.load_text(text), dry_run=True)
        planned = {(c["kind"], c["key"]): c for c in dry["changes"]}
        assert planned[("rollout_template", "guarded")]["action"] == "create"
        assert planned[("webhook", "ops")]["secret_generated"] is True and dry["secrets"] == {}
        assert "whsec_" not in json.dumps(dry)
        after_dry = configfile.export_config(fresh)
        assert after_dry["rollout_templates"] == {} and after_dry["webhooks"] == {}  # nothing written
        done = configfile.apply_config(fresh, "t", configfile.load_text(text))
        assert set(done["secrets"]) == {"ops", "staging feed"}
        assert all(v.startswith("whsec_") and v == _secret(fresh, k) for k, v in done["secrets"].items())
        assert configfile.export_config(fresh) == exported
        again = configfile.apply_config(fresh, "t", configfile.load_text(text))
        assert again["changes"] == [] and again["secrets"] == {} and not again["applied"]
        assert _secret(fresh, "ops") == done["secrets"]["ops"]  # still the one shown once
    finally:
        fresh.close()


def test_template_and_webhook_updates_keep_the_secret_and_are_one_audited_change_set(api, runtime):
    _populate(api)
    generated = _populate_rollout(api)
    doc = configfile.export_config(runtime)
    doc["rollout_templates"]["guarded"]["policy"]["steps"][0]["percent"] = 20
    doc["webhooks"]["ops"].update(url="https://hooks.example.com/ops2", enabled=False)
    doc["webhooks"]["new"] = {"url": "https://hooks.example.com/new", "event_types": ["*"]}
    result = configfile.apply_config(runtime, "key:ci", doc)
    changes = {(c["kind"], c["key"]): c for c in result["changes"]}
    assert set(changes) == {("rollout_template", "guarded"), ("webhook", "ops"), ("webhook", "new")}
    assert [d["path"] for d in changes[("rollout_template", "guarded")]["changes"]] == ["policy.steps.0.percent"]
    assert {d["path"] for d in changes[("webhook", "ops")]["changes"]} == {"url", "enabled"}
    assert "secret_generated" not in changes[("webhook", "ops")]
    assert list(result["secrets"]) == ["new"] and result["secrets"]["new"] == _secret(runtime, "new")
    assert _secret(runtime, "ops") == OPS_SECRET and _secret(runtime, "staging feed") == generated
    assert api("get", "/rollout-templates/guarded")["policy"]["steps"][0]["percent"] == 20
    hooks = {w["name"]: w for w in api("get", "/webhooks")}
    assert hooks["ops"]["url"].endswith("/ops2") and not hooks["ops"]["enabled"] and hooks["new"]["enabled"]

    records = api("get", "/audit?action=config.apply")["items"]
    assert len(records) == 1 and records[0]["target"] == result["change_set"]
    assert {(c["kind"], c["key"], c["action"]) for c in records[0]["after"]["changes"]} == {
        ("rollout_template", "guarded", "update"), ("webhook", "ops", "update"), ("webhook", "new", "create")}
    own = {r["action"] for r in api("get", "/audit?per_page=100")["items"] if r["actor"] == "key:ci"}
    assert own == {"config.apply", "rollout_template.update", "webhook.update", "webhook.create"}
    audit_text = json.dumps(api("get", "/audit?per_page=100"))
    assert OPS_SECRET not in audit_text and result["secrets"]["new"] not in audit_text
    assert configfile.apply_config(runtime, "key:ci", doc)["changes"] == []


def test_a_concurrent_template_or_webhook_change_aborts_naming_it(api, runtime):
    _populate(api)
    _populate_rollout(api)
    doc = configfile.export_config(runtime)
    doc["rollout_templates"]["guarded"]["description"] = "from the file"
    doc["webhooks"]["ops"]["url"] = "https://hooks.example.com/file"
    changes, _ = configfile.plan(runtime, doc)
    template = api("get", "/rollout-templates/guarded")
    api("put", "/rollout-templates/guarded", {"version": template["version"], "policy": POLICY,
                                              "description": "meanwhile"})
    with pytest.raises(ConflictError) as raised:
        configfile.execute(runtime, "t", changes)
    assert "rollout template 'guarded'" in raised.value.message
    assert api("get", "/webhooks")[0]["url"] == "https://hooks.example.com/ops"  # nothing was applied

    changes, _ = configfile.plan(runtime, doc)
    ops = api("get", "/webhooks")[0]
    api("patch", f"/webhooks/{ops['id']}", {"enabled": False})
    with pytest.raises(ConflictError) as raised:
        configfile.execute(runtime, "t", changes)
    assert "webhook 'ops'" in raised.value.message
    assert api("get", "/rollout-templates/guarded")["description"] == "meanwhile"

    doc = {"webhooks": {"late": {"url": "https://hooks.example.com/late", "event_types": ["*"]}}}
    changes, _ = configfile.plan(runtime, doc)
    api("post", "/webhooks", {"name": "late", "url": "https://hooks.example.com/other", "event_types": ["*"]}, 201)
    with pytest.raises(ConflictError, match="webhook 'late'"):
        configfile.execute(runtime, "t", changes)


def test_bad_templates_and_webhooks_are_refused_naming_the_path(api, runtime):
    bad_policy = {"policy": {**POLICY, "steps": [{"percent": 150, "min_duration": 60, "min_units": 1}]}}
    from_api = api("post", "/rollout-templates", {"key": "t", **bad_policy}, 422)["errors"]["json"]
    with pytest.raises(ValidationError) as raised:
        configfile.apply_config(runtime, "t", {"rollout_templates": {"t": bad_policy}}, dry_run=True)
    assert list(raised.value.errors) == [f"rollout_templates.t.{path}" for path in from_api] == [
        "rollout_templates.t.policy.steps.0.percent"]
    hook = {"url": "https://hooks.example.com/x", "event_types": ["*"]}
    for section, entry, path in [
            ("rollout_templates", {"policy": POLICY, "owner": "me"}, "rollout_templates.t.owner"),
            ("rollout_templates", {"description": "no policy"}, "rollout_templates.t.policy"),
            ("rollout_templates", {"policy": {**POLICY, "evaluation_interval": 0}},
             "rollout_templates.t.policy.evaluation_interval"),
            ("webhooks", {**hook, "secret": OPS_SECRET}, "webhooks.t.secret"),
            ("webhooks", {**hook, "name": "other"}, "webhooks.t.name"),
            ("webhooks", {**hook, "url": "ftp://example.com/x"}, "webhooks.t.url"),
            ("webhooks", {**hook, "event_types": ["rollout.?"]}, "webhooks.t.event_types.0"),
            ("webhooks", {"url": hook["url"]}, "webhooks.t.event_types"),
            ("webhooks", {**hook, "environment": "nowhere"}, "webhooks.t.environment")]:
        with pytest.raises(ValidationError) as raised:
            configfile.apply_config(runtime, "t", {section: {"t": entry}})
        assert list(raised.value.errors) == [path], (entry, raised.value.errors)
        assert OPS_SECRET not in raised.value.message
    body = api("post", "/config/apply", {"config": {"rollout_templates": {"t": bad_policy}}}, 422)
    assert "rollout_templates.t.policy.steps.0.percent" in json.dumps(body)
    # a webhook may filter on an environment the same file creates
    done = configfile.apply_config(runtime, "t", {"environments": {"qa": {"name": "QA"}},
                                                  "webhooks": {"qa": {**hook, "environment": "qa"}}})
    assert done["applied"] and api("get", "/webhooks")[0]["environment"] == "qa"


def test_the_cli_and_http_api_show_a_new_webhooks_secret_once(runner, api, runtime, tmp_path):
    path = tmp_path / "flagship.yaml"
    path.write_text("webhooks:\n  ops:\n    url: https://hooks.example.com/ops\n    event_types: ['*']\n")
    dry = runner("config", "apply", str(path), "--dry-run")
    assert dry.exit_code == 0 and "+ webhook ops" in dry.stdout and "secret is generated" in dry.stdout
    assert "whsec_" not in dry.stdout and api("get", "/webhooks") == []
    applied = runner("config", "apply", str(path))
    assert applied.exit_code == 0 and f"(shown this once): {_secret(runtime, 'ops')}" in applied.stdout
    doc = api("get", "/config")
    doc["webhooks"]["ops"]["event_types"] = ["flag.*"]
    doc["webhooks"]["second"] = {"url": "https://hooks.example.com/2", "event_types": ["*"]}
    dry = api("post", "/config/apply", {"config": doc, "dry_run": True})
    assert dry["secrets"] == {} and [c.get("secret_generated") for c in dry["changes"]] == [None, True]
    done = api("post", "/config/apply", {"config": doc})
    assert list(done["secrets"]) == ["second"] and done["secrets"]["second"] == _secret(runtime, "second")
