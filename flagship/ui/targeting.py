"""The flag detail page and its rule editor: one form holds the environment's targeting
(default and off variant, rules with their conditions, individual targets, blocklist) and
is saved with the version it was loaded at, so a concurrent change is reported
("changed by X at T — reload") instead of overwritten.

The form's buttons (add or remove a rule or condition, move a rule) re-render the form
from what was posted without saving; only "Save" writes. Rules the experiments domain
manages (experiment and release rules) can be moved here but not edited.
"""
from __future__ import annotations

from typing import Any

from flask import g, request

from flagship.errors import FlagshipError
from flagship.flags import segments as segment_service
from flagship.flags import service
from flagship.ui import forms
from flagship.ui.base import Errors, actor, bp, env, flash_message, link, redirect_to, render, runtime
from flagship.ui.flags import status_of_errors, with_stale

EDITABLE = ("force", "rollout")
KIND_NAMES = {"force": "Targeting rule", "rollout": "Percentage rollout",
              "experiment": "Experiment", "release": "Released winner"}


# -- state: what the form shows -----------------------------------------------------------

def rule_state(rule: dict[str, Any]) -> dict[str, Any]:
    percentage = rule.get("percentage")
    return {"id": rule.get("id", ""), "kind": rule["kind"], "variant": rule.get("variant", ""),
            "percentage": "" if percentage is None else f"{percentage:g}",
            "conditions": [forms.condition_state(c) for c in rule.get("conditions", [])],
            "managed": rule["kind"] not in EDITABLE, "original": rule,
            "experiment": (rule.get("params") or {}).get("experiment")}


def state_from_doc(flag: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, list[str]] = {name: [] for name in flag["variants"]}
    for unit, variant in flag.get("allowlist", {}).items():
        targets.setdefault(variant, []).append(unit)
    return {"version": flag["version"], "default_variant": flag["default_variant"],
            "off_variant": flag["off_variant"], "rules": [rule_state(r) for r in flag["rules"]],
            "targets": {v: "\n".join(units) for v, units in targets.items()},
            "blocklist": "\n".join(flag.get("blocklist", []))}


def state_from_form(flag: dict[str, Any]) -> dict[str, Any]:
    raw = forms.unflatten(request.form)
    stored = {r["id"]: r for r in flag["rules"]}
    rules = []
    for posted in forms.items(raw.get("rules")):
        if forms.checked(posted.get("managed")):
            original = stored.get(str(posted.get("id")))
            if original is not None:
                rules.append(rule_state(original))
            continue
        kind = posted.get("kind") if posted.get("kind") in EDITABLE else "force"
        rules.append({"id": str(posted.get("id", "")), "kind": kind,
                      "variant": str(posted.get("variant", "")),
                      "percentage": str(posted.get("percentage", "")),
                      "conditions": forms.conditions_from_form(posted.get("conditions")),
                      "managed": False, "original": None, "experiment": None})
    # one textarea per variant, named by position (`targets.v0`): a variant's own name in
    # the field name was split at its dots or read as a list index ("1", "v1.0"), and the
    # individual targets of such variants were silently dropped on every save
    targets = raw.get("targets") if isinstance(raw.get("targets"), dict) else {}
    return {"version": request.form.get("version", ""),
            "default_variant": str(raw.get("default_variant", "")),
            "off_variant": str(raw.get("off_variant", "")), "rules": rules,
            "targets": {v: str(targets.get(target_field(i), "")) for i, v in enumerate(flag["variants"])},
            "blocklist": str(raw.get("blocklist", ""))}


def target_field(index: int) -> str:
    """The form name (under `targets.`) of the variant at `index`'s individual targets."""
    return f"v{index}"


def apply_op(state: dict[str, Any], op: str, variants: list[str], operator: str) -> None:
    """One button of the editor, applied to the posted state (nothing is saved)."""
    parts = forms.op_parts(op)
    rules = state["rules"]
    index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    if parts[0] == "add-rule" and len(parts) > 1 and parts[1] in EDITABLE:
        default = state["default_variant"]
        variant = next((v for v in variants if v != default), default)
        rules.append({"id": "", "kind": parts[1], "variant": variant,
                      "percentage": "0" if parts[1] == "rollout" else "", "managed": False,
                      "conditions": [], "original": None, "experiment": None})
    elif index is None or not 0 <= index < len(rules):
        return
    elif parts[0] == "up" and index > 0:
        rules[index - 1], rules[index] = rules[index], rules[index - 1]
    elif parts[0] == "down" and index < len(rules) - 1:
        rules[index + 1], rules[index] = rules[index], rules[index + 1]
    elif parts[0] == "remove-rule" and not rules[index]["managed"]:
        del rules[index]
    elif parts[0] == "add-cond":
        forms.apply_condition_op(rules[index]["conditions"], "add", operator)
    elif parts[0] == "remove-cond" and len(parts) > 2:
        forms.apply_condition_op(rules[index]["conditions"], f"remove:{parts[2]}", operator)


def targeting_patch(state: dict[str, Any], errors: Errors) -> dict[str, Any]:
    """The targeting fields of the flag document, from the (normalised) form state."""
    rules = []
    for rule in state["rules"]:
        if rule["managed"]:
            rules.append(rule["original"])
            continue
        rule["conditions"] = [c for c in rule["conditions"] if not forms.is_blank(c)]
        doc: dict[str, Any] = {"kind": rule["kind"], "variant": rule["variant"],
                               "conditions": [forms.condition_doc(c) for c in rule["conditions"]]}
        if rule["id"]:
            doc["id"] = rule["id"]
        if rule["kind"] == "rollout":
            doc["percentage"] = forms.percentage(rule["percentage"])
        rules.append(doc)
    allowlist: dict[str, str] = {}
    for index, (variant, text) in enumerate(state["targets"].items()):
        for unit in forms.lines(text):
            if unit in allowlist and allowlist[unit] != variant:
                errors.add(f"targets.{target_field(index)}", f"unit {unit!r} is also listed for {allowlist[unit]!r}")
            allowlist[unit] = variant
    return {"default_variant": state["default_variant"], "off_variant": state["off_variant"],
            "rules": rules, "allowlist": allowlist, "blocklist": forms.lines(state["blocklist"])}


# -- views --------------------------------------------------------------------------------

def _editor(flag: dict[str, Any], state: dict[str, Any], errors: Errors) -> dict[str, Any]:
    return {"section": "ui.flags", "flag": flag, "state": state, "errors": errors,
            "kind_names": KIND_NAMES, "variants": list(flag["variants"]),
            "operators": [(name, op.description) for name, op in runtime().operators.items()],
            "segments": [s["key"] for s in segment_service.list_segments(runtime(), env())]}


@bp.route("/flags/<key>")
def flag_detail(key: str) -> Any:
    """A flag in this environment: targeting, evaluate, environments, promotion, history."""
    flag = service.get_flag(runtime(), key, env())
    return render("ui/flags/detail.html", **_editor(flag, state_from_doc(flag), Errors()))


@bp.route("/flags/<key>/targeting", methods=["POST"])
def flag_targeting(key: str) -> Any:
    """The rule editor's buttons (re-render) and Save (a versioned write)."""
    flag = service.get_flag(runtime(), key, env())
    state, errors = state_from_form(flag), Errors()
    op = request.form.get("op", "save")
    if op != "save":
        operator = next(iter(runtime().operators), "eq")
        apply_op(state, op, list(flag["variants"]), operator)
        return render("ui/flags/detail.html", "ui/flags/_targeting.html", **_editor(flag, state, errors))
    patch = targeting_patch(state, errors)
    version = forms.number(state["version"], "version", errors, integer=True)
    if version is None and not errors:
        errors.add("version", "missing: reload the page")
    if not errors:
        try:
            service.patch_flag(runtime(), actor(), key, patch, version, env(),
                               everywhere=g.get("key_environment") is None)
            flash_message(f"Targeting of {key} saved in {env()}.")
            return redirect_to(link("ui.flag_detail", key=key))
        except FlagshipError as err:
            errors = with_stale(err, key)
    return render("ui/flags/detail.html", "ui/flags/_targeting.html", **_editor(flag, state, errors),
                  status=status_of_errors(errors))
