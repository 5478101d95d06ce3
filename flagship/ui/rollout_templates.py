"""Rollout policy templates: the list, create, edit (the policy as JSON in a textarea,
each validation error shown next to it with the API's field path) and delete."""
from __future__ import annotations

import json
from typing import Any

from flask import request

from flagship.errors import FlagshipError
from flagship.flags.model import KEY_PATTERN
from flagship.rollout import service
from flagship.ui import forms
from flagship.ui.base import (Errors, actor, bp, duration_text, errors_from, flash_message, is_stale,
                              link, redirect_to, render, runtime)
from flagship.ui.rollouts import parse_policy

# A place to start: three steps, each held until enough units saw it, and a sample-ratio check.
EXAMPLE_POLICY = {
    "evaluation_interval": "5m", "min_consecutive_ok": 2,
    "steps": [{"percent": 1, "min_duration": "30m", "min_units": 200},
              {"percent": 10, "min_duration": "1h", "min_units": 500},
              {"percent": 50, "min_duration": "4h", "min_units": 2000, "approval": True}],
    "checks": [{"id": "srm", "type": "srm", "severity": "health"}]}


def summary(template: dict[str, Any]) -> dict[str, Any]:
    """A template as the list shows it: its ramp and its checks in a few words."""
    policy = template["policy"]
    ramp = " → ".join(f"{s['percent']:g}%" for s in policy["steps"])
    return {**template, "ramp": f"{ramp} → {policy['completion']['percent']:g}%",
            "interval": duration_text(policy["evaluation_interval"]),
            "checks": [f"{c['id']} ({c['type']})" for c in policy.get("checks", [])]}


@bp.route("/rollouts/templates")
def rollout_templates() -> Any:
    """Every policy template (rollouts copy one when they are created)."""
    items = [summary(t) for t in service.list_templates(runtime())]
    return render("ui/rollouts/templates.html", section="ui.rollouts", items=items)


def _state(template: dict[str, Any] | None) -> dict[str, Any]:
    if template is None:
        return {"key": "", "name": "", "description": "", "version": "",
                "policy": json.dumps(EXAMPLE_POLICY, indent=2)}
    return {"key": template["key"], "name": template["name"], "description": template["description"],
            "version": template["version"], "policy": json.dumps(template["policy"], indent=2)}


def _write(key: str | None, state: dict[str, Any]) -> tuple[dict[str, Any] | None, Errors]:
    """Save the posted template: the template saved, or None and why it was refused."""
    target, errors = key or state["key"], Errors()
    if not KEY_PATTERN.fullmatch(target):  # what the API's schema checks before the service
        errors.add("key", "required: 1-128 letters, digits, '_', '.' or '-'" if not target
                   else f"invalid key {target!r}: use 1-128 letters, digits, '_', '.' or '-'")
    version = forms.number(state["version"], "version", errors, integer=True) if key else None
    if key and version is None and not errors:
        errors.add("version", "missing: reload the page")
    doc = {"name": state["name"].strip(), "description": state["description"],
           "policy": parse_policy(state["policy"], errors)}
    if errors:
        return None, errors
    try:
        return service.save_template(runtime(), actor(), target, doc, version, create=key is None), errors
    except FlagshipError as err:
        errors = errors_from(err).fold("policy")
        if is_stale(err):
            errors.stale = service.get_template(runtime(), target)
            errors.message = "Someone else changed this template."
        return None, errors


@bp.route("/rollouts/templates/-/new", methods=["GET", "POST"])
@bp.route("/rollouts/templates/<key>", methods=["GET", "POST"])
def rollout_template_form(key: str | None = None) -> Any:
    """Create a template, or replace one's policy (saved with the version it was loaded at)."""
    current = service.get_template(runtime(), key) if key else None
    state, errors = _state(current), Errors()
    if request.method == "POST":
        state = {name: request.form.get(name, "") for name in ("key", "name", "description", "version",
                                                               "policy")}
        state["key"] = key or state["key"].strip()
        saved, errors = _write(key, state)
        if saved is not None:
            flash_message(f"Rollout template {saved['key']} saved.")
            return redirect_to(link("ui.rollout_templates"))
    guardrails = sorted((name, g.description) for name, g in runtime().guardrails.items())
    return render("ui/rollouts/template_form.html", section="ui.rollouts", key=key, state=state,
                  errors=errors, guardrails=guardrails, status=errors.http_status)


@bp.route("/rollouts/templates/<key>/delete", methods=["POST"])
def rollout_template_delete(key: str) -> Any:
    """Delete a template (rollouts made from it keep their copy of the policy)."""
    service.delete_template(runtime(), actor(), key)
    flash_message(f"Rollout template {key} deleted.")
    return redirect_to(link("ui.rollout_templates"))
