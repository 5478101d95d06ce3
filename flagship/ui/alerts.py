"""Alerts: the environment's open, acknowledged and resolved alerts (tabs), each linked to
its subject (an experiment or a rollout), and acknowledging an open one. The dashboard's
"Open alerts" section is registered here."""
from __future__ import annotations

from typing import Any

from flask import abort, g, request

from flagship.rollout import alerting
from flagship.runtime import Runtime
from flagship.ui.base import actor, bp, env, flash_message, link, page_arg, redirect_to, render, runtime
from flagship.ui.home import Section, register_section

PER_PAGE = 50
ON_HOME = 10


def subject_link(alert: dict[str, Any]) -> str | None:
    """The UI page of what the alert is about."""
    if alert["subject_type"] == "experiment":
        return link("ui.experiment_detail", key=alert["subject_key"])
    if alert["subject_type"] == "rollout" and alert["subject_key"].isdigit():
        return link("ui.rollout_detail", rollout_id=int(alert["subject_key"]))
    return None


def _rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**a, "subject_url": subject_link(a)} for a in items]


@bp.route("/alerts")
def alerts() -> Any:
    """Alerts of this environment (or of one subject), newest first, one status per tab
    (open by default)."""
    tab = request.args.get("status") if request.args.get("status") in alerting.STATUSES else "open"
    subject = request.args.get("subject", "").strip() or None  # experiment:KEY or rollout:ID
    page = page_arg()
    items, total = alerting.list_alerts(runtime(), status=tab, subject=subject, environment=env(),
                                        page=page, per_page=PER_PAGE)
    counts = {s: total if s == tab else
              alerting.list_alerts(runtime(), status=s, subject=subject, environment=env(), per_page=1)[1]
              for s in alerting.STATUSES}
    return render("ui/alerts/list.html", "ui/alerts/_table.html", section="ui.alerts",
                  items=_rows(items), total=total, page=page, per_page=PER_PAGE, tab=tab,
                  subject=subject, counts=counts, tabs=alerting.STATUSES)


@bp.route("/alerts/<int:alert_id>/ack", methods=["POST"])
def alert_ack(alert_id: int) -> Any:
    """Acknowledge an open alert: someone is on it (it resolves when its condition clears)."""
    alert = alerting.get_alert(runtime(), alert_id, g.get("key_environment"))
    if alert["environment"] not in (None, env()):
        abort(404, f"alert {alert_id} is in environment {alert['environment']!r}, not {env()!r}")
    alerting.acknowledge(runtime(), actor(), alert_id, g.get("key_environment"))
    flash_message(f"Alert {alert_id} acknowledged.")
    back = request.form.get("back", "")
    return redirect_to(back if back.startswith("/ui/") else link("ui.alerts"))


def _open(rt: Runtime, environment: str) -> dict[str, Any]:
    items, total = alerting.list_alerts(rt, status="open", environment=environment, per_page=ON_HOME)
    return {"items": _rows(items), "total": total}


register_section(Section("Open alerts", "ui/alerts/_home.html", _open))
