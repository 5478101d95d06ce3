"""An experiment's alert rules: what is watched (sample-ratio mismatch, guardrail breaches,
exposure or event volume against its trailing baseline, no exposures for a while), its
unresolved alerts, and the rule set as JSON in a textarea (the same documents as `POST
/api/v1/experiments/{key}/alerts`), each validation error shown next to it with the API's
field path. An experiment that never had rules shows the defaults it will get."""
from __future__ import annotations

import json
from typing import Any

from flask import g, request

from flagship.errors import FlagshipError
from flagship.rollout import alerting
from flagship.rollout.alerts import KINDS
from flagship.ui.base import Errors, actor, bp, errors_from, flash_message, link, redirect_to, render, runtime
from flagship.ui.experiments import experiment_in_env

# what each kind watches, and its fields (with their defaults), for the hint beside the form
KIND_HELP = {
    "srm": "sample-ratio mismatch: the exposure split differs from the weights "
           "(p_value 0.001, min_units 8)",
    "guardrail_breach": "a guardrail metric harmed beyond its margin (check: one metric key, "
                        "or every guardrail)",
    "volume_drop": "exposures or an event's count per hour far below its trailing baseline "
                   "(source exposures|events, event, threshold 3.5 robust z, baseline_hours 168, "
                   "min_baseline_hours 24)",
    "volume_spike": "the same, far above the baseline",
    "no_exposures": "no exposure for a number of hours (hours 24) while running",
}
RULE_FIELDS = ("id", "subject_type", "subject_key", "version", "created_at", "created_by",
               "updated_at", "updated_by", "default")


def rule_doc(rule: dict[str, Any]) -> dict[str, Any]:
    """A stored (or default) rule as the document the form edits."""
    return {k: v for k, v in rule.items() if k not in RULE_FIELDS}


def settings_text(rule: dict[str, Any]) -> str:
    """A rule's own fields in a few words (kind, severity and enabled aside)."""
    own = {k: v for k, v in rule_doc(rule).items() if k not in ("kind", "severity", "enabled")}
    return ", ".join(f"{k} {v}" for k, v in own.items()) or "defaults"


def _page(key: str, text: str | None, errors: Errors | None = None, status: int = 200) -> Any:
    found = alerting.experiment_alerts(runtime(), key, g.get("key_environment"))
    rules = found["rules"]
    if text is None:
        text = json.dumps([rule_doc(r) for r in rules], indent=2)
    return render("ui/experiments/alerts.html", section="ui.experiments", key=key, rules=rules,
                  alerts=found["alerts"], text=text, errors=errors, kinds=[(k, KIND_HELP[k]) for k in KINDS],
                  settings_text=settings_text, defaults=any(r.get("default") for r in rules),
                  status=status)


@bp.route("/experiments/<key>/alerts", methods=["GET", "POST"])
def experiment_alerts(key: str) -> Any:
    """The experiment's alert rules and unresolved alerts; POST replaces the rule set."""
    experiment_in_env(key)  # 404 in another environment, as every experiment screen
    if request.method == "GET":
        return _page(key, None)
    text = request.form.get("rules", "")
    errors = Errors()
    try:
        docs = json.loads(text) if text.strip() else None
    except ValueError as err:
        errors.add("rules", f"is not JSON: {err}")
        return _page(key, text, errors, 422)
    if docs is None:
        errors.add("rules", "required: a JSON list of rules ([] turns this experiment's alerts off)")
        return _page(key, text, errors, 422)
    try:
        saved = alerting.configure_experiment(runtime(), actor(), key, docs, g.get("key_environment"))
    except FlagshipError as err:
        found = errors_from(err).fold("rules")
        return _page(key, text, found, found.status)
    count = len(saved["rules"])
    flash_message(f"Alert rules of {key} saved: {count} rule{'s' if count != 1 else ''}."
                  if count else f"Alerts of {key} are off.")
    return redirect_to(link("ui.experiment_alerts", key=key))
