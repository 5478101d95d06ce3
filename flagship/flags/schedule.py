"""Scheduled flag changes: enable, disable or set a rollout percentage at a given time.

A change is validated when it is scheduled (a future time, a known action, an existing
rollout or release rule, a valid percentage) and again when it is applied: the periodic job
(`apply_due`) applies each due change through the flag service in one transaction with
actor `system:schedule` (so it is revised and audited like any other change). A change that
cannot be applied any more (the flag or rule is gone, the flag moved past the version the
change was planned against) is marked `failed` with the reason and a `schedule.failed`
notification; the job never raises for one bad row.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Mapping

from flagship.db import as_utc
from flagship.errors import ConflictError, FlagshipError, NotFoundError, ValidationError
from flagship.flags import schedule_store as store
from flagship.flags import service, store as flag_store
from flagship.flags.bucketing import check_percentage
from flagship.flags.schedule_store import ScheduledChangeRecord
from flagship.runtime import Runtime, Tx

log = logging.getLogger(__name__)

ACTOR = "system:schedule"
ACTIONS = ("enable", "disable", "set_percentage")
PERCENT_KINDS = ("rollout", "release")  # the rule kinds that carry a percentage
_FIELDS = {"enable": (), "disable": (), "set_percentage": ("rule_id", "percentage")}


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def schedule_view(record: ScheduledChangeRecord) -> dict[str, Any]:
    """The API form of a scheduled change."""
    return {"id": record.id, "flag": record.flag_key, "environment": record.environment,
            "at": _iso(record.at), "change": record.change, "status": record.status,
            "created_at": _iso(record.created_at), "created_by": record.created_by,
            "applied_at": _iso(record.applied_at), "error": record.error,
            "cancelled_by": record.cancelled_by}


# -- validation ----------------------------------------------------------------------------------

def _rule(flag_doc: Mapping[str, Any], rule_id: Any) -> dict[str, Any] | None:
    return next((r for r in flag_doc.get("rules", []) if r.get("id") == rule_id), None)


def _check_rule(flag_doc: Mapping[str, Any], rule_id: Any, where: str) -> dict[str, Any]:
    rule = _rule(flag_doc, rule_id)
    if rule is None:
        raise ValidationError(f"flag {flag_doc['key']!r} has no rule {rule_id!r}{where}",
                              field="change.rule_id")
    if rule.get("kind") not in PERCENT_KINDS:
        raise ValidationError(f"rule {rule_id!r} is a {rule.get('kind')} rule; only "
                              f"{' and '.join(PERCENT_KINDS)} rules have a percentage",
                              field="change.rule_id")
    ramping = (rule.get("params") or {}).get("rollout")
    if ramping is not None:
        raise ValidationError(f"rule {rule_id!r} is being ramped by rollout {ramping}; change its "
                              "percentage through /api/v1/rollouts", field="change.rule_id")
    return rule


def validate_change(doc: Any, flag_doc: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical change document, checked against the flag's targeting (422 naming the field)."""
    if not isinstance(doc, Mapping):
        raise ValidationError("must be an object like {\"action\": \"enable\"}", field="change")
    action = doc.get("action")
    if action not in ACTIONS:
        raise ValidationError(f"must be one of {', '.join(ACTIONS)}, got {action!r}",
                              field="change.action")
    allowed = _FIELDS[action]
    for name in doc:
        if name != "action" and name not in allowed:
            raise ValidationError(f"{action} takes no {name}"
                                  + (f" (only {', '.join(allowed)})" if allowed else ""),
                                  field=f"change.{name}")
    if action != "set_percentage":
        return {"action": action}
    if not isinstance(doc.get("rule_id"), str) or not doc["rule_id"]:
        raise ValidationError("set_percentage needs the id of a rollout or release rule",
                              field="change.rule_id")
    _check_rule(flag_doc, doc["rule_id"], "")
    if "percentage" not in doc:
        raise ValidationError("set_percentage needs a percentage (0-100)", field="change.percentage")
    try:
        percentage = check_percentage(doc["percentage"])
    except ValueError as err:
        raise ValidationError(str(err), field="change.percentage") from None
    return {"action": action, "rule_id": doc["rule_id"], "percentage": percentage}


def _require_flag(tx_session: Any, key: str, environment: str) -> Any:
    service.require_environment(tx_session, environment)
    record = flag_store.get_flag(tx_session, key, environment)
    if record is None:
        raise NotFoundError(f"flag {key!r} not found in environment {environment!r}")
    return record


# -- use cases -----------------------------------------------------------------------------------

def create_schedule(runtime: Runtime, actor: str, key: str, environment: str, at: datetime,
                    change: Any, version: int | None = None) -> dict[str, Any]:
    """Schedule `change` of flag `key` in `environment` at `at` (which must be in the future).

    `version`, when given, is the flag version the change was planned against: the change
    is applied only if the flag is still at it (otherwise it fails as stale)."""
    if at.tzinfo is None:
        raise ValidationError("must name its time zone (e.g. 2030-01-01T09:00:00Z)", field="at")
    with runtime.change(actor) as tx:
        flag = _require_flag(tx.session, key, environment)
        if at <= tx.now:
            raise ValidationError(f"must be in the future (now is {tx.now.isoformat()})", field="at")
        canonical = validate_change(change, flag.document)
        if version is not None:
            service.check_version(flag.version, version, "flag", key)
            canonical["version"] = version
        record = ScheduledChangeRecord(environment=environment, flag_key=key, at=at, change=canonical,
                                       status="pending", created_at=tx.now, created_by=actor)
        tx.session.add(record)
        tx.session.flush()
        view = schedule_view(record)
        tx.audit("flag.schedule", "flag", key, None, view, environment=environment)
        return view


def list_schedule(runtime: Runtime, key: str, environment: str,
                  status: str | None = None) -> list[dict[str, Any]]:
    """A flag's scheduled changes in one environment (every status unless one is named), soonest first."""
    with runtime.db.session() as session:
        service.require_environment(session, environment)
        rows = store.for_flag(session, key, environment, [status] if status else None)
        if not rows and flag_store.get_flag(session, key, environment) is None:
            raise NotFoundError(f"flag {key!r} not found in environment {environment!r}")
        return [schedule_view(row) for row in rows]


def cancel_schedule(runtime: Runtime, actor: str, key: str, environment: str,
                    change_id: int) -> dict[str, Any]:
    """Cancel a pending change (409 once it was applied, failed or cancelled)."""
    with runtime.change(actor) as tx:
        record = store.get(tx.session, change_id)
        if record is None or record.flag_key != key or record.environment != environment:
            raise NotFoundError(f"flag {key!r} has no scheduled change {change_id} in "
                                f"environment {environment!r}")
        before = schedule_view(record)
        if not store.set_status(tx.session, change_id, "pending",
                                {"status": "cancelled", "cancelled_by": actor}):
            raise ConflictError(f"scheduled change {change_id} is {record.status}; only a pending "
                                "change can be cancelled", {"status": [record.status]})
        tx.session.refresh(record)
        view = schedule_view(record)
        tx.audit("flag.schedule_cancel", "flag", key, before, view, environment=environment)
        return view


# -- the periodic job ----------------------------------------------------------------------------

def _apply(tx: Tx, runtime: Runtime, record: ScheduledChangeRecord) -> str:
    """Apply one change inside `tx`; return `applied` or `unchanged` (already so)."""
    key, environment, change = record.flag_key, record.environment, record.change
    flag = flag_store.get_flag(tx.session, key, environment)
    if flag is None:
        raise NotFoundError(f"flag {key!r} no longer exists in environment {environment!r}")
    planned = change.get("version")
    if planned is not None and flag.version != planned:
        raise ConflictError(f"stale: flag {key!r} is at version {flag.version}, the change was "
                            f"planned against version {planned}")
    action = change["action"]
    if action in ("enable", "disable"):
        enabled = action == "enable"
        if flag.document.get("enabled") == enabled:
            return "unchanged"
        service.rewrite_flag(tx, runtime, key, environment, lambda doc: {**doc, "enabled": enabled}, action)
        return "applied"
    rule = _check_rule(flag.document, change["rule_id"], " any more")
    if rule.get("percentage") == change["percentage"]:
        return "unchanged"

    def set_percentage(doc: dict[str, Any]) -> dict[str, Any]:
        _rule(doc, change["rule_id"])["percentage"] = change["percentage"]  # type: ignore[index]
        return doc
    service.rewrite_flag(tx, runtime, key, environment, set_percentage, "update")
    return "applied"


def _apply_one(runtime: Runtime, change_id: int) -> dict[str, Any] | None:
    """Apply a due change (claim and flag change in one transaction) or record its failure.

    None when another job run took it first."""
    try:
        with runtime.change(ACTOR) as tx:
            record = store.get(tx.session, change_id)
            if record is None or not store.set_status(tx.session, change_id, "pending",
                                                       {"status": "applied", "applied_at": tx.now}):
                return None
            outcome = _apply(tx, runtime, record)
            return {"id": change_id, "flag": record.flag_key, "environment": record.environment,
                    "status": "applied", "outcome": outcome}
    except FlagshipError as err:
        message = err.message
    except Exception as err:  # noqa: BLE001 - one bad row never stops the job
        log.exception("scheduled change %s failed", change_id)
        message = f"{type(err).__name__}: {err}"
    with runtime.change(ACTOR) as tx:
        record = store.get(tx.session, change_id)
        if record is None or not store.set_status(tx.session, change_id, "pending",
                                                   {"status": "failed", "applied_at": tx.now,
                                                    "error": message}):
            return None
        tx.session.refresh(record)
        tx.emit("schedule.failed", {"schedule": schedule_view(record)}, environment=record.environment)
        return {"id": change_id, "flag": record.flag_key, "environment": record.environment,
                "status": "failed", "error": message}


def apply_due(runtime: Runtime, now: datetime | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Apply every pending change due at `now` (a periodic job; safe to run in several
    processes at once: each change is claimed by compare-and-set). Returns what it did."""
    now = now or runtime.clock()
    with runtime.db.session() as session:
        due = store.due_ids(session, now, limit)
    done = []
    for change_id in due:
        try:
            result = _apply_one(runtime, change_id)
        except Exception:  # noqa: BLE001 - e.g. the database went away while marking a failure
            log.exception("scheduled change %s could not be applied or marked failed", change_id)
            continue
        if result is not None:
            done.append(result)
    return done
