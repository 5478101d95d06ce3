"""What an alert rule looks at: the running subjects (experiments, rollouts) and, per rule
kind, the data read and the pure detector called (`flagship.rollout.alerts`).

`detect` returns a `Finding` while the condition holds and None when it does not (or
cannot be judged yet, e.g. too little baseline); `alerting.evaluate_alerts` turns the
changes between the two into opened and resolved alerts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from flagship.db import as_utc
from flagship.experiments import results as experiment_results
from flagship.experiments import stats
from flagship.experiments.store import config as experiment_store
from flagship.experiments.store import reads
from flagship.rollout import alerts
from flagship.rollout import notify_store as store
from flagship.rollout import store as rollout_store
from flagship.rollout.alerts import AlertRule
from flagship.rollout.model import ACTIVE
from flagship.rollout.service import subject_key as rollout_subject_key
from flagship.runtime import Runtime

SUBJECT_TYPES = ("experiment", "rollout")


@dataclass(frozen=True)
class Subject:
    """A running experiment or rollout as the detectors see it."""

    type: str
    key: str
    environment: str
    started_at: float | None  # epoch seconds (the rollout attempt's start)
    exposure_key: str  # where its exposures are counted: the experiment key or the attempt's subject
    attempt: int = 1
    checks: Mapping[str, str] = field(default_factory=dict)  # rollout check id -> type


@dataclass(frozen=True)
class Finding:
    """A condition that holds now: a sentence for people and the numbers behind it."""

    message: str
    evidence: dict[str, Any]


def _epoch(value: datetime | None) -> float | None:
    value = as_utc(value)
    return value.timestamp() if value else None


def running_subjects(runtime: Runtime) -> dict[tuple[str, str], Subject]:
    """Every running experiment and every running or holding rollout."""
    out: dict[tuple[str, str], Subject] = {}
    with runtime.db.session() as session:
        for record in experiment_store.experiments(session, ["running"]):
            out[("experiment", record.key)] = Subject("experiment", record.key, record.environment,
                                                      _epoch(record.started_at), record.key)
        for rollout in rollout_store.rollouts(session, statuses=ACTIVE):
            checks = {c.get("id"): c.get("type") for c in rollout.policy.get("checks", [])}
            out[("rollout", str(rollout.id))] = Subject(
                "rollout", str(rollout.id), rollout.environment, _epoch(rollout.attempt_started_at),
                rollout_subject_key(rollout.id, rollout.attempt), rollout.attempt, checks)
    return out


def subject_environment(session: Any, subject_type: str, subject_key: str) -> str | None:
    """The environment of an existing experiment or rollout, None when there is no such subject."""
    if subject_type == "experiment":
        record = experiment_store.get_experiment(session, subject_key)
        return record.environment if record is not None else None
    if subject_type == "rollout" and subject_key.isdigit():
        rollout = rollout_store.get_rollout(session, int(subject_key))
        return rollout.environment if rollout is not None else None
    return None


# -- the detectors per kind ------------------------------------------------------------------------

Cache = dict[Any, Any]


def _analysis(runtime: Runtime, key: str, cache: Cache) -> dict[str, Any]:
    """An experiment's analysis (without the sequential looks), once per evaluation round."""
    if ("analysis", key) not in cache:
        cache[("analysis", key)] = experiment_results.analyse(
            experiment_results.read(runtime, key, with_looks=False))
    return cache[("analysis", key)]


def _srm_finding(p_value: float, statistic: float, observed: Mapping[str, int],
                 params: Mapping[str, Any]) -> Finding | None:
    if not observed or min(observed.values()) < params["min_units"] or p_value >= params["p_value"]:
        return None
    return Finding(f"sample ratio mismatch: p = {p_value:.2g} < {params['p_value']:g} "
                   f"({', '.join(f'{k}: {v}' for k, v in observed.items())})",
                   {"p_value": p_value, "statistic": statistic, "observed": dict(observed),
                    "threshold": params["p_value"]})


def srm(runtime: Runtime, rule: AlertRule, subject: Subject, now: datetime, cache: Cache) -> Finding | None:
    """Experiments: the analysis' SRM verdict (per weight epoch); rollouts: treatment vs the
    mirrored control, which are equal by design."""
    if subject.type == "experiment":
        verdict = _analysis(runtime, subject.key, cache)["srm"]
        if not verdict.get("checked"):
            return None
        return _srm_finding(verdict["p_value"], verdict["statistic"], verdict["observed"], rule.params)
    with runtime.db.engine.connect() as conn:
        counts = reads.exposure_counts(conn, subject.exposure_key)
    if len(counts) < 2 or sum(counts.values()) == 0:
        return None
    result = stats.srm_test([counts[k] for k in sorted(counts)])
    return _srm_finding(result.p_value, result.statistic, dict(sorted(counts.items())), rule.params)


def _latest_results(runtime: Runtime, subject: Subject) -> list[dict[str, Any]]:
    with runtime.db.session() as session:
        for evaluation in rollout_store.evaluations(session, int(subject.key), limit=20):
            if evaluation.attempt == subject.attempt and evaluation.decision not in (None, "error"):
                return list(evaluation.results or [])
    return []


def guardrail_breach(runtime: Runtime, rule: AlertRule, subject: Subject, now: datetime,
                     cache: Cache) -> Finding | None:
    """Experiments: a guardrail metric breached (non-inferiority rejected); rollouts: a
    blocking check (or the check named) failed in the attempt's latest evaluation."""
    check = rule.params.get("check")
    if subject.type == "experiment":
        breaches = [{"metric": entry["metric"], "variant": c["variant"], **c["guardrail"],
                     "difference": c.get("difference"), "ci": c.get("ci")}
                    for entry in _analysis(runtime, subject.key, cache)["metrics"]
                    for c in entry["comparisons"]
                    if (c.get("guardrail") or {}).get("status") == "breached"
                    and (check is None or entry["metric"] == check)]
        what = ", ".join(f"{b['metric']} ({b['variant']})" for b in breaches)
        return Finding(f"guardrail breached: {what}", {"breaches": breaches}) if breaches else None
    failed = [r for r in _latest_results(runtime, subject) if r.get("outcome") == "fail"
              and (r.get("check_id") == check if check else r.get("severity") == "blocking")]
    what = ", ".join(str(r.get("check_id")) for r in failed)
    return Finding(f"check failed: {what}", {"results": failed}) if failed else None


def _volume(runtime: Runtime, rule: AlertRule, subject: Subject, now: datetime, cache: Cache) -> Finding | None:
    p = rule.params
    now_hour = int(now.timestamp() // 3600)
    since_hour = now_hour - p["baseline_hours"] - 2
    with runtime.db.engine.connect() as conn:
        if p["source"] == "events":
            since = datetime.fromtimestamp(since_hour * 3600, timezone.utc)
            series = store.events_per_hour(conn, subject.environment, p["event"], since)
        else:
            series = store.exposures_per_hour(conn, subject.exposure_key, since_hour)
    signal = alerts.volume_anomaly(series, now_hour, p["threshold"], p["min_baseline_hours"],
                                   p["baseline_hours"])
    if signal is None or signal.kind != rule.kind:
        return None
    what = f"{p['event']} events" if p["source"] == "events" else "exposures"
    return Finding(f"{what} {'dropped' if signal.z < 0 else 'spiked'}: {signal.message}",
                   {"source": p["source"], "event": p["event"], "hour": signal.hour,
                    "value": signal.value, "baseline": signal.baseline, "z": signal.z,
                    "threshold": p["threshold"]})


def no_exposures(runtime: Runtime, rule: AlertRule, subject: Subject, now: datetime,
                 cache: Cache) -> Finding | None:
    """Nothing exposed for `hours` (counted from the start if that is later)."""
    hours = rule.params["hours"]
    with runtime.db.engine.connect() as conn:
        last = store.last_exposure(conn, subject.exposure_key)
    if not alerts.no_exposures(last, now.timestamp(), hours, since=subject.started_at):
        return None
    seen = datetime.fromtimestamp(last, timezone.utc).isoformat() if last is not None else None
    return Finding(f"no exposures for {hours:g} hours" + (f" (last by {seen})" if seen else " since the start"),
                   {"hours": hours, "last_exposure_by": seen,
                    "since": datetime.fromtimestamp(subject.started_at, timezone.utc).isoformat()
                    if subject.started_at else None})


DETECTORS: dict[str, Callable[[Runtime, AlertRule, Subject, datetime, Cache], Finding | None]] = {
    "srm": srm, "guardrail_breach": guardrail_breach, "volume_drop": _volume, "volume_spike": _volume,
    "no_exposures": no_exposures}


def detect(runtime: Runtime, rule: AlertRule, subject: Subject, now: datetime, cache: Cache) -> Finding | None:
    """The finding of `rule` on `subject` at `now`, or None."""
    return DETECTORS[rule.kind](runtime, rule, subject, now, cache)
