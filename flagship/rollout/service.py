"""Rollout use cases: templates, creating a rollout on a flag's rollout or release rule,
the manual actions, and applying any new state (a manual action or a periodic decision)
in one transaction: compare-and-set on the rollout, the rule's percentage on the flag, a
transition, the audit record and the outbox events. Periodic evaluation is in
`evaluation.py`."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from sqlalchemy.orm import Session

from flagship.db import as_utc
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.experiments.store import config as experiment_store
from flagship.experiments.store.tables import AnalysisSubjectRecord
from flagship.flags import service as flags
from flagship.flags import store as flag_store
from flagship.flags.model import KEY_PATTERN
from flagship.rollout import store
from flagship.rollout.model import ACTIVE, TERMINAL, Policy, RolloutState, policy_from_dict, policy_to_dict
from flagship.rollout.plan import Reason, action_events, apply_action
from flagship.rollout.store import RolloutRecord, RolloutTemplateRecord, TransitionRecord
from flagship.runtime import Runtime, Tx

RAMPED_KINDS = ("rollout", "release")
METRIC_CHECKS = ("metric_regression", "metric_threshold")


def subject_key(rollout_id: int, attempt: int) -> str:
    """The analysis subject a rollout attempt's arms are recorded under."""
    return f"rollout:{rollout_id}:{attempt}"


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def _epoch(value: datetime) -> float:
    return value.timestamp()


_POLICIES: dict[tuple[str, int], Policy] = {}


def load(record: RolloutRecord, guardrails: Mapping[str, Any]) -> tuple[Policy, RolloutState]:
    """The rollout's policy and state. Stored policies are canonical and never change in
    place, so parsed ones are kept (a round over a thousand rollouts parses each once)."""
    key = (json.dumps(record.policy, sort_keys=True), id(guardrails))
    policy = _POLICIES.get(key)
    if policy is None:
        if len(_POLICIES) > 4096:
            _POLICIES.clear()
        policy = _POLICIES[key] = policy_from_dict(record.policy, guardrails)
    return policy, RolloutState.from_dict(record.state)


def rollout_view(record: RolloutRecord) -> dict[str, Any]:
    """The API form of a rollout: target, policy, status, step, percentage and version."""
    state = record.state
    steps = record.policy.get("steps", [])
    return {"id": record.id, "environment": record.environment, "flag": record.flag_key,
            "rule_id": record.rule_id, "variant": record.variant, "description": record.description,
            "template": record.template, "status": record.status, "attempt": record.attempt,
            "step_index": state.get("step_index", 0), "steps": len(steps),
            "percentage": state.get("percent_bp", 0) / 100, "state": state, "policy": record.policy,
            "subject": subject_key(record.id, record.attempt) if record.id else None,
            "attempt_started_at": _iso(record.attempt_started_at), "version": record.version,
            "created_at": _iso(record.created_at), "created_by": record.created_by,
            "updated_at": _iso(record.updated_at), "updated_by": record.updated_by}


def transition_view(record: TransitionRecord) -> dict[str, Any]:
    return {"attempt": record.attempt, "seq": record.seq, "action": record.action, "actor": record.actor,
            "from_status": record.from_status, "to_status": record.to_status,
            "from_percentage": record.from_percent_bp / 100, "to_percentage": record.to_percent_bp / 100,
            "from_step": record.from_step, "to_step": record.to_step, "reasons": record.reasons,
            "evidence": record.evidence, "at": _iso(record.created_at)}


def _require(session: Session, rollout_id: int, lock: bool = False) -> RolloutRecord:
    record = store.get_rollout(session, rollout_id, lock=lock)
    if record is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    return record


# -- templates -----------------------------------------------------------------------------------

def _template_view(record: RolloutTemplateRecord) -> dict[str, Any]:
    return {"key": record.key, "name": record.name, "description": record.description,
            "policy": record.policy, "version": record.version, "updated_at": _iso(record.updated_at),
            "updated_by": record.updated_by}


def list_templates(runtime: Runtime) -> list[dict[str, Any]]:
    with runtime.db.session() as session:
        return [_template_view(r) for r in store.templates(session)]


def get_template(runtime: Runtime, key: str) -> dict[str, Any]:
    with runtime.db.session() as session:
        record = store.get_template(session, key)
        if record is None:
            raise NotFoundError(f"rollout template {key!r} not found")
        return _template_view(record)


def _policy(runtime: Runtime, doc: Any, field: str = "policy") -> dict[str, Any]:
    try:
        return policy_to_dict(policy_from_dict(doc, runtime.guardrails))
    except ValidationError as err:
        path = f"{field}.{err.field}" if err.field else field
        raise ValidationError(err.errors.get(err.field, [err.message])[0] if err.field else err.message,
                              field=path) from None


def template_document(record: RolloutTemplateRecord) -> dict[str, Any]:
    """A template as configuration: its name, description and canonical policy."""
    return {"name": record.name, "description": record.description, "policy": record.policy}


def check_template(runtime: Runtime, key: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical `template_document` of a written template (the name defaults to the
    key); ValidationError naming the field (`policy.steps.0.percent`) otherwise."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValidationError(f"invalid key {key!r}: use 1-128 letters, digits, '_', '.' or '-'",
                              field="key")
    for name, limit in (("name", 256), ("description", 10_000)):
        value = doc.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise ValidationError(f"must be a string of at most {limit} characters", field=name)
    if doc.get("policy") is None:
        raise ValidationError("required", field="policy")
    return {"name": doc.get("name") or key, "description": doc.get("description") or "",
            "policy": _policy(runtime, doc["policy"])}


def save_template(runtime: Runtime, actor: str, key: str, doc: Mapping[str, Any],
                  expected: int | None = None, create: bool = False) -> dict[str, Any]:
    """Create (or replace, with the version) a policy template."""
    values = check_template(runtime, key, doc)
    with runtime.change(actor) as tx:
        _check_metrics(tx.session, values["policy"])  # as using it would: a 422 now, not then
        record = store.get_template(tx.session, key)
        if create and record is not None:
            raise ConflictError(f"rollout template {key!r} already exists", {"key": ["already exists"]})
        if record is None and not create:
            raise NotFoundError(f"rollout template {key!r} not found")
        before = _template_view(record) if record else None
        if record is None:
            record = RolloutTemplateRecord(key=key, version=0, policy=values["policy"], created_at=tx.now,
                                           updated_at=tx.now, updated_by=actor)
            tx.session.add(record)
        flags.check_version(record.version, expected, "rollout template", key)
        record.name, record.description = values["name"], values["description"]
        record.policy, record.version = values["policy"], record.version + 1
        record.updated_at, record.updated_by = tx.now, actor
        tx.session.flush()
        tx.audit("rollout_template." + ("create" if before is None else "update"), "rollout_template",
                 key, before, _template_view(record))
        return _template_view(record)


def delete_template(runtime: Runtime, actor: str, key: str) -> None:
    """Delete a template (rollouts copied it; none depends on it)."""
    with runtime.change(actor) as tx:
        record = store.get_template(tx.session, key)
        if record is None:
            raise NotFoundError(f"rollout template {key!r} not found")
        tx.audit("rollout_template.delete", "rollout_template", key, _template_view(record), None)
        tx.session.delete(record)


# -- rollouts ------------------------------------------------------------------------------------

def list_rollouts(runtime: Runtime, *, environment: str | None = None, status: str | None = None,
                  flag: str | None = None) -> list[dict[str, Any]]:
    with runtime.db.session() as session:
        statuses = None if status is None else [status]
        return [rollout_view(r) for r in store.rollouts(session, environment=environment,
                                                         statuses=statuses, flag=flag)]


def get_rollout(runtime: Runtime, rollout_id: int) -> dict[str, Any]:
    with runtime.db.session() as session:
        record = _require(session, rollout_id)
        view = rollout_view(record)
        view["transitions"] = [transition_view(t) for t in store.transitions(session, rollout_id)]
        latest = store.evaluations(session, rollout_id, limit=1)
        view["latest_evaluation"] = _evaluation_view(latest[0]) if latest else None
        return view


def _evaluation_view(record: Any) -> dict[str, Any]:
    return {"attempt": record.attempt, "slot": record.slot, "at": _iso(record.evaluated_at),
            "decision": record.decision, "reasons": record.reasons, "results": record.results,
            "observations": record.observations}


def list_evaluations(runtime: Runtime, rollout_id: int, limit: int = 200) -> list[dict[str, Any]]:
    with runtime.db.session() as session:
        _require(session, rollout_id)
        return [_evaluation_view(r) for r in store.evaluations(session, rollout_id, limit)]


def _target_rule(session: Session, flag_key: str, rule_id: str, environment: str) -> dict[str, Any]:
    flag = flag_store.get_flag(session, flag_key, environment)
    if flag is None:
        raise ValidationError(f"flag {flag_key!r} not found in environment {environment!r}", field="flag")
    rule = next((r for r in flag.document.get("rules", []) if r["id"] == rule_id), None)
    if rule is None:
        raise ValidationError(f"flag {flag_key!r} has no rule {rule_id!r}", field="rule_id")
    if rule["kind"] not in RAMPED_KINDS:
        raise ValidationError(f"rule {rule_id!r} is a {rule['kind']} rule; a rollout ramps a rollout "
                              "or release rule", field="rule_id")
    return rule


def _check_metrics(session: Session, policy: dict[str, Any]) -> None:
    for i, check in enumerate(policy.get("checks", [])):
        metric = check.get("metric")  # the canonical policy keeps check params flat
        if check.get("type") in METRIC_CHECKS and metric is not None \
                and experiment_store.get_metric(session, metric) is None:
            raise ValidationError(f"no metric {metric!r}: create it under /api/v1/metrics first",
                                  field=f"policy.checks.{i}.metric")


def create_rollout(runtime: Runtime, actor: str, doc: Mapping[str, Any], environment: str) -> dict[str, Any]:
    """A draft rollout of one rule: the policy given, or a copy of the named template's."""
    with runtime.change(actor) as tx:
        flags.require_environment(tx.session, environment)
        rule = _target_rule(tx.session, doc["flag"], doc["rule_id"], environment)
        template = doc.get("template")
        source = doc.get("policy")
        if template is not None:
            found = store.get_template(tx.session, template)
            if found is None:
                raise ValidationError(f"no rollout template {template!r}", field="template")
            source = {**found.policy, **(source or {})}
        if source is None:
            raise ValidationError("give a policy or a template", field="policy")
        policy = _policy(runtime, source)
        _check_metrics(tx.session, policy)
        busy = [r.id for r in store.rollouts(tx.session, environment=environment, flag=doc["flag"])
                if r.rule_id == doc["rule_id"] and r.status not in TERMINAL]
        if busy:
            raise ConflictError(f"rule {doc['rule_id']!r} already has rollout {busy[0]}; finish or abort it",
                                {"rule_id": [f"rollout {busy[0]}"]})
        record = RolloutRecord(environment=environment, flag_key=doc["flag"], rule_id=doc["rule_id"],
                               variant=rule["variant"], description=doc.get("description") or "",
                               policy=policy, template=template, status="draft", attempt=1,
                               state=RolloutState().to_dict(), version=1, created_at=tx.now,
                               created_by=actor, updated_at=tx.now, updated_by=actor)
        tx.session.add(record)
        tx.session.flush()
        tx.audit("rollout.create", "rollout", str(record.id), None, rollout_view(record),
                 environment=environment)
        return rollout_view(record)


def _rule_change(record: RolloutRecord, policy: Policy, state: RolloutState) -> Any:
    """The flag-document change that puts the rollout's percentage (and its arms) on the rule."""
    comparative = any(c.comparative for c in policy.checks)
    tracked = state.status in ACTIVE + ("paused",) or (
        state.status == "completed" and policy.completion.then == "keep")

    def change(flag_doc: dict[str, Any]) -> dict[str, Any]:
        rules = []
        for rule in flag_doc.get("rules", []):
            if rule["id"] == record.rule_id:
                params = {k: v for k, v in (rule.get("params") or {}).items()
                          if k not in ("rollout", "subject", "control")}
                if tracked:
                    params.update(rollout=record.id, subject=subject_key(record.id, state.attempt),
                                  control=comparative)
                rule = {**rule, "percentage": state.percent_bp / 100}
                rule.pop("params", None)
                if params:
                    rule["params"] = params
            rules.append(rule)
        return {**flag_doc, "rules": rules}
    return change


def _subject(tx: Tx, record: RolloutRecord, policy: Policy, state: RolloutState) -> None:
    """Keep the attempt's analysis subject: opened on start and restart, closed when it ends."""
    key = subject_key(record.id, state.attempt)
    subject = tx.session.get(AnalysisSubjectRecord, key)
    metrics = sorted({c.params["metric"] for c in policy.checks if "metric" in c.params})
    if subject is None and state.status in ACTIVE:
        tx.session.add(AnalysisSubjectRecord(key=key, environment=record.environment, started_at=tx.now,
                                             metrics=metrics))
    elif subject is not None and state.status in TERMINAL and subject.ended_at is None:
        subject.ended_at = tx.now


def apply(tx: Tx, runtime: Runtime, record: RolloutRecord, policy: Policy, before: RolloutState,
          after: RolloutState, action: str, reasons: Iterable[Reason] = (), events: Iterable[str] = (),
          evidence: list[dict[str, Any]] | None = None) -> RolloutRecord:
    """Write a new state: compare-and-set, the rule on the flag, a transition, audit, events."""
    old_view = rollout_view(record)
    values: dict[str, Any] = {"state": after.to_dict(), "status": after.status, "attempt": after.attempt,
                              "updated_at": tx.now, "updated_by": tx.actor}
    if after.attempt != before.attempt or (before.status == "draft" and after.status != "draft"):
        values["attempt_started_at"] = tx.now
    if not store.compare_and_set(tx.session, record, values):
        raise ConflictError(f"rollout {record.id} was changed by someone else meanwhile: nothing was done")
    tx.session.expire(record)
    moved = (after.percent_bp, after.status, after.attempt) != (before.percent_bp, before.status, before.attempt)
    if moved:
        flags.rewrite_flag(tx, runtime, record.flag_key, record.environment,
                           _rule_change(record, policy, after), "rollout")
    _subject(tx, record, policy, after)
    reasons = [r.to_dict() for r in reasons]
    tx.session.add(TransitionRecord(
        rollout_id=record.id, attempt=after.attempt, seq=store.next_seq(tx.session, record.id, after.attempt),
        action=action, actor=tx.actor, from_status=before.status, to_status=after.status,
        from_percent_bp=before.percent_bp, to_percent_bp=after.percent_bp, from_step=before.step_index,
        to_step=after.step_index, reasons=reasons, evidence=evidence or [], created_at=tx.now))
    view = rollout_view(record)
    tx.audit(f"rollout.{action}", "rollout", str(record.id), old_view, view, environment=record.environment)
    for event in events:
        tx.emit(event, {"rollout": view, "transition": {"action": action, "from_status": before.status,
                                                        "to_status": after.status,
                                                        "from_percentage": before.percent_bp / 100,
                                                        "to_percentage": after.percent_bp / 100,
                                                        "reasons": reasons},
                        "evidence": evidence or []}, environment=record.environment)
    return record


def save_state(tx: Tx, record: RolloutRecord, after: RolloutState) -> None:
    """Keep the per-step counters of an evaluation that changed nothing else."""
    if not store.compare_and_set(tx.session, record, {"state": after.to_dict(), "updated_at": tx.now}):
        raise ConflictError(f"rollout {record.id} was changed by someone else meanwhile")
    tx.session.expire(record)


def act(runtime: Runtime, actor: str, rollout_id: int, action: str, check_id: str | None = None,
        expected: int | None = None) -> dict[str, Any]:
    """A manual action (start, pause, resume, advance, approve, dismiss, rollback, abort,
    restart), applied in this request: a rollback is in the snapshot when this returns."""
    with runtime.change(actor) as tx:
        record = _require(tx.session, rollout_id, lock=True)
        flags.check_version(record.version, expected, "rollout", str(rollout_id))
        policy, before = load(record, runtime.guardrails)
        if action in ("start", "restart"):
            _target_rule(tx.session, record.flag_key, record.rule_id, record.environment)
        after = apply_action(policy, before, action, _epoch(tx.now), check_id)
        reason = Reason("manual", f"{action} by {actor}", check_id)
        apply(tx, runtime, record, policy, before, after, action, [reason],
              action_events(action, before, after))
        return rollout_view(record)


def now_epoch(runtime: Runtime) -> float:
    return runtime.clock().astimezone(timezone.utc).timestamp()
