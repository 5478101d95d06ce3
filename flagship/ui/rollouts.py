"""Rollout screens: the list by status, a new rollout from a template (pick flag, rule,
template), the detail (step bar, check results with their estimates and intervals, the
timeline, evaluations) that refreshes itself while the rollout is live, and the manual
actions, showing only the moves the core allows from the rollout's state. Rolling back
is always offered while the rollout is live and asks once.

The policy templates are in `rollout_templates.py`; the dashboard's "Active rollouts"
section is registered here.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from flask import abort, request

from flagship.errors import ConflictError, FlagshipError, NotFoundError
from flagship.flags import service as flag_service
from flagship.rollout import service
from flagship.rollout.model import TERMINAL, RolloutState, policy_from_dict
from flagship.rollout.plan import MANUAL_ACTIONS, apply_action
from flagship.runtime import Runtime
from flagship.ui import forms
from flagship.ui.base import (Errors, actor, bp, duration_text, env, errors_from, flash_message, link,
                              redirect_to, render, runtime)
from flagship.ui.home import Section, register_section

REFRESH_SECONDS = 3
LIVE = ("running", "holding", "paused")  # a human or the periodic round may move it any moment
SHOWN = ("running", "holding", "paused", "draft", "completed", "rolled_back", "aborted")
LABELS = {"start": "Start", "pause": "Pause", "resume": "Resume", "advance": "Advance one step",
          "approve": "Approve this step", "dismiss": "Dismiss", "rollback": "Roll back",
          "abort": "Abort", "restart": "Restart (new attempt)"}
# Advancing twice from one stale page would skip a step nobody looked at; the other moves
# keep working whatever changed meanwhile (a rollback must never fail on a version).
VERSIONED = ("advance",)
RECENT_EVALUATIONS = 10


def rollout_in_env(rollout_id: int) -> dict[str, Any]:
    """The rollout with its timeline, if it is in the current environment (else 404)."""
    rollout = service.get_rollout(runtime(), rollout_id)
    if rollout["environment"] != env():
        abort(404, f"rollout {rollout_id} is in environment {rollout['environment']!r}, not "
                   f"{env()!r}: switch environments to see it")
    return rollout


def step_text(rollout: dict[str, Any]) -> str:
    """Where a rollout stands in a few words (`step 2 of 3`, `not started`)."""
    if rollout["status"] == "draft":
        return "not started"
    if rollout["status"] == "completed":
        return f"done ({rollout['steps']} steps)"
    return f"step {rollout['step_index'] + 1} of {rollout['steps']}"


@bp.route("/rollouts")
def rollouts() -> Any:
    """The environment's rollouts grouped by status (or one status, or one flag's)."""
    status = request.args.get("status") if request.args.get("status") in SHOWN else None
    flag = request.args.get("flag", "").strip() or None
    items = service.list_rollouts(runtime(), environment=env(), status=status, flag=flag)
    groups = {s: [dict(r, step=step_text(r)) for r in items if r["status"] == s]
              for s in SHOWN if status in (None, s)}
    return render("ui/rollouts/list.html", section="ui.rollouts", groups=groups, chosen=status,
                  flag=flag, total=len(items), statuses=SHOWN)


# -- a new rollout --------------------------------------------------------------------------

def ramped_rules(flag_key: str) -> list[dict[str, Any]] | None:
    """The flag's rollout and release rules in this environment (None: no such flag), each
    with the rollout that already ramps it, if any."""
    if not flag_key:
        return None
    try:
        flag = flag_service.get_flag(runtime(), flag_key, env())
    except NotFoundError:
        return None
    busy = {r["rule_id"]: r["id"] for r in service.list_rollouts(runtime(), environment=env(), flag=flag_key)
            if r["status"] not in TERMINAL}
    return [{"id": rule["id"], "kind": rule["kind"], "variant": rule["variant"],
             "percentage": rule.get("percentage", 0), "busy": busy.get(rule["id"])}
            for rule in flag["rules"] if rule["kind"] in service.RAMPED_KINDS]


def _new_state() -> dict[str, str]:
    names = ("flag", "rule_id", "template", "policy", "description")
    source = request.form if request.method == "POST" else request.args
    state = {name: str(source.get(name, "")) for name in names}
    for name in ("flag", "rule_id", "template"):
        state[name] = state[name].strip()
    return state


def parse_policy(text: str, errors: Errors, required: bool = True) -> Any:
    """The policy typed in a textarea: a JSON object (errors land on `policy`)."""
    if not text.strip():
        if required:
            errors.add("policy", "required: a JSON object with steps (and checks)")
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        errors.add("policy", f"is not JSON: {err}")
        return None
    if not isinstance(value, dict):
        errors.add("policy", f"must be a JSON object, got {type(value).__name__}")
        return None
    return value


def _create_doc(state: dict[str, str], errors: Errors) -> dict[str, Any]:
    for name in ("flag", "rule_id"):
        if not state[name]:
            errors.add(name, "required")
    doc: dict[str, Any] = {"flag": state["flag"], "rule_id": state["rule_id"],
                           "description": state["description"]}
    if state["template"]:
        doc["template"] = state["template"]
    policy = parse_policy(state["policy"], errors, required=False)
    if policy is not None:
        doc["policy"] = policy
    return doc


def _service_errors(err: FlagshipError) -> Errors:
    """A refused create: the message next to the field it names (a 409 names the rule)."""
    errors = errors_from(err).fold("policy")
    if isinstance(err, ConflictError):
        errors.fields = {path: [err.message] for path in errors.fields}
    return errors


@bp.route("/rollouts/-/new", methods=["GET", "POST"])
def rollout_new() -> Any:
    """A draft rollout of one rollout or release rule, from a template (or a policy)."""
    state, errors = _new_state(), Errors()
    if request.method == "POST" and request.form.get("op", "save") == "save":
        doc = _create_doc(state, errors)
        if not errors:
            try:
                created = service.create_rollout(runtime(), actor(), doc, env())
            except FlagshipError as err:
                errors = _service_errors(err)
            else:
                flash_message(f"Rollout {created['id']} of {created['flag']} created as a draft: "
                              "start it when you are ready.")
                return redirect_to(link("ui.rollout_detail", rollout_id=created["id"]))
    templates = service.list_templates(runtime())
    return render("ui/rollouts/new.html", "ui/rollouts/_form.html", section="ui.rollouts",
                  state=state, errors=errors, rules=ramped_rules(state["flag"]), templates=templates,
                  status=errors.http_status)


# -- the detail ------------------------------------------------------------------------------

def step_bar(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy's steps as segments of a bar: done, current or still to come."""
    policy, index, status = rollout["policy"], rollout["step_index"], rollout["status"]
    segments, previous = [], 0.0
    for number, step in enumerate(policy["steps"]):
        if status == "draft" or number > index:
            where = "todo"
        elif status == "completed" or number < index:
            where = "done"
        else:
            where = "current"
        segments.append({"label": f"Step {number + 1}", "percent": step["percent"],
                         "grow": max(step["percent"] - previous, 1), "where": where,
                         "min_duration": duration_text(step["min_duration"]),
                         "min_units": step["min_units"], "approval": step["approval"]})
        previous = step["percent"]
    completion = policy["completion"]
    segments.append({"label": "Complete", "percent": completion["percent"], "then": completion["then"],
                     "grow": max(completion["percent"] - previous, 1),
                     "where": "done" if status == "completed" else "todo"})
    return segments


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def result_view(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """One check result as the table shows it: outcome, estimate, interval, sample sizes."""
    if result is None:
        return None
    proof = result.get("evidence") or {}
    ci = proof.get("ci")
    interval = [_number(ci[0]), _number(ci[1])] if isinstance(ci, list) and len(ci) == 2 else None
    alpha = _number(proof.get("alpha"))
    return {"outcome": result.get("outcome", ""), "message": result.get("message", ""),
            "method": proof.get("method"), "estimate": _number(proof.get("estimate")), "ci": interval,
            "level": (1 - alpha) * 100 if alpha is not None else None,
            "n_treatment": _number(proof.get("n_treatment")), "n_control": _number(proof.get("n_control")),
            "value": _number(proof.get("value")), "threshold": _number(proof.get("threshold")),
            "p_value": _number(proof.get("p_value"))}


def check_rows(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    """The policy's checks with their counters this step and their latest result."""
    latest = rollout.get("latest_evaluation") or {}
    results = {r.get("check_id"): r for r in latest.get("results") or []}
    state = rollout["state"]
    return [{"id": c["id"], "type": c["type"], "severity": c["severity"], "on_fail": c["on_fail"],
             "failure_limit": c["failure_limit"], "fails": (state.get("fail_counts") or {}).get(c["id"], 0),
             "dismissed": c["id"] in (state.get("dismissed") or []), "result": result_view(results.get(c["id"]))}
            for c in rollout["policy"].get("checks", [])]


def legal_moves(rollout: dict[str, Any]) -> list[str]:
    """The manual actions the core allows from the rollout's state (the only buttons shown);
    dismiss is offered per failing check instead."""
    try:
        policy = policy_from_dict(rollout["policy"], runtime().guardrails)
        state = RolloutState.from_dict(rollout["state"])
    except FlagshipError:
        return []  # a policy that no longer loads: the service refuses every action too
    now, moves = runtime().clock().timestamp(), []
    for action in MANUAL_ACTIONS:
        if action == "dismiss" or (action == "approve" and state.approved_step == state.step_index):
            continue
        try:
            apply_action(policy, state, action, now)
        except FlagshipError:
            continue
        moves.append(action)
    return moves


def _epoch_iso(value: Any) -> str | None:
    number = _number(value)
    return datetime.fromtimestamp(number, timezone.utc).isoformat() if number is not None else None


def detail_context(rollout: dict[str, Any], limit: int = RECENT_EVALUATIONS) -> dict[str, Any]:
    """What the detail page and its self-refreshing fragment show."""
    state = rollout["state"]
    return {"section": "ui.rollouts", "r": rollout, "moves": legal_moves(rollout), "labels": LABELS,
            "versioned": VERSIONED, "bar": step_bar(rollout), "checks": check_rows(rollout),
            "latest": rollout.get("latest_evaluation"), "step": step_text(rollout),
            "step_started_at": _epoch_iso(state.get("step_started_at")),
            "timeline": list(reversed(rollout["transitions"])),
            "evaluations": service.list_evaluations(runtime(), rollout["id"], limit),
            "live": rollout["status"] in LIVE, "refresh": REFRESH_SECONDS,
            "updated": runtime().clock().strftime("%H:%M:%S UTC"),
            "policy_text": json.dumps(rollout["policy"], indent=2)}


@bp.route("/rollouts/<int:rollout_id>")
def rollout_detail(rollout_id: int) -> Any:
    """A rollout: its steps, checks, timeline and actions; the live part refreshes itself."""
    rollout = rollout_in_env(rollout_id)
    return render("ui/rollouts/detail.html", "ui/rollouts/_live.html", **detail_context(rollout))


@bp.route("/rollouts/<int:rollout_id>/evaluations")
def rollout_evaluations(rollout_id: int) -> Any:
    """Every periodic evaluation of the rollout, newest first, with reasons and results."""
    rollout = rollout_in_env(rollout_id)
    evaluations = service.list_evaluations(runtime(), rollout_id)
    return render("ui/rollouts/evaluations.html", section="ui.rollouts", r=rollout,
                  evaluations=[{**e, "checks": [{"check_id": x.get("check_id"), **(result_view(x) or {})}
                                                for x in e["results"] or []]} for e in evaluations])


@bp.route("/rollouts/<int:rollout_id>/<action>", methods=["POST"])
def rollout_action(rollout_id: int, action: str) -> Any:
    """A manual action, applied in this request (an illegal move: the service's 409)."""
    rollout_in_env(rollout_id)
    if action not in MANUAL_ACTIONS:
        abort(404)
    errors = Errors()
    version = forms.number(request.form.get("version"), "version", errors, integer=True)
    if errors:
        abort(422, "the version sent is not a whole number: reload the page")
    check_id = request.form.get("check_id", "").strip() or None
    done = service.act(runtime(), actor(), rollout_id, action, check_id,
                       version if action in VERSIONED else None)
    what = f"{LABELS[action].lower()} {check_id}" if check_id else LABELS[action].lower()
    flash_message(f"Rollout {rollout_id}: {what} done; it is {done['status'].replace('_', ' ')} "
                  f"at {done['percentage']:g}%.")
    return redirect_to(link("ui.rollout_detail", rollout_id=rollout_id))


# -- the dashboard -----------------------------------------------------------------------------

def _active(rt: Runtime, environment: str) -> dict[str, Any]:
    items = [r for status in LIVE for r in service.list_rollouts(rt, environment=environment, status=status)]
    return {"items": [dict(r, step=step_text(r)) for r in items]}


register_section(Section("Active rollouts", "ui/rollouts/_home.html", _active))
