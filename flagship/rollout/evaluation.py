"""Periodic evaluation of every active rollout (`evaluate_all`): the same function whether
an RQ worker, the in-process ticker or `flagship rollouts tick` runs it.

Idempotent by construction (ROLLOUT.md §3.6): an evaluation row is unique per (rollout,
attempt, slot), so a slot evaluated twice is skipped the second time, and a decision is
applied by compare-and-set on the rollout's version, so two appliers never both act.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from flagship.db import insert_new
from flagship.experiments.analysis.variants import from_sums
from flagship.experiments.store import config as experiment_store
from flagship.experiments.store import reads, sums
from flagship.rollout import service, store
from flagship.rollout.guardrails import Arm, MetricStats, Observations, run_checks, sample_units
from flagship.rollout.model import ACTIVE, Policy, RolloutState
from flagship.rollout.plan import decide
from flagship.rollout.store import RolloutEvaluationRecord, RolloutRecord
from flagship.runtime import Runtime

log = logging.getLogger(__name__)
ARMS = ("treatment", "control")
KINDS = {"conversion": "conversion", "ratio": "ratio", "mean": "ratio"}  # others: mean of per-unit values


@dataclass
class Reads:
    """What a round reads for all its rollouts, in a handful of statements."""

    metrics: dict[str, Any]
    counts: dict[str, dict[str, int]]
    sums: dict[tuple[str, str], dict[str, tuple[float, ...]]]
    step_units: dict[str, dict[str, int]]


QUIET_EVENTS = frozenset({"rollout.reminder"})  # events that are not transitions


def _metric_keys(policy: Policy) -> set[str]:
    return {c.params["metric"] for c in policy.checks if "metric" in c.params}


def read_all(conn: sa.Connection, items: list[tuple[RolloutRecord, Policy, RolloutState]], now: float) -> Reads:
    """Exposure counts, metric sums and this step's units of every rollout's attempt."""
    subjects = [service.subject_key(r.id, s.attempt) for r, _, s in items]
    keys = sorted({k for _, p, _ in items for k in _metric_keys(p)})
    starts = {service.subject_key(r.id, s.attempt): datetime.fromtimestamp(s.step_started_at or now, timezone.utc)
              for r, _, s in items}
    return Reads(experiment_store.metrics_by_key(conn, keys), reads.exposure_counts_of(conn, subjects),
                 sums.read_many(conn, subjects, keys), reads.exposed_since_of(conn, starts))


def _metric_stats(metric: Any, kept: dict[str, tuple[float, ...]], counts: dict[str, int]) -> dict[str, MetricStats]:
    out = {}
    for arm in ARMS:
        s = from_sums(arm, counts.get(arm, 0), kept.get(arm, sums.ZERO), metric)
        out[arm] = MetricStats(n=s.n, sum=s.sum, sum_sq=s.sum_sq, kind=KINDS.get(metric.kind, "mean"),
                               direction=metric.direction, den_sum=s.den_sum, den_sum_sq=s.den_sum_sq,
                               num_den=s.num_den)
    return out


def observations(data: Reads, record: RolloutRecord, policy: Policy, state: RolloutState,
                 now: float) -> Observations:
    """What the checks see: per-arm units and metric statistics over the attempt, exposures,
    and units first exposed in this step."""
    subject = service.subject_key(record.id, state.attempt)
    counts = data.counts.get(subject, {})
    per_metric = {k: _metric_stats(data.metrics[k], data.sums.get((subject, k), {}), counts)
                  for k in _metric_keys(policy) if k in data.metrics}
    arms = {arm: Arm(units=counts.get(arm, 0), metrics={k: v[arm] for k, v in per_metric.items()})
            for arm in ARMS}
    step_units = data.step_units.get(subject, {})
    started = record.attempt_started_at
    return Observations(
        now=now, arms=arms, exposures={arm: counts.get(arm, 0) for arm in ARMS},
        step_units={arm: step_units.get(arm, 0) for arm in ARMS}, attempt=state.attempt,
        step_index=state.step_index, percent_bp=state.percent_bp,
        attempt_started_at=started.replace(tzinfo=started.tzinfo or timezone.utc).timestamp() if started else None,
        step_started_at=state.step_started_at,
        rollout={"id": record.id, "flag": record.flag_key, "rule_id": record.rule_id,
                 "environment": record.environment, "variant": record.variant, "subject": subject})


def _claim_slots(runtime: Runtime, records: list[RolloutRecord], slot: int, now: datetime) -> set[int]:
    """Insert one (rollout, attempt, slot) row each; the ids of those this call inserted
    (another evaluator has the rest already)."""
    rows = [{"rollout_id": r.id, "attempt": r.attempt, "slot": slot, "evaluated_at": now,
             "reasons": [], "results": []} for r in records]
    if not rows:
        return set()
    with runtime.db.write_connection() as conn:
        return {row[0] for row in insert_new(conn, RolloutEvaluationRecord.__table__, rows, ("rollout_id",))}


def _outcome_values(decision: Any, results: list[Any], window: Observations | None,
                    error: str | None = None) -> dict[str, Any]:
    return {"decision": decision.action if decision else "error",
            "reasons": [r.to_dict() for r in decision.reasons] if decision else [{"code": "error", "text": error}],
            "results": [r.to_dict() for r in results],
            "observations": window.summary() if window is not None else None}


def _record_outcome(tx: Any, record: RolloutRecord, slot: int, values: dict[str, Any]) -> None:
    table = RolloutEvaluationRecord.__table__
    tx.session.execute(sa.update(table).where(table.c.rollout_id == record.id, table.c.attempt == record.attempt,
                                              table.c.slot == slot).values(**values))


@dataclass
class _Work:
    """One claimed rollout's evaluation, computed in the read phase."""

    record: RolloutRecord
    policy: Policy | None = None
    state: RolloutState | None = None
    decision: Any = None
    results: list[Any] = field(default_factory=list)
    window: Observations | None = None
    error: str | None = None

    @property
    def moves(self) -> bool:
        """A transition to record (status, step or percentage changed, or an event besides a
        reminder); a reminder alone is written with the quiet evaluations."""
        after, before = self.decision.state, self.state
        return bool(set(self.decision.events) - QUIET_EVENTS) or (
            after.status, after.percent_bp, after.step_index, after.attempt) != (
            before.status, before.percent_bp, before.step_index, before.attempt)


def _compute(runtime: Runtime, data: Reads, work: _Work, now: datetime) -> None:
    """Observations, checks and the decision of one rollout (no I/O; errors kept)."""
    try:
        work.window = observations(data, work.record, work.policy, work.state, now.timestamp())
        work.results = run_checks(work.policy, work.window, runtime.guardrails)
        work.decision = decide(work.policy, work.state, work.results, now.timestamp(),
                               units=sample_units(work.policy, work.window))
    except Exception as exc:  # noqa: BLE001 - recorded as an error evaluation; the next slot retries
        log.exception("rollout %s: evaluation failed", work.record.id)
        work.error = f"{type(exc).__name__}: {exc}"


def _write_quiet(runtime: Runtime, quiet: list[_Work], slot: int) -> dict[str, int]:
    """One transaction, two statements, for every evaluation that changed no status or
    percentage: the evaluation rows and the per-step counters, the latter only where the
    rollout is still at the version read (a rollout changed meanwhile is superseded)."""
    tally: dict[str, int] = {}
    if not quiet:
        return tally
    e, r = RolloutEvaluationRecord.__table__, RolloutRecord.__table__
    outcomes = [{"rid": w.record.id, "att": w.record.attempt, "b_slot": slot,
                 **{f"b_{k}": v for k, v in _outcome_values(w.decision, w.results, w.window, w.error).items()}}
                for w in quiet]
    counters = [w for w in quiet if w.error is None and w.decision.state != w.state]
    current: dict[int, int] = {}
    with runtime.change("system:rollout") as tx:
        conn = tx.session.connection()
        conn.execute(sa.update(e).where(e.c.rollout_id == sa.bindparam("rid"), e.c.attempt == sa.bindparam("att"),
                                        e.c.slot == sa.bindparam("b_slot"))
                     .values(decision=sa.bindparam("b_decision"), reasons=sa.bindparam("b_reasons"),
                             results=sa.bindparam("b_results"), observations=sa.bindparam("b_observations")),
                     outcomes)
        if counters:
            conn.execute(sa.update(r).where(r.c.id == sa.bindparam("rid"), r.c.version == sa.bindparam("v"))
                         .values(state=sa.bindparam("new_state"), version=r.c.version + 1, updated_at=tx.now),
                         [{"rid": w.record.id, "v": w.record.version, "new_state": w.decision.state.to_dict()}
                          for w in counters])
            current = dict(conn.execute(sa.select(r.c.id, r.c.version).where(
                r.c.id.in_([w.record.id for w in counters]))).all())
        stale = {w.record.id for w in counters if current.get(w.record.id) != w.record.version + 1}
        for work in counters:  # a hold or approval that lasts: told again (not a transition)
            if work.record.id not in stale and "rollout.reminder" in work.decision.events:
                _remind(tx, work)
    for work in quiet:
        outcome = "error" if work.error else ("superseded" if work.record.id in stale else work.decision.action)
        tally[outcome] = tally.get(outcome, 0) + 1
    return tally


def _remind(tx: Any, work: _Work) -> None:
    state = work.decision.state
    view = {**service.rollout_view(work.record), "state": state.to_dict(), "status": state.status}
    reasons = [r.to_dict() for r in work.decision.reasons]
    tx.emit("rollout.reminder", {"rollout": view, "transition": {
        "action": "hold", "from_status": work.state.status, "to_status": state.status,
        "from_percentage": work.state.percent_bp / 100, "to_percentage": state.percent_bp / 100,
        "reasons": reasons}, "evidence": [r.to_dict() for r in work.results]},
        environment=work.record.environment)


def _write_move(runtime: Runtime, work: _Work, slot: int) -> str:
    """A decision that moves the rollout: its own transaction, compare-and-set first."""
    with runtime.change("system:rollout") as tx:
        current = store.get_rollout(tx.session, work.record.id, lock=True)
        values = _outcome_values(work.decision, work.results, work.window)
        _record_outcome(tx, work.record, slot, values)
        if current is None or current.version != work.record.version:
            return "superseded"
        service.apply(tx, runtime, current, work.policy, work.state, work.decision.state,
                      work.decision.action, list(work.decision.reasons) + list(work.decision.notices),
                      work.decision.events, [r.to_dict() for r in work.results])
    return work.decision.action


def evaluate_all(runtime: Runtime, slot: int) -> dict[str, int]:
    """Evaluate every running or holding rollout once for `slot`: claim the slot rows in one
    statement, read and decide in one read transaction, write the quiet outcomes in one
    transaction and each move in its own. One failing rollout never stops the others."""
    now = runtime.clock()
    with runtime.db.session() as session:
        records = list(store.rollouts(session, statuses=ACTIVE))
        for record in records:
            session.expunge(record)
    claimed = _claim_slots(runtime, records, slot, now)
    tally: dict[str, int] = {"skipped": len(records) - len(claimed)} if len(records) > len(claimed) else {}
    work = [_Work(r) for r in records if r.id in claimed]
    for item in work:
        try:
            item.policy, item.state = service.load(item.record, runtime.guardrails)
        except Exception as exc:  # noqa: BLE001 - a policy that no longer loads: an error evaluation
            item.error = f"{type(exc).__name__}: {exc}"
    loaded = [w for w in work if w.error is None]
    with runtime.db.engine.connect() as conn, conn.begin():
        data = read_all(conn, [(w.record, w.policy, w.state) for w in loaded], now.timestamp())
    for item in loaded:
        _compute(runtime, data, item, now)
    quiet = [w for w in work if w.error is not None or not w.moves]
    for outcome, n in _write_quiet(runtime, quiet, slot).items():
        tally[outcome] = tally.get(outcome, 0) + n
    for item in work:
        if item.error is None and item.moves:
            try:
                outcome = _write_move(runtime, item, slot)
            except Exception:  # noqa: BLE001 - logged; the next slot evaluates it again
                log.exception("rollout %s: applying the decision failed", item.record.id)
                outcome = "error"
            tally[outcome] = tally.get(outcome, 0) + 1
    return tally
