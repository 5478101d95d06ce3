"""Segments, environments, layers, metrics, the audit log and API keys."""
from __future__ import annotations

import re
from typing import Any

from flagship.auth import verify_key
from tests.conftest import boolean_flag
from tests.ui_support import UI, audit, field_error, ui  # noqa: F401 - fixture


def test_segments_create_edit_and_a_delete_refused_while_in_use(ui: UI, api: Any) -> None:
    form = ui.post("/ui/segments/-/new", {"key": "staff", "op": "add-cond"}, htmx=True, status=200).text
    assert 'name="conditions.0.attribute"' in form and 'name="conditions.0.segment"' not in form
    ui.post("/ui/segments/-/new", {"key": "staff", "name": "Staff", "conditions.0.kind": "attribute",
                                 "conditions.0.attribute": "email", "conditions.0.operator": "ends_with",
                                 "conditions.0.values": "@example.com", "included": "u1\nu2"}, status=303)
    segment = api("get", "/segments/staff")
    assert segment["conditions"][0]["values"] == ["@example.com"] and segment["included"] == ["u1", "u2"]
    assert "Staff" in ui.get("/ui/segments").text
    bad = ui.post("/ui/segments/staff", {"key": "staff", "version": "1", "included": "a", "excluded": "a"},
                  status=422).text
    assert "in both included and excluded" in field_error(bad, "excluded")
    ui.post("/ui/segments/staff", {"key": "staff", "version": "1", "name": "Employees"}, status=303)
    stale = ui.post("/ui/segments/staff", {"key": "staff", "version": "1", "name": "Late"}, status=409).text
    assert "This segment was changed by ui:alice" in stale
    api("post", "/flags", boolean_flag("f", rules=[{"kind": "force", "variant": "on",
                                                     "conditions": [{"segment": "staff"}]}]), 201)
    refused = ui.post("/ui/segments/staff/delete", status=409).text
    assert "segment &#39;staff&#39; is used by flags: f" in refused


def test_environments_list_create_copy_edit_and_delete(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f", rules=[{"kind": "rollout", "variant": "on", "percentage": 20}]), 201)
    assert "Production" in ui.get("/ui/environments").text
    form = ui.get("/ui/environments/-/new").text
    assert 'type="color"' in form and "Start from" in form
    bad = ui.post("/ui/environments/-/new", {"key": "bad key", "name": "x", "colour": "#000000"}, status=422).text
    assert field_error(bad, "key")
    ui.post("/ui/environments/-/new", {"key": "staging", "name": "Staging", "colour": "#1a7f37",
                                     "copy_from": "production"}, status=303)
    assert api("get", "/flags/f?environment=staging")["rules"][0]["percentage"] == 20
    ui.post("/ui/environments/staging/edit", {"name": "Stage", "colour": "#0969da", "position": "3",
                                              "version": "1"}, status=303)
    assert api("get", "/environments/staging")["colour"] == "#0969da"
    stale = ui.post("/ui/environments/staging/edit", {"name": "x", "colour": "#0969da", "version": "1"}, status=409)
    assert "This environment was changed by ui:alice" in stale.text
    ui.post("/ui/environments/staging/delete", status=303)
    api("get", "/environments/staging", status=404)
    assert "default environment" in ui.post("/ui/environments/production/delete", status=409).text


def test_layers_show_the_allocation_map_as_a_10000_bucket_bar(ui: UI, api: Any) -> None:
    ui.post("/ui/layers", {"key": "main", "name": "Main"}, status=303)
    api("post", "/metrics", {"key": "m", "event": "e", "kind": "conversion"}, 201)
    for key, share in (("a", 30), ("b", 20)):
        api("post", "/experiments", {"key": key, "flag": f"flag-{key}", "layer": "main", "traffic_percentage": share,
                                     "variants": [{"variant": "x", "value": 1, "is_control": True},
                                                  {"variant": "y", "value": 2}]}, 201)
        api("post", f"/experiments/{key}/start")
    api("post", "/experiments/b/stop", {})
    listing = ui.get("/ui/layers").text
    assert 'viewBox="0 0 1000 18"' in listing and "free 70%" in listing
    page = ui.get("/ui/layers/main").text
    assert 'role="img" aria-label="Layer main: a 30%; free 70%"' in page
    assert '<rect x="0.00" y="0" width="300.00"' in page and "<code>[0, 3000)</code>" in page
    assert "<code>[3000, 10000)</code>" in page
    assert re.search(r"Released</h2>.*experiments/b\?", page, re.S)  # b finished: its buckets came back
    duplicate = ui.post("/ui/layers", {"key": "main"}, status=409).text
    assert "already exists" in duplicate



def test_the_layer_form_checks_the_key_like_the_api(ui: UI, api: Any) -> None:
    """An empty key was a 500 (KeyError); 'bad key/ü' was stored, at a URL no link reached."""
    for key in ("", "bad key/ü", "x" * 300):
        page = ui.post("/ui/layers", {"key": key}, status=422).text
        assert "letters, digits" in page, key
    assert api("get", "/layers") == []


def test_a_layer_is_renamed_with_its_version_and_deleted_once_empty(ui: UI, api: Any) -> None:
    ui.post("/ui/layers", {"key": "main", "name": "Main"}, status=303)
    version = api("get", "/layers/main")["version"]
    ui.post("/ui/layers/main", {"name": "Checkout", "description": "<b>bold</b>", "version": str(version)},
            status=303)
    layer = api("get", "/layers/main")
    assert (layer["name"], layer["description"]) == ("Checkout", "<b>bold</b>")
    assert audit(ui.runtime, action="layer.update")[0]["actor"] == "ui:alice"
    assert "&lt;b&gt;bold&lt;/b&gt;" in ui.get("/ui/layers/main").text
    stale = ui.post("/ui/layers/main", {"name": "Old", "description": "", "version": str(version)}, status=409).text
    assert "This layer was changed by ui:alice" in stale and api("get", "/layers/main")["name"] == "Checkout"
    api("post", "/metrics", {"key": "m", "event": "e", "kind": "conversion"}, 201)
    api("post", "/experiments", {"key": "a", "flag": "flag-a", "layer": "main", "traffic_percentage": 10,
                                 "variants": [{"variant": "x", "value": 1, "is_control": True},
                                              {"variant": "y", "value": 2}]}, 201)
    refused = ui.post("/ui/layers/main/delete", status=409).text
    assert "holds draft experiments: a" in refused
    api("delete", "/experiments/a", status=204)
    assert ui.post("/ui/layers/main/delete", csrf=False).status_code == 400  # CSRF first
    ui.post("/ui/layers/main/delete", status=303)
    api("get", "/layers/main", status=404)

def test_metrics_create_edit_delete(ui: UI, api: Any) -> None:
    bad = ui.post("/ui/metrics/-/new", {"key": "rev", "event": "purchase", "kind": "ratio"}, status=422).text
    assert "needs the event it divides by" in field_error(bad, "denominator_event")
    bad = ui.post("/ui/metrics/-/new", {"key": "rev", "event": "p", "kind": "sum", "winsorize_percentile": "lots"},
                  status=422).text
    assert field_error(bad, "winsorize_percentile") == "must be a number"
    ui.post("/ui/metrics/-/new", {"key": "rev", "name": "Revenue", "event": "purchase", "kind": "sum",
                                "winsorize_percentile": "99"}, status=303)
    assert api("get", "/metrics/rev")["winsorize_percentile"] == 99
    assert "Revenue" in ui.get("/ui/metrics").text
    ui.post("/ui/metrics/rev/edit", {"name": "Revenue per user", "event": "purchase", "kind": "sum",
                                     "version": "1"}, status=303)
    assert api("get", "/metrics/rev")["name"] == "Revenue per user"
    ui.post("/ui/metrics/rev/delete", status=303)
    api("get", "/metrics/rev", status=404)


def test_the_audit_log_filters_and_shows_before_and_after(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f", description="old"), 201)
    ui.post("/ui/flags/f/toggle", {"enabled": "0"}, status=303)
    api("patch", "/flags/f", {"version": 2, "description": "new"})
    everything = ui.get("/ui/audit").text
    assert "ui:alice" in everything and "key:test-admin" in everything
    mine = ui.get("/ui/audit?actor=ui:alice").text
    assert "flag.disable" in mine and "flag.create" not in mine
    fragment = ui.get("/ui/audit?action=flag.update&target=f", htmx=True).text
    assert fragment.lstrip().startswith('<div id="audit-table">')
    assert "<code>description</code>" in fragment and "&#34;old&#34;" in fragment and "&#34;new&#34;" in fragment
    assert "No audit records match." in ui.get("/ui/audit?environment=production&target_type=layer").text


def test_api_keys_show_the_secret_once_and_revoke(ui: UI, api: Any) -> None:
    created = ui.post("/ui/keys", {"name": "web", "scope": "sdk", "environment": "production"}, status=201).text
    secret = re.search(r'id="secret" type="text" readonly value="([^"]+)"', created).group(1)
    assert "shown this once" in created and verify_key(ui.runtime, secret) == ("web", "sdk", "production")
    listing = ui.get("/ui/keys").text
    assert "web" in listing and secret not in listing and f"{secret[:12]}…" in listing
    assert audit(ui.runtime, action="api_key.create")[0]["actor"] == "ui:alice"
    duplicate = ui.post("/ui/keys", {"name": "web", "scope": "sdk"}, status=409).text
    assert "already exists" in field_error(duplicate, "name")
    ui.post("/ui/keys/web/revoke", status=303)
    assert verify_key(ui.runtime, secret) is None
    assert "revoked" in ui.get("/ui/keys").text
    slashed = ui.post("/ui/keys", {"name": "team/web", "scope": "sdk"}, status=201).text
    secret = re.search(r'id="secret" type="text" readonly value="([^"]+)"', slashed).group(1)
    assert 'action="/ui/keys/team/web/revoke' in ui.get("/ui/keys").text
    ui.post("/ui/keys/team/web/revoke", status=303)  # was a 404: the route took no "/"
    assert verify_key(ui.runtime, secret) is None


def test_a_layer_of_another_environment_is_not_edited_here_nor_by_a_key_bound_elsewhere(
        ui: UI, api: Any, client: Any, runtime: Any) -> None:
    from flagship.auth import create_key

    api("post", "/environments", {"key": "staging", "name": "Staging", "colour": "#1a7f37"}, 201)
    ui.post("/ui/layers", {"key": "main", "name": "Main"}, status=303)  # production
    assert "is in environment &#39;production&#39;" in ui.get("/ui/layers/main?env=staging", status=404).text
    ui.post("/ui/layers/main/delete?env=staging", status=404)
    staging = {"Authorization": f"Bearer {create_key(runtime, 'test', 'stager', 'admin', environment='staging')}"}
    version = api("get", "/layers/main")["version"]
    assert client.get("/api/v1/layers/main", headers=staging).status_code == 403
    assert client.patch("/api/v1/layers/main", json={"name": "x", "version": version},
                        headers=staging).status_code == 403
    assert client.delete("/api/v1/layers/main", headers=staging).status_code == 403
    assert api("get", "/layers/main")["name"] == "Main"
