"""Flag screens: list, kill switch, create, rule editor, stale versions, field errors,
escaping, revisions, definition, explain, promotion."""
from __future__ import annotations

import re
from typing import Any

from tests.conftest import boolean_flag, make_app
from tests.ui_support import UI, audit, field_error, ui  # noqa: F401 - fixture

XSS = "<script>alert(1)</script>"


def evaluate(api: Any, key: str, context: dict[str, Any], env: str = "production") -> Any:
    return api("post", f"/evaluate?environment={env}", {"context": context, "flags": [key]})["flags"][key]


def test_the_list_searches_filters_by_tag_and_pages(ui: UI, api: Any) -> None:
    for i in range(55):
        api("post", "/flags", boolean_flag(f"flag-{i:02d}", tags=["odd"] if i % 2 else ["even"],
                                           description=f"number {i}"), 201)
    page = ui.get("/ui/flags").text
    assert "flag-00" in page and "flag-49" in page and "flag-50" not in page
    assert "Page 1 of 2 (55 in all)" in page
    assert re.search(r'href="/ui/flags\?env=production&amp;page=2" rel="next"', page)
    assert "flag-54" in ui.get("/ui/flags?page=2").text
    found = ui.get("/ui/flags?q=number 1", htmx=True).text
    assert found.startswith('\n<div id="flag-table">') or found.lstrip().startswith('<div id="flag-table">')
    assert "<html" not in found and "flag-13" in found and "flag-02" not in found
    tagged = ui.get("/ui/flags?tag=odd").text
    assert "flag-01" in tagged and "flag-02" not in tagged and "27 in all" in tagged
    assert "No flags match this search" in ui.get("/ui/flags?q=zzz").text


def test_a_row_shows_type_variants_rollout_and_the_last_change(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("ramp", rules=[{"kind": "rollout", "variant": "on", "percentage": 12.5}]), 201)
    row = re.search(r'<tr id="flag-row-ramp">.*?</tr>', ui.get("/ui/flags").text, re.S).group(0)
    assert "boolean" in row and "<code>on</code>" in row and "12.5% on" in row
    assert "by key:test-admin" in row and 'aria-checked="true"' in row and 'role="switch"' in row


def test_the_kill_switch_flips_with_one_click_and_the_audit_names_the_ui_user(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("checkout", rules=[{"kind": "rollout", "variant": "on", "percentage": 100}]), 201)
    assert evaluate(api, "checkout", {"key": "u1"})["value"] is True
    row = ui.post("/ui/flags/checkout/toggle", {"enabled": "0", "fragment": "row"}, htmx=True, status=200).text
    assert row.strip().startswith('<tr id="flag-row-checkout">') and 'aria-checked="false"' in row
    assert evaluate(api, "checkout", {"key": "u1"}) == {"value": False, "variant": "off", "reason": "DISABLED", "rule_id": None}
    record = audit(ui.runtime, target="checkout", action="flag.disable")[0]
    assert record["actor"] == "ui:alice" and record["environment"] == "production"
    back = ui.post("/ui/flags/checkout/toggle", {"enabled": "1", "back": "/ui/flags?q=check"}, status=303)
    assert back.headers["Location"] == "/ui/flags?q=check"
    assert evaluate(api, "checkout", {"key": "u1"})["value"] is True


def test_a_critical_flag_asks_before_its_kill_switch_flips(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("payments", tags=["critical"]), 201)
    row = re.search(r'<tr id="flag-row-payments">.*?</tr>', ui.get("/ui/flags").text, re.S).group(0)
    assert "hx-confirm=" in row and "is tagged critical" in row
    asked = ui.post("/ui/flags/payments/toggle", {"enabled": "0"}, status=200).text
    assert "needs a confirmation" in asked and 'name="confirm" value="yes"' in asked
    assert api("get", "/flags/payments")["enabled"] is True
    ui.post("/ui/flags/payments/toggle", {"enabled": "0", "confirm": "yes"}, status=303)
    assert api("get", "/flags/payments")["enabled"] is False


def test_create_a_flag_and_see_field_errors_next_to_the_field(ui: UI, api: Any) -> None:
    bad = ui.post("/ui/flags/-/new", {"key": "not a key!", "type": "boolean", "variants.0.name": "on",
                                    "variants.0.value": "true", "variants.1.name": "off",
                                    "variants.1.value": "false", "default_variant": "off"}, status=422)
    assert "invalid key" in field_error(bad.text, "key")
    assert 'aria-invalid="true"' in bad.text and 'value="not a key!"' in bad.text  # input kept
    wrong = ui.post("/ui/flags/-/new", {"key": "size", "type": "number", "variants.0.name": "small",
                                      "variants.0.value": "ten", "default_variant": "small"}, status=422)
    assert "must be a number" in wrong.text
    made = ui.post("/ui/flags/-/new", {"key": "colour", "type": "string", "description": XSS, "tags": "ui, web",
                                     "variants.0.name": "blue", "variants.0.value": "#00f",
                                     "variants.1.name": "green", "variants.1.value": "#0a0",
                                     "default_variant": "blue", "off_variant": "blue"}, status=303)
    assert made.headers["Location"] == "/ui/flags/colour?env=production"
    flag = api("get", "/flags/colour")
    assert flag["variants"] == {"blue": "#00f", "green": "#0a0"} and flag["tags"] == ["ui", "web"]
    assert flag["created_by"] == "ui:alice"
    again = ui.post("/ui/flags/-/new", {"key": "colour", "type": "boolean", "variants.0.name": "on",
                                      "variants.0.value": "true", "default_variant": "on"}, status=409)
    assert "already exists" in field_error(again.text, "key")


def test_the_form_buttons_rebuild_the_form_without_saving(ui: UI) -> None:
    form = ui.post("/ui/flags/-/new", {"op": "add-variant", "key": "x", "type": "boolean",
                                     "variants.0.name": "on", "variants.0.value": "true"}, htmx=True, status=200).text
    assert form.lstrip().startswith('<form id="definition-form"') and 'name="variants.1.name"' in form


def test_user_text_is_escaped_everywhere(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("xss", description=XSS, tags=["<b>t</b>"]), 201)
    api("post", "/segments", {"key": "seg", "name": XSS, "description": XSS}, 201)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for path in ("/ui/flags", "/ui/flags/xss", "/ui/segments", "/ui/audit", "/ui/flags/xss/revisions"):
        html = ui.get(path).text
        assert XSS not in html, path
        assert escaped in html or "&lt;script&gt;" in html, path
    assert "<b>t</b>" not in ui.get("/ui/flags").text


def _targeting_form(ui: UI, key: str) -> dict[str, str]:
    """The fields of the rule editor as the browser would post them back."""
    html = ui.get(f"/ui/flags/{key}").text
    form = html[html.index('<form id="targeting"'):]
    form = form[:form.index("</form>")]
    fields: dict[str, str] = {}
    for tag in re.finditer(r"<(input|select|textarea)\b([^>]*)>(.*?)(?=<(?:input|select|textarea|/select|/textarea|div|/div|p)\b|$)",
                           form, re.S):
        name = re.search(r'name="([^"]+)"', tag.group(2))
        if not name or name.group(1) in ("op", "csrf_token"):
            continue
        if tag.group(1) == "input":
            kind = re.search(r'type="([^"]+)"', tag.group(2))
            if kind and kind.group(1) == "checkbox" and "checked" not in tag.group(2):
                continue
            value = re.search(r'value="([^"]*)"', tag.group(2))
            fields[name.group(1)] = value.group(1) if value else ""
        elif tag.group(1) == "textarea":
            fields[name.group(1)] = tag.group(3)
    for select in re.finditer(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.search(r'<option value="([^"]*)"[^>]*selected', select.group(2))
        first = re.search(r'<option value="([^"]*)"', select.group(2))
        fields[select.group(1)] = (chosen or first).group(1) if (chosen or first) else ""
    return {k: v.replace("&#34;", '"').replace("&quot;", '"') for k, v in fields.items()}


def test_build_a_rule_with_the_condition_builder_and_save_it(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("checkout"), 201)
    fields = _targeting_form(ui, "checkout")
    assert fields["version"] == "1" and fields["default_variant"] == "off"
    added = ui.post("/ui/flags/checkout/targeting", {**fields, "op": "add-rule:force"}, htmx=True, status=200).text
    assert added.lstrip().startswith('<form id="targeting"') and "Rule 1: Targeting rule" in added
    assert api("get", "/flags/checkout")["version"] == 1  # nothing saved
    fields.update({"rules.0.id": "", "rules.0.kind": "force", "rules.0.variant": "on"})
    with_cond = ui.post("/ui/flags/checkout/targeting", {**fields, "op": "add-cond:0"}, htmx=True, status=200).text
    assert 'name="rules.0.conditions.0.attribute"' in with_cond
    for name in ui.runtime.operators:  # the operator table, whatever plugins registered
        assert f'<option value="{name}"' in with_cond
    fields.update({"rules.0.conditions.0.kind": "attribute", "rules.0.conditions.0.attribute": "country",
                   "rules.0.conditions.0.operator": "in", "rules.0.conditions.0.values": "NL\nBE",
                   "rules.1.id": "", "rules.1.kind": "rollout", "rules.1.variant": "on", "rules.1.percentage": "25",
                   "targets.v0": "qa-1", "blocklist": "bot-1"})  # v0: the first variant, "on"
    saved = ui.post("/ui/flags/checkout/targeting", {**fields, "op": "save"}, htmx=True, status=200)
    assert saved.headers["HX-Redirect"] == "/ui/flags/checkout?env=production"
    flag = api("get", "/flags/checkout")
    assert flag["version"] == 2 and flag["updated_by"] == "ui:alice"
    assert flag["rules"][0]["conditions"] == [{"attribute": "country", "operator": "in", "values": ["NL", "BE"], "negate": False}]
    assert flag["rules"][1]["percentage"] == 25 and flag["allowlist"] == {"qa-1": "on"} and flag["blocklist"] == ["bot-1"]
    assert evaluate(api, "checkout", {"key": "u", "country": "NL"})["reason"] == "TARGETING_MATCH"
    assert evaluate(api, "checkout", {"key": "qa-1", "country": "US"})["value"] is True
    record = audit(ui.runtime, target="checkout", action="flag.update")[0]
    assert record["actor"] == "ui:alice"


def test_reorder_and_remove_rules_then_change_the_rollout_percentage(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f", rules=[
        {"id": "a", "kind": "force", "variant": "on", "conditions": [{"attribute": "x", "operator": "eq", "values": [1]}]},
        {"id": "b", "kind": "rollout", "variant": "on", "percentage": 10}]), 201)
    fields = _targeting_form(ui, "f")
    assert fields["rules.0.conditions.0.values"] == "1" and fields["rules.1.percentage"] == "10"
    moved = ui.post("/ui/flags/f/targeting", {**fields, "op": "down:0"}, htmx=True, status=200).text
    assert moved.index('value="b"') < moved.index('value="a"')
    ui.post("/ui/flags/f/targeting", {**fields, "rules.1.percentage": "35", "op": "save"}, status=303)
    assert [r["percentage"] for r in api("get", "/flags/f")["rules"] if r["kind"] == "rollout"] == [35]
    removed = ui.post("/ui/flags/f/targeting", {**_targeting_form(ui, "f"), "op": "remove-rule:0"}, htmx=True).text
    assert 'value="a"' not in removed and 'value="b"' in removed


def test_a_stale_version_says_who_changed_it_and_overwrites_nothing(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f", rules=[{"kind": "rollout", "variant": "on", "percentage": 10}]), 201)
    fields = _targeting_form(ui, "f")
    api("patch", "/flags/f", {"version": 1, "rules": [{"kind": "rollout", "variant": "on", "percentage": 50}]})
    stale = ui.post("/ui/flags/f/targeting", {**fields, "rules.0.percentage": "20", "op": "save"}, htmx=True, status=409).text
    assert "This flag was changed by key:test-admin at" in stale and "Reload" in stale
    assert 'href="/ui/flags/f?env=production"' in stale
    assert api("get", "/flags/f")["rules"][0]["percentage"] == 50


def test_api_field_errors_appear_next_to_the_field_that_caused_them(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f"), 201)
    fields = _targeting_form(ui, "f")
    fields.update({"rules.0.id": "", "rules.0.kind": "force", "rules.0.variant": "on",
                   "rules.0.conditions.0.kind": "attribute", "rules.0.conditions.0.attribute": "email",
                   "rules.0.conditions.0.operator": "matches", "rules.0.conditions.0.values": "([a-z",
                   "rules.1.id": "", "rules.1.kind": "rollout", "rules.1.variant": "on", "rules.1.percentage": "150"})
    bad = ui.post("/ui/flags/f/targeting", {**fields, "op": "save"}, htmx=True, status=422).text
    assert field_error(bad, "rules.0.conditions.0.values")
    assert 'id="f-rules-0-conditions-0-values"' in bad and 'aria-describedby="f-rules-0-conditions-0-values-error"' in bad
    assert "([a-z" in bad  # what was typed stays in the form
    fields["rules.0.conditions.0.values"] = "^[a-z]+@example.com$"
    bad = ui.post("/ui/flags/f/targeting", {**fields, "op": "save"}, htmx=True, status=422).text
    assert "between 0 and 100" in field_error(bad, "rules.1.percentage")
    assert api("get", "/flags/f")["version"] == 1


def test_experiment_rules_can_be_moved_but_not_edited(ui: UI, api: Any) -> None:
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/flags", boolean_flag("f", rules=[{"id": "r", "kind": "rollout", "variant": "on", "percentage": 5}]), 201)
    api("post", "/experiments", {"key": "exp", "flag": "f", "layer": "main",
                                 "variants": [{"variant": "off", "is_control": True}, {"variant": "on"}]}, 201)
    page = ui.get("/ui/flags/f").text
    assert "Managed by the experiment" in page and 'href="/ui/experiments/exp?env=production"' in page
    fields = _targeting_form(ui, "f")
    assert fields["rules.0.managed"] == "1"
    ui.post("/ui/flags/f/targeting", {**fields, "op": "save"}, status=303)  # moving nothing is fine
    moved = ui.post("/ui/flags/f/targeting", {**fields, "op": "down:0"}, htmx=True).text
    assert moved.index('value="r"') < moved.index('value="exp-exp"')


def test_operators_come_from_plugins(database_url: str) -> None:
    app = make_app(database_url, PLUGINS="tests.plugins.even_operator")
    browser = UI(app.test_client(), app.extensions["flagship"])
    browser.sign_in()
    from flagship.flags import service

    service.create_flag(browser.runtime, "t", boolean_flag("f"), "production")
    html = browser.post("/ui/flags/f/targeting", {"version": "1", "default_variant": "off", "off_variant": "off",
                                                  "op": "add-rule:force"}, status=200).text
    html = browser.post("/ui/flags/f/targeting", {"version": "1", "default_variant": "off", "off_variant": "off",
                                                  "rules.0.kind": "force", "rules.0.variant": "on",
                                                  "op": "add-cond:0"}, status=200).text
    assert '<option value="is_even"' in html
    app.extensions["flagship"].db.dispose()


def test_revisions_show_a_readable_diff_and_restore(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f", description="first"), 201)
    api("patch", "/flags/f", {"version": 1, "description": "second"})
    page = ui.get("/ui/flags/f/revisions").text
    assert "Version 2: update" in page and "<code>description</code>" in page
    assert "&#34;first&#34;" in page or '"first"' in page
    restored = ui.post("/ui/flags/f/revisions/1/restore", {"version": "2"}, status=303)
    assert restored.headers["Location"] == "/ui/flags/f?env=production"
    assert api("get", "/flags/f")["description"] == "first"
    stale = ui.post("/ui/flags/f/revisions/1/restore", {"version": "2"}, status=409).text
    assert "This flag was changed by ui:alice" in stale


def test_edit_the_definition(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f"), 201)
    form = ui.get("/ui/flags/f/edit").text
    assert 'name="version" value="1"' in form
    ui.post("/ui/flags/f/edit", {"version": "1", "description": "new words", "tags": "a,b",
                                 "variants.0.name": "on", "variants.0.value": "true",
                                 "variants.1.name": "off", "variants.1.value": "false"}, status=303)
    flag = api("get", "/flags/f")
    assert flag["description"] == "new words" and flag["tags"] == ["a", "b"]
    stale = ui.post("/ui/flags/f/edit", {"version": "1", "description": "late", "variants.0.name": "on",
                                         "variants.0.value": "true", "variants.1.name": "off",
                                         "variants.1.value": "false"}, status=409).text
    assert "changed by ui:alice" in stale and api("get", "/flags/f")["description"] == "new words"


def test_evaluate_for_a_context_shows_every_step_with_bucket_numbers(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f", rules=[
        {"kind": "force", "variant": "on", "conditions": [{"attribute": "country", "operator": "in", "values": ["NL"]}]},
        {"kind": "rollout", "variant": "on", "percentage": 50}]), 201)
    fragment = ui.get('/ui/flags/f/explain?context={"key": "user-42", "country": "US"}', htmx=True).text
    assert "<html" not in fragment and "condition 1 did not match" in fragment
    assert re.search(r"bucket \d+ of 10,000 \(salt <code>f</code>\) vs threshold 5000", fragment)
    assert "<strong>rule 2 <code>r2</code> (rollout)</strong>" in fragment
    page = ui.get('/ui/flags/f/explain?context=[1]', status=422).text
    assert "must be a JSON object" in page
    assert "line 1 column 2" in ui.get("/ui/flags/f/explain?context={nope", status=422).text


def test_promote_shows_the_diff_then_applies_it(ui: UI, api: Any) -> None:
    api("post", "/environments", {"key": "staging"}, 201)
    api("post", "/flags?environment=staging", boolean_flag("f", rules=[{"kind": "rollout", "variant": "on", "percentage": 30}]), 201)
    detail = ui.get("/ui/flags/f?env=staging").text
    assert "Promote targeting from" in detail and "production" in detail
    diff = ui.get("/ui/flags/f/promote?env=staging&from=staging&to=production").text
    assert "What changes in production" in diff and "<code>rules.0</code>" in diff and "<code>enabled</code>" in diff
    version = re.search(r'name="version" value="(\d+)"', diff).group(1)
    ui.post("/ui/flags/f/promote?env=staging&from=staging&to=production", {"version": version}, status=303)
    assert api("get", "/flags/f")["rules"][0]["percentage"] == 30
    assert audit(ui.runtime, action="flags.promote")[0]["actor"] == "ui:alice"


def test_delete_a_flag(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f"), 201)
    ui.post("/ui/flags/f/delete", status=303)
    api("get", "/flags/f", status=404)
    assert "flag &#39;f&#39; not found" in ui.get("/ui/flags/f", status=404).text


def test_individual_targets_survive_variant_names_with_digits_and_dots(ui: UI, api: Any) -> None:
    """Targets of variants named "1" or "v2.0" were dropped on every targeting save (the
    variant's name was part of the field name, split at dots, digits read as indexes)."""
    api("post", "/flags", {"key": "sizes", "type": "string", "variants": {"1": "one", "v2.0": "two"},
                           "default_variant": "1", "allowlist": {"vip-1": "v2.0"}}, 201)
    fields = _targeting_form(ui, "sizes")
    assert fields["targets.v1"] == "vip-1" and fields["targets.v0"] == ""
    fields.update({"targets.v0": "user-7", "blocklist": "bot-1"})
    ui.post("/ui/flags/sizes/targeting", {**fields, "op": "save"}, status=303)
    flag = api("get", "/flags/sizes")
    assert flag["allowlist"] == {"user-7": "1", "vip-1": "v2.0"} and flag["blocklist"] == ["bot-1"]
    clash = ui.post("/ui/flags/sizes/targeting", {**_targeting_form(ui, "sizes"), "targets.v0": "vip-1",
                                                  "op": "save"}, status=422).text
    assert re.search(r'<textarea id="f-targets-v1"[^>]*aria-invalid="true"', clash), clash
    assert "also listed for" in clash


def test_variant_errors_sit_at_the_variant_and_a_name_twice_is_refused(ui: UI, api: Any) -> None:
    """Two variants named 'on' were merged into one; a bad value's error linked to an input
    that did not exist (#f-variants-on) and marked none."""
    twice = ui.post("/ui/flags/-/new", {"key": "f", "type": "boolean", "variants.0.name": "on",
                                      "variants.0.value": "true", "variants.1.name": "on",
                                      "variants.1.value": "false", "default_variant": "on"}, status=422).text
    assert "named twice" in field_error(twice, "variants.1.name")
    bad = ui.post("/ui/flags/-/new", {"key": "f", "type": "boolean", "variants.0.name": "on",
                                    "variants.0.value": "yes", "variants.1.name": "off",
                                    "variants.1.value": "false", "default_variant": "off"}, status=422).text
    assert field_error(bad, "variants.0.value") == "must be true or false"
    assert re.search(r'id="f-variants-0-value"[^>]*aria-invalid="true"', bad)
    api("get", "/flags/f", status=404)


def test_a_page_number_beyond_any_list_is_an_empty_page_not_a_500(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f"), 201)
    for path in ("/ui/flags", "/ui/audit", "/ui/metrics", "/ui/flags/f/revisions"):
        for page in ("99999999999999999999", str(2 ** 63 - 1)):
            assert ui.get(f"{path}?page={page}").status_code == 200, path
