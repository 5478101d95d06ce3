"""Webhooks: the list, create (the signing secret is shown once), edit (URL, event types,
environment, enabled, a new secret), delete, and each webhook's delivery log (every
attempt with its status, error and duration). Webhooks reach every environment, so
managing them needs a key bound to none, as in the API."""
from __future__ import annotations

from typing import Any

from flask import request

from flagship.errors import FlagshipError
from flagship.rollout import notifications
from flagship.ui import forms
from flagship.ui.base import (Errors, actor, bp, environments, errors_from, flash_message, is_stale,
                              link, page_arg, redirect_to, render, require_unbound, runtime)

PER_PAGE = 50
PATTERNS = "flag.update, experiment.*, rollout.*, alert.opened, schedule.failed, or * for everything"


def _state(webhook: dict[str, Any] | None) -> dict[str, Any]:
    webhook = webhook or {"name": "", "url": "", "event_types": ["rollout.*", "alert.opened"],
                          "environment": None, "enabled": True, "version": ""}
    return {"name": webhook["name"], "url": webhook["url"], "event_types": "\n".join(webhook["event_types"]),
            "environment": webhook["environment"] or "", "enabled": webhook["enabled"],
            "version": webhook["version"], "secret": ""}


def _posted() -> dict[str, Any]:
    form = request.form
    return {"name": form.get("name", "").strip(), "url": form.get("url", "").strip(),
            "event_types": form.get("event_types", ""), "environment": form.get("environment", ""),
            "enabled": forms.checked(form.get("enabled")), "version": form.get("version", ""),
            "secret": form.get("secret", "").strip()}


def _doc(state: dict[str, Any]) -> dict[str, Any]:
    doc = {"name": state["name"], "url": state["url"], "event_types": forms.words(state["event_types"]),
           "environment": state["environment"] or None, "enabled": state["enabled"]}
    if state["secret"]:
        doc["secret"] = state["secret"]
    return doc


def _refused(err: FlagshipError) -> Errors:
    errors = errors_from(err).fold("event_types")
    if not errors.fields and "already exists" in err.message:
        errors.add("name", err.message)
    return errors


def _form(webhook: dict[str, Any] | None, state: dict[str, Any], errors: Errors) -> Any:
    return render("ui/webhooks/form.html", section="ui.webhooks", webhook=webhook, state=state,
                  errors=errors, environments=environments(), patterns=PATTERNS,
                  status=errors.http_status)


@bp.route("/webhooks")
def webhooks() -> Any:
    """Every webhook (their secrets are never shown again)."""
    return render("ui/webhooks/list.html", section="ui.webhooks",
                  items=notifications.list_webhooks(runtime()))


@bp.route("/webhooks/-/new", methods=["GET", "POST"])
def webhook_new() -> Any:
    """Add a webhook; the page after shows its signing secret, this once."""
    state, errors = _state(None), Errors()
    if request.method == "POST":
        state = _posted()
        try:
            require_unbound("managing webhooks")
            created = notifications.create_webhook(runtime(), actor(), _doc(state))
        except FlagshipError as err:
            errors = _refused(err)
        else:
            return render("ui/webhooks/created.html", section="ui.webhooks", webhook=created, status=201)
    return _form(None, state, errors)


@bp.route("/webhooks/<int:webhook_id>", methods=["GET", "POST"])
def webhook_form(webhook_id: int) -> Any:
    """Change a webhook (saved with the version it was loaded at; a new secret replaces the old)."""
    current = notifications.get_webhook(runtime(), webhook_id)
    state, errors = _state(current), Errors()
    if request.method == "POST":
        state = _posted()
        version = forms.number(state["version"], "version", errors, integer=True)
        if not errors:
            try:
                require_unbound("managing webhooks")
                notifications.update_webhook(runtime(), actor(), webhook_id, _doc(state), version)
            except FlagshipError as err:
                errors = _refused(err)
                if is_stale(err):
                    errors.stale = notifications.get_webhook(runtime(), webhook_id)
                    errors.message = "Someone else changed this webhook."
            else:
                flash_message(f"Webhook {state['name']} saved.")
                return redirect_to(link("ui.webhooks"))
    return _form(current, state, errors)


@bp.route("/webhooks/<int:webhook_id>/delete", methods=["POST"])
def webhook_delete(webhook_id: int) -> Any:
    """Delete a webhook and its delivery log."""
    require_unbound("managing webhooks")
    webhook = notifications.get_webhook(runtime(), webhook_id)
    notifications.delete_webhook(runtime(), actor(), webhook_id)
    flash_message(f"Webhook {webhook['name']} deleted.")
    return redirect_to(link("ui.webhooks"))


@bp.route("/webhooks/<int:webhook_id>/deliveries")
def webhook_deliveries(webhook_id: int) -> Any:
    """The webhook's delivery log, newest first: every attempt with status, error, duration."""
    webhook = notifications.get_webhook(runtime(), webhook_id)
    page = page_arg()
    items, total = notifications.list_deliveries(runtime(), webhook_id, page, PER_PAGE)
    return render("ui/webhooks/deliveries.html", "ui/webhooks/_deliveries.html", section="ui.webhooks",
                  webhook=webhook, items=items, total=total, page=page, per_page=PER_PAGE)
