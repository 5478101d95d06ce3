"""Scheduled changes of a flag: what will happen to it and when (turn on, turn off, set a
rollout or release rule's percentage), what already happened or failed, a form to
schedule one and a button to cancel a pending one.

The time is entered in UTC (the form says so; the browser's `datetime-local` control has
no zone) and sent to the same service as `POST /api/v1/flags/{key}/schedule`, so errors
come back with the API's field paths (`at`, `change.rule_id`, ...) next to their inputs.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import request

from flagship.errors import FlagshipError
from flagship.flags import schedule, service
from flagship.ui.base import Errors, actor, bp, env, errors_from, flash_message, link, redirect_to, render, runtime

ACTION_NAMES = {"enable": "Turn on", "disable": "Turn off", "set_percentage": "Set a rule's percentage"}


def percent_rules(flag: dict[str, Any]) -> list[tuple[str, str]]:
    """(rule id, label) of the rules a change may set the percentage of (not those a
    rollout is ramping: the rollout owns their percentage)."""
    return [(rule["id"], f"{rule['id']} ({rule['kind']}, now {rule.get('percentage', 0):g} %)")
            for rule in flag["rules"] if rule.get("kind") in schedule.PERCENT_KINDS
            and (rule.get("params") or {}).get("rollout") is None]


def describe(change: dict[str, Any]) -> str:
    """A scheduled change in words."""
    if change.get("action") == "set_percentage":
        return f"Set rule {change.get('rule_id')} to {change.get('percentage'):g} %"
    return ACTION_NAMES.get(change.get("action", ""), str(change.get("action")))


def _page(key: str, form: dict[str, Any], errors: Errors | None = None, status: int = 200) -> Any:
    flag = service.get_flag(runtime(), key, env())
    items = schedule.list_schedule(runtime(), key, env())
    pending = [i for i in items if i["status"] == "pending"]
    done = sorted((i for i in items if i["status"] != "pending"), key=lambda i: i["at"], reverse=True)
    return render("ui/flags/schedule.html", section="ui.flags", flag=flag, pending=pending, done=done,
                  rules=percent_rules(flag), actions=list(ACTION_NAMES.items()), form=form,
                  errors=errors, describe=describe, status=status)


def _at(text: str, errors: Errors) -> datetime | None:
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        errors.add("at", "a date and time, like 2030-01-31T09:00")
        return None
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


@bp.route("/flags/<key>/schedule", methods=["GET", "POST"])
def flag_schedule(key: str) -> Any:
    """The flag's scheduled changes in this environment; POST schedules one."""
    if request.method == "GET":
        return _page(key, {"action": "enable", "at": "", "rule_id": "", "percentage": ""})
    form = {"at": request.form.get("at", "").strip(),
            **{name: request.form.get(f"change.{name}", "").strip() for name in ("action", "rule_id", "percentage")}}
    errors = Errors()
    at = _at(form["at"], errors)
    change: dict[str, Any] = {"action": form["action"]}
    if form["action"] == "set_percentage":
        change["rule_id"] = form["rule_id"]
        if form["percentage"]:
            try:
                change["percentage"] = float(form["percentage"])
            except ValueError:
                errors.add("change.percentage", "a number from 0 to 100")
    if errors:
        return _page(key, form, errors, 422)
    try:
        created = schedule.create_schedule(runtime(), actor(), key, env(), at, change)
    except FlagshipError as err:
        found = errors_from(err)
        return _page(key, form, found, found.status)
    flash_message(f"Scheduled: {describe(created['change'])} at {created['at']} (UTC).")
    return redirect_to(link("ui.flag_schedule", key=key))


@bp.route("/flags/<key>/schedule/<int:change_id>/cancel", methods=["POST"])
def flag_schedule_cancel(key: str, change_id: int) -> Any:
    """Cancel a pending change (one that already ran or was cancelled: the page says so)."""
    try:
        schedule.cancel_schedule(runtime(), actor(), key, env(), change_id)
    except FlagshipError as err:
        found = errors_from(err)
        form = {"action": "enable", "at": "", "rule_id": "", "percentage": ""}
        return _page(key, form, found, found.status)
    flash_message(f"Scheduled change {change_id} cancelled.")
    return redirect_to(link("ui.flag_schedule", key=key))
