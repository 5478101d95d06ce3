"""Configuration as code: export, apply (dry run, conflicts, idempotence), CLI and HTTP."""
from __future__ import annotations

import json

import pytest

from flagship import configfile
from flagship.errors import ConflictError, ValidationError
from tests.conftest import boolean_flag, make_app


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
    with pytest.raises(ValidationError, match="unknown section 'webhooks'"):
        configfile.apply_config(runtime, "t", {"flagship": 1, "webhooks": {}})
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
