"""Alerts (seed AC5): alert rules on experiments and rollouts, the alerts they open, and the
periodic evaluation.

A rule (`srm`, `guardrail_breach`, `volume_drop`, `volume_spike`, `no_exposures`) is
evaluated by `evaluate_alerts` every round while its subject runs (`alert_checks`). Alerts
are edge-triggered: a rule that fires opens one alert (`alert.opened`), which stays open
(or acknowledged) however many rounds it keeps firing, and is resolved (`alert.resolved`)
when the condition clears, the rule is disabled or removed, or the subject stops running.
At most one unresolved alert per rule is enforced by a partial unique index, so two job
runs at once never open two.

Default rules: an experiment gets `srm`, `guardrail_breach` and `no_exposures` (24 h) the
first time its rules are read for work (its first evaluation while running, or the first
change of its rules); from then on its rules are what is stored, so removing or disabling
the defaults sticks. Rollouts get no default rules: their policy's checks already hold or
roll them back, and notify (`rollout.*` events).
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Mapping, Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flagship.db import as_utc
from flagship.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from flagship.rollout import alert_checks
from flagship.rollout import notify_store as store
from flagship.rollout.alert_checks import SUBJECT_TYPES, Finding, Subject
from flagship.rollout.alerts import AlertRule, alert_rule_from_dict, alert_rule_to_dict
from flagship.rollout.notify_store import AlertRecord, AlertRuleRecord
from flagship.runtime import Runtime, Tx

log = logging.getLogger(__name__)

ACTOR = "system:alerts"
STATUSES = ("open", "acknowledged", "resolved")
DEFAULT_EXPERIMENT_RULES: tuple[dict[str, Any], ...] = (
    {"kind": "srm"}, {"kind": "guardrail_breach"}, {"kind": "no_exposures", "hours": 24})


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def _model(record: AlertRuleRecord) -> AlertRule:
    return AlertRule(record.kind, dict(record.params), record.severity, record.enabled)


def rule_view(record: AlertRuleRecord) -> dict[str, Any]:
    """The API form of a rule: subject, the rule document (params flat) and its version."""
    return {"id": record.id, "subject_type": record.subject_type, "subject_key": record.subject_key,
            **alert_rule_to_dict(_model(record)), "default": record.created_by == ACTOR,
            "version": record.version, "created_at": _iso(record.created_at),
            "created_by": record.created_by, "updated_at": _iso(record.updated_at),
            "updated_by": record.updated_by}


def alert_view(record: AlertRecord) -> dict[str, Any]:
    """The API form of an alert."""
    return {"id": record.id, "rule_id": record.rule_id, "subject_type": record.subject_type,
            "subject_key": record.subject_key, "environment": record.environment, "kind": record.kind,
            "severity": record.severity, "status": record.status, "message": record.message,
            "evidence": record.evidence, "opened_at": _iso(record.opened_at),
            "acknowledged_at": _iso(record.acknowledged_at), "acknowledged_by": record.acknowledged_by,
            "resolved_at": _iso(record.resolved_at), "resolution": record.resolution}


# -- rules -------------------------------------------------------------------------------------------

def _check_bound(environment: str | None, bound: str | None, what: str) -> None:
    """A key bound to one environment acts only on subjects there."""
    if bound is not None and environment != bound:
        raise PermissionDeniedError(f"this key is bound to environment {bound!r}; {what} is in "
                                    f"environment {environment!r}")


def _subject(session: Session, subject_type: Any, subject_key: Any) -> str:
    """The environment of the subject a rule is about (422/404 naming the field)."""
    if subject_type not in SUBJECT_TYPES:
        raise ValidationError(f"must be one of {', '.join(SUBJECT_TYPES)}, got {subject_type!r}",
                              field="subject_type")
    if not isinstance(subject_key, str) or not subject_key:
        raise ValidationError("must be an experiment key or a rollout id", field="subject_key")
    environment = alert_checks.subject_environment(session, subject_type, subject_key)
    if environment is None:
        raise NotFoundError(f"{subject_type} {subject_key!r} not found")
    return environment


def _rule(doc: Any, prefix: str = "") -> AlertRule:
    try:
        return alert_rule_from_dict(doc)
    except ValidationError as err:
        if not prefix:
            raise
        message = next(iter(err.errors.values()))[0] if err.errors else err.message
        raise ValidationError(message, field=f"{prefix}{err.field}") from None


def _insert(tx: Tx, subject_type: str, subject_key: str, rule: AlertRule) -> AlertRuleRecord:
    record = AlertRuleRecord(subject_type=subject_type, subject_key=subject_key, kind=rule.kind,
                             params=dict(rule.params), severity=rule.severity, enabled=rule.enabled,
                             version=1, created_at=tx.now, created_by=tx.actor, updated_at=tx.now,
                             updated_by=tx.actor)
    tx.session.add(record)
    tx.session.flush()
    return record


def _ensure_defaults(tx: Tx, subject_type: str, subject_key: str) -> None:
    """Give an experiment that never had rules the default ones (created by system:alerts)."""
    if subject_type != "experiment" or store.rules(tx.session, subject_type, subject_key, with_deleted=True):
        return
    actor, tx.actor = tx.actor, ACTOR
    try:
        for doc in DEFAULT_EXPERIMENT_RULES:
            _insert(tx, subject_type, subject_key, alert_rule_from_dict(doc))
    finally:
        tx.actor = actor


def _resolve_in(tx: Tx, alert: AlertRecord, now: datetime, resolution: str) -> dict[str, Any] | None:
    if not store.resolve(tx.session, alert.id, now, resolution):
        return None
    tx.session.refresh(alert)
    view = alert_view(alert)
    tx.emit("alert.resolved", {"alert": view}, environment=alert.environment)
    return view


def _retire(tx: Tx, record: AlertRuleRecord, resolution: str) -> None:
    """Resolve the rule's unresolved alert (the rule was disabled or removed)."""
    alert = store.unresolved(tx.session, [record.id]).get(record.id)
    if alert is not None:
        _resolve_in(tx, alert, tx.now, resolution)


def create_rule(runtime: Runtime, actor: str, doc: Mapping[str, Any], bound: str | None = None) -> dict[str, Any]:
    """Add a rule: `{"subject_type", "subject_key", "kind", "severity"?, "enabled"?, ...params}`.
    An experiment's first rule comes in addition to its default rules."""
    body = {k: v for k, v in doc.items() if k not in ("subject_type", "subject_key")}
    rule = _rule(body)
    with runtime.change(actor) as tx:
        environment = _subject(tx.session, doc.get("subject_type"), doc.get("subject_key"))
        _check_bound(environment, bound, f"{doc['subject_type']} {doc['subject_key']!r}")
        _ensure_defaults(tx, doc["subject_type"], doc["subject_key"])
        record = _insert(tx, doc["subject_type"], doc["subject_key"], rule)
        view = rule_view(record)
        tx.audit("alert_rule.create", "alert_rule", str(record.id), None, view, environment=environment)
        return view


def list_rules(runtime: Runtime, subject_type: str | None = None, subject_key: str | None = None,
               bound: str | None = None) -> list[dict[str, Any]]:
    """Rules (not removed), optionally of one subject; a bound key sees its environment's."""
    with runtime.db.session() as session:
        return [rule_view(r) for r in store.rules(session, subject_type, subject_key)
                if bound is None or _env_of(session, r) == bound]


def _require_rule(session: Session, rule_id: int, bound: str | None = None) -> AlertRuleRecord:
    record = store.get_rule(session, rule_id)
    if record is None:
        raise NotFoundError(f"alert rule {rule_id} not found")
    _check_bound(_env_of(session, record), bound, f"alert rule {rule_id}")
    return record


def get_rule(runtime: Runtime, rule_id: int, bound: str | None = None) -> dict[str, Any]:
    with runtime.db.session() as session:
        return rule_view(_require_rule(session, rule_id, bound))


def update_rule(runtime: Runtime, actor: str, rule_id: int, patch: Mapping[str, Any],
                expected: int | None = None, bound: str | None = None) -> dict[str, Any]:
    """Change a rule's severity, enabled flag or parameters (not its kind or subject)."""
    for name in ("kind", "subject_type", "subject_key"):
        if name in patch:
            raise ValidationError("cannot change; remove the rule and add another", field=name)
    with runtime.change(actor) as tx:
        record = _require_rule(tx.session, rule_id, bound)
        if expected is not None and expected != record.version:
            raise ConflictError(f"alert rule {rule_id} is at version {record.version}, not {expected}",
                                {"version": [f"current version is {record.version}"]})
        before = rule_view(record)
        rule = _rule({**alert_rule_to_dict(_model(record)), **patch})
        record.params, record.severity, record.enabled = dict(rule.params), rule.severity, rule.enabled
        record.version += 1
        record.updated_at, record.updated_by = tx.now, actor
        tx.session.flush()
        if not rule.enabled:
            _retire(tx, record, "rule disabled")
        after = rule_view(record)
        tx.audit("alert_rule.update", "alert_rule", str(rule_id), before, after,
                 environment=_env_of(tx.session, record))
        return after


def _env_of(session: Session, record: AlertRuleRecord) -> str | None:
    return alert_checks.subject_environment(session, record.subject_type, record.subject_key)


def delete_rule(runtime: Runtime, actor: str, rule_id: int, bound: str | None = None) -> None:
    """Remove a rule (its alerts are resolved and kept)."""
    with runtime.change(actor) as tx:
        record = _require_rule(tx.session, rule_id, bound)
        before = rule_view(record)
        _remove(tx, record)
        tx.audit("alert_rule.delete", "alert_rule", str(rule_id), before, None,
                 environment=_env_of(tx.session, record))


def _remove(tx: Tx, record: AlertRuleRecord) -> None:
    record.deleted_at, record.updated_at, record.updated_by = tx.now, tx.now, tx.actor
    tx.session.flush()
    _retire(tx, record, "rule removed")


def experiment_alerts(runtime: Runtime, key: str, bound: str | None = None) -> dict[str, Any]:
    """An experiment's rules (the defaults it will get, if it has none yet) and its unresolved alerts."""
    with runtime.db.session() as session:
        _check_bound(_subject(session, "experiment", key), bound, f"experiment {key!r}")
        configured = bool(store.rules(session, "experiment", key, with_deleted=True))
        rules = [rule_view(r) for r in store.rules(session, "experiment", key)]
        if not configured:
            rules = [{"id": None, "subject_type": "experiment", "subject_key": key,
                      **alert_rule_to_dict(alert_rule_from_dict(doc)), "default": True}
                     for doc in DEFAULT_EXPERIMENT_RULES]
        alerts, _ = store.query_alerts(session, subject_type="experiment", subject_key=key, limit=100)
        return {"experiment": key, "rules": rules,
                "alerts": [alert_view(a) for a in alerts if a.status != "resolved"]}


def configure_experiment(runtime: Runtime, actor: str, key: str, docs: Any,
                         bound: str | None = None) -> dict[str, Any]:
    """Make `docs` an experiment's rule set: rules equal to a stored one keep it (and its open
    alert), stored rules not in `docs` are removed, the others added. `[]` turns alerts off."""
    if not isinstance(docs, list) or len(docs) > 50:
        raise ValidationError("must be a list of at most 50 alert rules", field="rules")
    wanted = [alert_rule_to_dict(_rule(doc, f"rules.{i}.")) for i, doc in enumerate(docs)]
    with runtime.change(actor) as tx:
        environment = _subject(tx.session, "experiment", key)
        _check_bound(environment, bound, f"experiment {key!r}")
        _ensure_defaults(tx, "experiment", key)
        current = list(store.rules(tx.session, "experiment", key))
        before = [rule_view(r) for r in current]
        kept: set[int] = set()
        for doc in wanted:
            same = next((r for r in current
                         if r.id not in kept and alert_rule_to_dict(_model(r)) == doc), None)
            if same is not None:
                kept.add(same.id)  # type: ignore[arg-type]
            else:
                _insert(tx, "experiment", key, alert_rule_from_dict(doc))
        for record in current:
            if record.id not in kept:
                _remove(tx, record)
        after = [rule_view(r) for r in store.rules(tx.session, "experiment", key)]
        tx.audit("experiment.alerts", "experiment", key, {"rules": before}, {"rules": after},
                 environment=environment)
    return experiment_alerts(runtime, key)


# -- alerts --------------------------------------------------------------------------------------

def _parse_subject(subject: str | None) -> tuple[str | None, str | None]:
    """`experiment:KEY`, `rollout:ID` or a bare key (any type)."""
    if not subject:
        return None, None
    kind, sep, key = subject.partition(":")
    if sep and kind in SUBJECT_TYPES:
        return kind, key
    return None, subject


def list_alerts(runtime: Runtime, *, status: str | None = None, subject: str | None = None,
                environment: str | None = None, page: int = 1,
                per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Alerts, newest first, filtered by status, subject and environment."""
    if status is not None and status not in STATUSES:
        raise ValidationError(f"must be one of {', '.join(STATUSES)}", field="status")
    subject_type, subject_key = _parse_subject(subject)
    with runtime.db.session() as session:
        rows, total = store.query_alerts(session, status=status, subject_type=subject_type,
                                         subject_key=subject_key, environment=environment,
                                         offset=(page - 1) * per_page, limit=per_page)
        return [alert_view(r) for r in rows], total


def _require_alert(session: Session, alert_id: int, bound: str | None) -> AlertRecord:
    record = store.get_alert(session, alert_id)
    if record is None:
        raise NotFoundError(f"alert {alert_id} not found")
    _check_bound(record.environment, bound, f"alert {alert_id}")
    return record


def get_alert(runtime: Runtime, alert_id: int, bound: str | None = None) -> dict[str, Any]:
    with runtime.db.session() as session:
        return alert_view(_require_alert(session, alert_id, bound))


def acknowledge(runtime: Runtime, actor: str, alert_id: int, bound: str | None = None) -> dict[str, Any]:
    """Acknowledge an open alert (idempotent); a resolved one is a 409."""
    with runtime.change(actor) as tx:
        record = _require_alert(tx.session, alert_id, bound)
        if record.status == "resolved":
            raise ConflictError(f"alert {alert_id} is resolved already", {"status": ["resolved"]})
        before = alert_view(record)
        if store.acknowledge(tx.session, alert_id, tx.now, actor):
            tx.session.refresh(record)
            tx.audit("alert.acknowledge", "alert", str(alert_id), before, alert_view(record),
                     environment=record.environment)
        return alert_view(record)


# -- the periodic job ----------------------------------------------------------------------------

def _open(runtime: Runtime, record: AlertRuleRecord, subject: Subject, finding: Finding,
          now: datetime) -> dict[str, Any] | None:
    try:
        with runtime.change(ACTOR) as tx:
            if store.unresolved(tx.session, [record.id]):
                return None  # another job run opened it meanwhile
            alert = AlertRecord(rule_id=record.id, subject_type=subject.type, subject_key=subject.key,
                                environment=subject.environment, kind=record.kind,
                                severity=record.severity, status="open", message=finding.message,
                                evidence=finding.evidence, opened_at=now)
            tx.session.add(alert)
            tx.session.flush()
            view = alert_view(alert)
            tx.emit("alert.opened", {"alert": view}, environment=subject.environment)
            return view
    except IntegrityError:  # the partial unique index: another job run won the race
        return None


def _resolve(runtime: Runtime, alert: AlertRecord, now: datetime, resolution: str) -> dict[str, Any] | None:
    with runtime.change(ACTOR) as tx:
        current = store.get_alert(tx.session, alert.id)
        return _resolve_in(tx, current, now, resolution) if current is not None else None


def _seed_defaults(runtime: Runtime, subjects: Sequence[Subject]) -> None:
    with runtime.db.session() as session:
        configured = store.subjects_with_rules(session, "experiment")
    for subject in subjects:
        if subject.type != "experiment" or subject.key in configured:
            continue
        try:
            with runtime.change(ACTOR) as tx:
                _ensure_defaults(tx, "experiment", subject.key)
        except IntegrityError:  # another job run added them at the same time
            pass


def _step(runtime: Runtime, record: AlertRuleRecord, subject: Subject | None, current: AlertRecord | None,
          now: datetime, cache: dict[Any, Any]) -> tuple[str, dict[str, Any] | None]:
    """Evaluate one rule: ('opened' | 'resolved' | '', the alert)."""
    if not record.enabled or subject is None:
        if current is None:
            return "", None
        why = "rule disabled" if not record.enabled else "subject not running"
        return "resolved", _resolve(runtime, current, now, why)
    finding = alert_checks.detect(runtime, _model(record), subject, now, cache)
    if finding is not None and current is None:
        return "opened", _open(runtime, record, subject, finding, now)
    if finding is None and current is not None:
        return "resolved", _resolve(runtime, current, now, "condition cleared")
    return "", None


def evaluate_alerts(runtime: Runtime, now: datetime | None = None) -> list[dict[str, Any]]:
    """Evaluate every alert rule once (a periodic job; safe to run in several processes):
    open alerts for rules that fire, resolve those whose condition cleared. Returns the
    changes made; a rule whose evaluation raises is logged and reported, never stops the rest."""
    now = now or runtime.clock()
    subjects = alert_checks.running_subjects(runtime)
    _seed_defaults(runtime, list(subjects.values()))
    with runtime.db.session() as session:
        rules = list(store.rules(session))
        unresolved = store.unresolved(session)
    changes: list[dict[str, Any]] = []
    cache: dict[Any, Any] = {}
    for record in rules:
        try:
            change, view = _step(runtime, record, subjects.get((record.subject_type, record.subject_key)),
                                 unresolved.pop(record.id, None), now, cache)
        except Exception as exc:  # noqa: BLE001 - one bad rule never stops the round
            log.exception("alert rule %s could not be evaluated", record.id)
            changes.append({"rule_id": record.id, "change": "error", "error": f"{type(exc).__name__}: {exc}"})
            continue
        if view is not None:
            changes.append({"rule_id": record.id, "change": change, "alert": view})
    for alert in unresolved.values():  # their rule was removed
        view = _resolve(runtime, alert, now, "rule removed")
        if view is not None:
            changes.append({"rule_id": alert.rule_id, "change": "resolved", "alert": view})
    return changes
