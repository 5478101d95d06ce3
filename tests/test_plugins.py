"""Plugins: a third-party operator works end to end; hooks are documented and fire."""
from __future__ import annotations

import inspect
import types

import pytest

from flagship import hookspecs
from flagship.errors import ConfigError
from flagship.plugins import describe_plugins, make_plugin_manager, operator_table
from tests.conftest import boolean_flag, make_app
from tests.plugins import even_operator


@pytest.fixture
def plugin_app(database_url):
    even_operator.EVENTS.clear()
    app = make_app(database_url, PLUGINS="tests.plugins.even_operator", AUTH=False)
    yield app
    app.extensions["flagship"].db.dispose()


def test_hook_register_operators(plugin_app):
    """A plugin operator is validated at write time and evaluated end to end."""
    client = plugin_app.test_client()
    rule = {"kind": "force", "variant": "on",
            "conditions": [{"attribute": "seats", "operator": "is_even", "values": []}]}
    created = client.post("/api/v1/flags", json=boolean_flag(rules=[rule]))
    assert created.status_code == 201, created.json
    bad = client.post("/api/v1/flags", json=boolean_flag("x", rules=[
        {**rule, "conditions": [{"attribute": "seats", "operator": "is_even", "values": [3]}]}]))
    assert bad.status_code == 422 and "is_even takes no values" in bad.json["message"]
    result = client.post("/api/v1/evaluate", json={"context": {"key": "u1", "seats": 4}}).json
    assert result["flags"]["new-checkout"]["variant"] == "on"
    odd = client.post("/api/v1/evaluate", json={"context": {"key": "u1", "seats": 3}}).json
    assert odd["flags"]["new-checkout"]["variant"] == "off"
    snapshot = client.get("/api/v1/sdk/snapshot").json
    condition = snapshot["flags"][0]["rules"][0]["conditions"][0]
    assert condition["operator"] == "is_even"


def test_a_missing_plugin_costs_its_flags_not_the_environment(plugin_app, database_url, caplog):
    """A process without the plugin whose operator a stored flag uses (a restart that lost
    FLAGSHIP_PLUGINS): that flag answers ERROR with its default, like the SDK's; every other
    flag, the SDK snapshot and OFREP keep serving. It used to be a 422 for all of them."""
    client = plugin_app.test_client()
    rule = {"kind": "force", "variant": "on",
            "conditions": [{"attribute": "seats", "operator": "is_even", "values": []}]}
    assert client.post("/api/v1/flags", json=boolean_flag(rules=[rule])).status_code == 201
    assert client.post("/api/v1/flags", json=boolean_flag("plain", enabled=True)).status_code == 201
    without = make_app(database_url, AUTH=False)
    try:
        bare = without.test_client()
        with caplog.at_level("WARNING", logger="flagship.serving.cache"):
            result = bare.post("/api/v1/evaluate", json={"context": {"key": "u1", "seats": 4}})
            assert result.status_code == 200, result.json
            flags = result.json["flags"]
            assert flags["plain"]["reason"] != "ERROR"
            assert flags["new-checkout"]["reason"] == "ERROR" and flags["new-checkout"]["variant"] == "off"
            assert "not available" in flags["new-checkout"]["error_message"]
            assert bare.get("/api/v1/sdk/snapshot").status_code == 200
            ofrep = bare.post("/ofrep/v1/evaluate/flags/plain", json={"context": {"targetingKey": "u1"}})
            assert ofrep.status_code == 200, ofrep.json
            bare.post("/api/v1/evaluate", json={"context": {"key": "u2"}})
        warned = [r.getMessage() for r in caplog.records if "is_even" in r.getMessage()]
        assert len(warned) == 1 and "FLAGSHIP_PLUGINS" in warned[0]
    finally:
        without.extensions["flagship"].db.dispose()


def test_hook_track_event(plugin_app):
    """track_event fires after commit with the audit record."""
    client = plugin_app.test_client()
    client.post("/api/v1/flags", json=boolean_flag())
    client.post("/api/v1/flags/new-checkout/disable")
    assert [e["action"] for e in even_operator.EVENTS] == ["flag.create", "flag.disable"]
    assert even_operator.EVENTS[1]["after"]["enabled"] is False
    client.post("/api/v1/flags", json=boolean_flag())  # 409: nothing committed, no event
    assert len(even_operator.EVENTS) == 2


def test_failing_notifier_never_breaks_a_write(database_url, monkeypatch):
    def explode(event):
        raise RuntimeError("notifier down")
    monkeypatch.setattr(even_operator, "track_event", even_operator.hookimpl(explode))
    app = make_app(database_url, PLUGINS="tests.plugins.even_operator", AUTH=False)
    response = app.test_client().post("/api/v1/flags", json=boolean_flag())
    assert response.status_code == 201
    app.extensions["flagship"].db.dispose()


def test_builtins_register_through_the_same_hook():
    pm = make_plugin_manager(entry_points=False)
    names = {row["name"] for row in describe_plugins(pm)}
    assert "flagship.plugins.default_operators" in names
    table = operator_table(pm)
    assert {"eq", "matches", "semver_gte", "before", "exists"} <= set(table)


def test_duplicate_operator_names_and_bad_plugin_paths_fail_at_start():
    pm = make_plugin_manager(["tests.plugins.even_operator"], entry_points=False)
    again = types.ModuleType("again")
    again.register_operators = even_operator.register_operators
    pm.register(again, name="again")
    with pytest.raises(ConfigError, match="is_even"):
        operator_table(pm)
    with pytest.raises(ConfigError, match="no_such_module"):
        make_plugin_manager(["no_such_module"], entry_points=False)


def test_every_hookspec_is_documented():
    specs = [obj for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(obj, "flagship_spec")]
    assert {spec.__name__ for spec in specs} >= {"register_operators", "track_event"}
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        assert "Fires:" in doc and len(doc) > 200, spec.__name__


def test_entry_point_plugins_are_loaded(tmp_path, monkeypatch):
    dist = tmp_path / "flagship_even-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flagship-even\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[flagship]\neven = tests.plugins.even_operator\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager(entry_points=True)
    assert "is_even" in operator_table(pm)
    row = next(r for r in describe_plugins(pm) if r["name"] == "even")
    assert row["distribution"] == "flagship-even 1.0" and "register_operators" in row["hooks"]


def test_every_hookspec_has_a_test_that_exercises_it():
    """Datasette's rule: each hook `x` has a `test_hook_x` somewhere in the suite."""
    import ast
    from pathlib import Path

    names = {n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "flagship_spec")}
    assert {"register_operators", "track_event", "register_guardrails", "notify"} <= names
    tests = {node.name for path in Path(__file__).parent.rglob("test_*.py")
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
    assert sorted(n for n in names if f"test_hook_{n}" not in tests) == []
