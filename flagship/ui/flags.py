"""Flag screens: the list with its kill switches, create, the definition, revisions,
promotion between environments, and "evaluate for a context" (explain).

The rule editor of the detail page is in `targeting.py`.
"""
from __future__ import annotations

import json
from typing import Any

from flask import request

from flagship.errors import FlagshipError, ValidationError
from flagship.flags import promotion, service
from flagship.serving import service as serving
from flagship.ui import forms
from flagship.ui.base import (Errors, actor, bp, env, environments, errors_from, flash_message, is_stale,
                              link, page_arg, redirect_to, render, require_unbound, runtime, status_of,
                              wants_fragment)

PER_PAGE = 50
CRITICAL = "critical"
EXPLAIN_EXAMPLE = '{"key": "user-42", "country": "NL"}'


def rollout_summary(doc: dict[str, Any]) -> str:
    """The flag's percentage rollouts in a few words (`25% on`, `experiment checkout`)."""
    parts = []
    for rule in doc.get("rules", []):
        if rule["kind"] in ("rollout", "release"):
            parts.append(f"{rule.get('percentage', 0):g}% {rule.get('variant', '')}".strip())
        elif rule["kind"] == "experiment":
            parts.append(f"experiment {rule.get('params', {}).get('experiment', '')}")
    return ", ".join(parts)


def flag_row(flag: dict[str, Any]) -> dict[str, Any]:
    """What one row of the flag list shows."""
    return {**flag, "critical": CRITICAL in flag.get("tags", []), "rollout": rollout_summary(flag),
            "rule_count": len(flag.get("rules", []))}


@bp.route("/flags")
def flags() -> Any:
    """The environment's flags: search, tag filter, pages, a kill switch per row."""
    q, tag = request.args.get("q", "").strip(), request.args.get("tag", "").strip()
    page = page_arg()
    items, total = service.list_flags(runtime(), env(), tag=tag or None, search=q or None,
                                      page=page, per_page=PER_PAGE)
    tags = sorted({t for f in items for t in f.get("tags", [])} | ({tag} if tag else set()))
    return render("ui/flags/list.html", "ui/flags/_table.html", section="ui.flags",
                  rows=[flag_row(f) for f in items], total=total, page=page, per_page=PER_PAGE,
                  q=q, tag=tag, tags=tags)


@bp.route("/flags/<key>/toggle", methods=["POST"])
def flag_toggle(key: str) -> Any:
    """The kill switch: one click, with a confirmation for flags tagged `critical`."""
    enabled = request.form.get("enabled") == "1"
    flag = service.get_flag(runtime(), key, env())
    back = request.form.get("back") or link("ui.flags")
    if CRITICAL in flag.get("tags", []) and request.form.get("confirm") != "yes":
        return render("ui/flags/confirm.html", section="ui.flags", flag=flag, enabled=enabled,
                      back=back)
    updated = service.set_enabled(runtime(), actor(), key, enabled, None, env())
    if request.form.get("fragment") == "row" and wants_fragment():
        return render("ui/flags/_row.html", "ui/flags/_row.html", row=flag_row(updated))
    flash_message(f"{key} is now {'on' if enabled else 'off'} in {env()}.")
    return redirect_to(back if back.startswith("/ui/") else link("ui.flags"))


# -- create and definition ----------------------------------------------------------------

FLAG_TYPES = ("boolean", "string", "number", "json")


def _definition_state(flag: dict[str, Any] | None) -> dict[str, Any]:
    if flag is None:
        return {"key": "", "type": "boolean", "description": "", "tags": "", "version": "",
                "variants": [{"name": "on", "value": "true"}, {"name": "off", "value": "false"}],
                "default_variant": "off", "off_variant": "off"}
    return {"key": flag["key"], "type": flag["type"], "description": flag.get("description", ""),
            "version": flag["version"],
            "tags": ", ".join(flag.get("tags", [])),
            "variants": [{"name": n, "value": _variant_text(v, flag["type"])}
                         for n, v in flag["variants"].items()],
            "default_variant": flag["default_variant"], "off_variant": flag["off_variant"]}


def _variant_text(value: Any, flag_type: str) -> str:
    if flag_type == "string":
        return value
    return json.dumps(value)


def _definition_from_form() -> dict[str, Any]:
    raw = forms.unflatten(request.form)
    variants = [{"name": str(v.get("name", "")).strip(), "value": str(v.get("value", ""))}
                for v in forms.items(raw.get("variants"))]
    state = {"key": str(raw.get("key", "")).strip(), "type": raw.get("type", "boolean"),
             "description": str(raw.get("description", "")), "tags": str(raw.get("tags", "")),
             "variants": variants, "default_variant": str(raw.get("default_variant", "")).strip(),
             "off_variant": str(raw.get("off_variant", "")).strip()}
    op = request.form.get("op", "save")
    if op == "add-variant":
        state["variants"].append({"name": "", "value": ""})
    elif op.startswith("remove-variant:"):
        index = int(op.split(":")[1]) if op.split(":")[1].isdigit() else -1
        if 0 <= index < len(state["variants"]):
            del state["variants"][index]
    return state


def _definition_doc(state: dict[str, Any], errors: Errors) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for index, v in enumerate(state["variants"]):
        if not v["name"] and not v["value"].strip():
            continue
        if v["name"] in variants:  # a dict would keep the last silently
            errors.add(f"variants.{index}.name", f"variant {v['name']!r} is named twice: names must be unique")
            continue
        # the error goes next to this variant's own input, saying which variant it is
        variants[v["name"]] = forms.variant_value(v["value"], state["type"], f"variants.{index}.value", errors)
    doc = {"type": state["type"], "description": state["description"],
           "tags": forms.words(state["tags"]), "variants": variants,
           "default_variant": state["default_variant"] or None,
           "off_variant": state["off_variant"] or None}
    return {k: v for k, v in doc.items() if v is not None}


@bp.route("/flags/-/new", methods=["GET", "POST"])
def flag_new() -> Any:
    """Create a flag: on as written here, off without rules in every other environment."""
    state, errors = _definition_state(None), Errors()
    if request.method == "POST":
        state = _definition_from_form()
        if request.form.get("op", "save") == "save":
            doc = {"key": state["key"], **_definition_doc(state, errors)}
            if not errors:
                try:
                    service.create_flag(runtime(), actor(), doc, env())
                    flash_message(f"Flag {state['key']} created. Add targeting rules below.")
                    return redirect_to(link("ui.flag_detail", key=state["key"]))
                except FlagshipError as err:
                    errors = errors_from(err)
    return render("ui/flags/new.html", "ui/flags/_definition_form.html", section="ui.flags",
                  state=state, errors=errors, types=FLAG_TYPES, creating=True,
                  status=errors.http_status)


@bp.route("/flags/<key>/edit", methods=["GET", "POST"])
def flag_edit(key: str) -> Any:
    """Change the definition (description, tags, variants): it applies to every environment."""
    flag = service.get_flag(runtime(), key, env())
    state, errors = _definition_state(flag), Errors()
    if request.method == "POST":
        state = {**_definition_from_form(), "key": key, "type": flag["type"],
                 "version": request.form.get("version", "")}
        if request.form.get("op", "save") == "save":
            doc = _definition_doc(state, errors)
            doc.pop("type", None)
            doc.pop("off_variant", None)
            doc.pop("default_variant", None)
            version = forms.number(request.form.get("version"), "version", errors, integer=True)
            if not errors:
                try:
                    require_unbound("changing a flag's definition")
                    service.patch_flag(runtime(), actor(), key, doc, version, env())
                    flash_message(f"Definition of {key} saved (every environment).")
                    return redirect_to(link("ui.flag_detail", key=key))
                except FlagshipError as err:
                    errors = with_stale(err, key)
    return render("ui/flags/edit.html", "ui/flags/_definition_form.html", section="ui.flags",
                  state=state, errors=errors, types=FLAG_TYPES, creating=False, flag=flag,
                  status=status_of_errors(errors))


def with_stale(err: FlagshipError, key: str) -> Errors:
    """Errors of a failed write; a stale version carries the flag as it is now."""
    errors = errors_from(err)
    if is_stale(err):
        errors.stale = service.get_flag(runtime(), key, env())
        errors.message = "Someone else changed this flag."
    return errors


def status_of_errors(errors: Errors) -> int:
    return errors.http_status


# -- delete, revisions, restore -----------------------------------------------------------

@bp.route("/flags/<key>/delete", methods=["POST"])
def flag_delete(key: str) -> Any:
    """Delete a flag from every environment (its revisions stay, it can be restored)."""
    require_unbound("deleting a flag")
    service.delete_flag(runtime(), actor(), key, None, env())
    flash_message(f"Flag {key} deleted from every environment; restore it from its revisions.")
    return redirect_to(link("ui.flags"))


@bp.route("/flags/<key>/revisions")
def flag_revisions(key: str) -> Any:
    """The flag's revisions in this environment, newest first, each with a readable diff."""
    page = page_arg()
    items, total = service.list_revisions(runtime(), key, env(), page, 20)
    try:
        current = service.get_flag(runtime(), key, env())
    except FlagshipError:
        current = None  # deleted: restoring re-creates it
    return render("ui/flags/revisions.html", section="ui.flags", key=key, items=items, total=total,
                  page=page, per_page=20, current=current)


@bp.route("/flags/<key>/revisions/<int:version>/restore", methods=["POST"])
def flag_restore(key: str, version: int) -> Any:
    """Make an old revision current again (a new revision; stale -> a message, no overwrite)."""
    errors = Errors()
    expected = forms.number(request.form.get("version"), "version", errors, integer=True)
    try:
        service.restore_revision(runtime(), actor(), key, version, expected, env())
    except FlagshipError as err:
        errors = with_stale(err, key) if expected is not None else errors_from(err)
        items, total = service.list_revisions(runtime(), key, env(), 1, 20)
        return render("ui/flags/revisions.html", section="ui.flags", key=key, items=items,
                      total=total, page=1, per_page=20, current=errors.stale, errors=errors,
                      status=409 if errors.stale else status_of(err))
    flash_message(f"Revision {version} of {key} restored in {env()}.")
    return redirect_to(link("ui.flag_detail", key=key))


# -- explain ------------------------------------------------------------------------------

@bp.route("/flags/<key>/explain")
def flag_explain(key: str) -> Any:
    """Evaluate the flag for a context and show every step with its bucket numbers."""
    text = request.args.get("context", "").strip() or EXPLAIN_EXAMPLE
    errors, result = Errors(), None
    try:
        context = json.loads(text)
        if not isinstance(context, dict):
            raise ValueError("the context must be a JSON object, like " + EXPLAIN_EXAMPLE)
        result = serving.explain(runtime(), key, context, env())
    except ValueError as err:
        errors.add("context", str(err))
    return render("ui/flags/explain.html", "ui/flags/_explain.html", section="ui.flags", key=key,
                  context_text=text, result=result, errors=errors,
                  status=422 if errors else 200)


# -- promotion ----------------------------------------------------------------------------

def _promotion_args() -> tuple[str, str]:
    source = request.values.get("from") or env()
    target = request.values.get("to") or next(
        (e["key"] for e in environments() if e["key"] != source), source)
    return source, target


@bp.route("/flags/<key>/promote", methods=["GET", "POST"])
def flag_promote(key: str) -> Any:
    """Copy targeting from one environment to another: the diff first, then apply it."""
    source, target = _promotion_args()
    errors, plan = Errors(), None
    if request.method == "POST":
        expected = forms.number(request.form.get("version"), "version", errors, integer=True)
        try:
            promotion.promote(runtime(), actor(), [key], source, target, dry_run=False,
                              copy_segments=forms.checked(request.form.get("copy_segments")),
                              versions={key: expected} if expected is not None else None)
            flash_message(f"Promoted {key} from {source} to {target}.")
            return redirect_to(link("ui.flag_detail", key=key, env=target))
        except FlagshipError as err:
            errors = errors_from(err)
    try:
        plan = promotion.promote(runtime(), actor(), [key], source, target, dry_run=True)["flags"][0]
    except (FlagshipError, IndexError) as err:
        if isinstance(err, ValidationError):
            errors = errors_from(err)
        elif isinstance(err, FlagshipError):
            errors.message = err.message
    return render("ui/flags/promote.html", "ui/flags/_promote.html", section="ui.flags", key=key,
                  source=source, target=target, plan=plan, errors=errors,
                  status=errors.http_status)
