"""Incremental attribution: events and exposures folded into per-unit, per-metric rows.

Work queue: rows of `events` and `exposures` with ``aggregated = false``. One round,
in one transaction with a consistent view (SQLite: the write lock; PostgreSQL:
REPEATABLE READ behind an advisory lock), pairs

- every new exposure with the unit's already-aggregated events, and
- every new event with the unit's exposures that are aggregated or new in this round,

then marks both sets aggregated. Each (event, exposure) pair is therefore folded in
exactly once, whichever of the two arrived first. An event counts for an experiment's
metric when it comes at or after the unit's first exposure and inside the experiment's
window; events before the exposure feed the pre-exposure value (for CUPED). Every
post-exposure pair also counts as an accepted (and maybe late) event of that experiment
for its data-quality counters.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import sqlalchemy as sa

from flagship.db import Database, upsert
from flagship.experiments.events import MAX_EVENT_VALUE
from flagship.experiments.model import Metric, load_experiment
from flagship.experiments.store import events, sums
from flagship.experiments.store.config import metrics_by_key
from flagship.experiments.store.sums import COUNTERS, HOUR
from flagship.experiments.store.tables import (AggregationStateRecord, AnalysisSubjectRecord, EventRecord,
                                               ExperimentQualityRecord,
                                               ExperimentRecord, ExposureCountRecord, ExposureRecord,
                                               UnitMetricRecord)

CHUNK = 500
LATE_AFTER = 3600.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """One experiment's attribution rules for a round."""

    key: str
    start: datetime
    end: datetime | None
    metrics: tuple[Metric, ...]
    environment: str = "production"  # only this environment's events count

    @property
    def signature(self) -> str:
        """What the unit rows depend on: the metric definitions and the window (a changed
        window re-admits or drops events, so it rebuilds too)."""
        metrics = "|".join(f"{m.key}:{m.event}:{m.kind}:{m.denominator_event or ''}"
                           for m in sorted(self.metrics, key=lambda m: m.key))
        end = self.end.isoformat() if self.end else ""
        return f"v2;{self.start.isoformat()}..{end};{metrics}"


def utc(value: Any) -> Any:
    """Aware UTC datetimes from what the backends hand back (SQLite drops tzinfo)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def period(value: Any) -> int:
    """The hour (epoch seconds // 3600) a timestamp falls in."""
    return int(utc(value).timestamp() // HOUR)


def _plans(conn: sa.Connection) -> dict[str, Plan]:
    table = ExperimentRecord.__table__
    records = conn.execute(sa.select(table).where(table.c.started_at.is_not(None))).all()
    experiments = {r.key: load_experiment(r.document) for r in records}
    subjects = conn.execute(sa.select(AnalysisSubjectRecord.__table__)).all()
    wanted = {k for e in experiments.values() for k in e.metric_keys} | {k for s in subjects for k in s.metrics}
    metrics = metrics_by_key(conn, wanted)
    plans = {s.key: Plan(s.key, utc(s.started_at), utc(s.ended_at) if s.ended_at else None,
                         tuple(metrics[k] for k in s.metrics if k in metrics), s.environment)
             for s in subjects}
    for record in records:
        experiment = experiments[record.key]
        start, end = experiment.window(utc(record.started_at), utc(record.ended_at))  # type: ignore[misc]
        chosen = tuple(metrics[k] for k in experiment.metric_keys if k in metrics)
        # a plan even without metrics: its signature records that nothing was counted, so
        # metrics added later are rebuilt from history instead of starting from now
        plans[record.key] = Plan(record.key, start, end, chosen, record.environment)
    return plans


class Deltas:
    """Accumulates per (experiment, metric, unit, hour) increments and quality counts."""

    def __init__(self, plans: dict[str, Plan], late_after: float = LATE_AFTER) -> None:
        self.rows: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        self.quality: dict[tuple[str, datetime, str], int] = {}
        self.plans, self.late_after = plans, late_after
        self.skipped = 0  # pairs left out: an event value beyond MAX_EVENT_VALUE
        self._by_event: dict[str, list[tuple[Plan, Metric, str]]] = {}
        for plan in plans.values():
            for metric in plan.metrics:
                self._by_event.setdefault(metric.event, []).append((plan, metric, "num"))
                if metric.denominator_event:
                    self._by_event.setdefault(metric.denominator_event, []).append((plan, metric, "den"))

    @property
    def event_names(self) -> set[str]:
        return set(self._by_event)

    def count(self, event: Any, exposure: Any) -> None:
        """Count a post-exposure event for the experiment's data-quality counters."""
        plan = self.plans.get(exposure.experiment_key)
        if plan is None or plan.environment != event.environment:
            return
        ts, received = utc(event.timestamp), utc(event.received_at)
        if ts < utc(exposure.assigned_at):
            return
        hour = received.replace(minute=0, second=0, microsecond=0)
        kinds = ("accepted", "late") if (received - ts).total_seconds() > self.late_after else ("accepted",)
        for kind in kinds:
            key = (exposure.experiment_key, hour, kind)
            self.quality[key] = self.quality.get(key, 0) + 1

    def pair(self, event: Any, exposure: Any) -> None:
        """Fold one (event, exposure) pair in."""
        if not abs(event.value) <= MAX_EVENT_VALUE:
            # stored before ingestion bounded values: it would make the unit's sums
            # infinite and fail every round after it, for every experiment
            self.skipped += 1
            return
        ts, assigned = utc(event.timestamp), utc(exposure.assigned_at)
        for plan, metric, role in self._by_event.get(event.event, ()):
            if plan.key != exposure.experiment_key or plan.environment != event.environment:
                continue
            if ts < assigned:
                column = "pre_sum" if role == "num" else "pre_den_sum"
                counter = "pre_count" if role == "num" else None
            elif ts >= plan.start and (plan.end is None or ts < plan.end):
                column, counter = ("post_sum", "post_count") if role == "num" else ("den_sum", "den_count")
            else:
                continue  # after the window closed
            hour = int(ts.timestamp() // HOUR)
            row = self.rows.setdefault((plan.key, metric.key, exposure.unit, hour), {
                "experiment_key": plan.key, "metric_key": metric.key, "unit": exposure.unit,
                "variant": exposure.variant, "period": hour, **{c: 0 for c in COUNTERS}})
            row[column] += event.value
            if counter:
                row[counter] += 1


@contextmanager
def _postgres_round(db: Database) -> Iterator[sa.Connection]:
    with db.engine.connect() as lock:
        # a session-level lock taken before the snapshot: two aggregators never overlap,
        # and the second one's REPEATABLE READ view starts after the first committed
        lock.execute(sa.text("SELECT pg_advisory_lock(7270417)"))
        lock.commit()
        try:
            with db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
                with conn.begin():
                    yield conn
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(7270417)"))
            lock.commit()


def _chunks(items: list[Any], size: int = CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _old_rows(conn: sa.Connection, rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The current unit rows the increments will change."""
    table = UnitMetricRecord.__table__
    wanted: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        wanted.setdefault((row["experiment_key"], row["metric_key"]), set()).add(row["unit"])
    old = {}
    for (experiment, metric), units in wanted.items():
        for chunk in _chunks(sorted(units)):
            for row in conn.execute(sa.select(table).where(
                    table.c.experiment_key == experiment, table.c.metric_key == metric,
                    table.c.unit.in_(chunk))).mappings():
                old[(experiment, metric, row["unit"])] = dict(row)
    return old


def _unit_writes(increments: list[dict[str, Any]], plans: dict[str, Plan],
                 old: dict[tuple[str, str, str], dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The variant-sum rows (by hour) and the unit-row increments that `increments` make
    on the `old` unit rows: worked out here, written by `_write_units`."""
    kinds = {(p.key, m.key): m.kind for p in plans.values() for m in p.metrics}
    deltas, totals = sums.changes(kinds, old, increments)
    return sums.rows(deltas), list(totals.values())


def _write_units(conn: sa.Connection, sum_rows: list[dict[str, Any]], unit_rows: list[dict[str, Any]]) -> None:
    sums.add(conn, sum_rows)
    for chunk in _chunks(unit_rows, 2000):
        upsert(conn, UnitMetricRecord.__table__, chunk, ["experiment_key", "metric_key", "unit"],
               add=COUNTERS)


def _exposure_counts(exposures: list[Any]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str, int, int], int] = {}
    for row in exposures:
        key = (row.experiment_key, row.variant, row.epoch, period(row.assigned_at))
        counts[key] = counts.get(key, 0) + 1
    return [{"experiment_key": e, "variant": v, "epoch": ep, "period": p, "count": n}
            for (e, v, ep, p), n in counts.items()]


def _stale(conn: sa.Connection, plans: dict[str, Plan]) -> list[Plan]:
    """The plans whose unit rows were built for other metric definitions or another window."""
    state = AggregationStateRecord.__table__
    known = dict(conn.execute(sa.select(state.c.experiment_key, state.c.signature)).all())
    return [plan for plan in plans.values() if known.get(plan.key) != plan.signature]


def _rebuild_stale(conn: sa.Connection, plans: dict[str, Plan]) -> None:
    """Recompute experiments whose metric definitions changed since their rows were built."""
    state = AggregationStateRecord.__table__
    for plan in _stale(conn, plans):
        conn.execute(sa.delete(UnitMetricRecord.__table__).where(
            UnitMetricRecord.__table__.c.experiment_key == plan.key))
        sums.reset(conn, plan.key)
        deltas = Deltas({plan.key: plan})
        x, e = ExposureRecord.__table__, EventRecord.__table__
        pairs = conn.execute(
            sa.select(e.c.event, e.c.value, e.c.timestamp, e.c.environment, x.c.experiment_key,
                      x.c.unit, x.c.variant, x.c.assigned_at)
            .join(x, x.c.unit == e.c.unit)
            .where(x.c.experiment_key == plan.key, x.c.aggregated, e.c.aggregated,
                   e.c.environment == plan.environment, e.c.event.in_(deltas.event_names)))
        for row in pairs:
            deltas.pair(row, row)
        _write_units(conn, *_unit_writes(list(deltas.rows.values()), plans, old={}))
        conn.execute(sa.delete(state).where(state.c.experiment_key == plan.key))
        conn.execute(sa.insert(state).values(experiment_key=plan.key, signature=plan.signature))


def _by_unit(conn: sa.Connection, units: set[str], query: Any) -> dict[str, list[Any]]:
    """Rows of `query(chunk_of_units)`, grouped by unit."""
    grouped: dict[str, list[Any]] = {}
    for chunk in _chunks(sorted(units)):
        for row in conn.execute(query(chunk)):
            grouped.setdefault(row.unit, []).append(row)
    return grouped


@dataclass
class _Work:
    """One round: the rows it writes, all worked out in its read phase so that the write
    phase (under SQLite's write lock) only writes, and the pending rows it takes."""

    taken: int
    sum_rows: list[dict[str, Any]]
    unit_rows: list[dict[str, Any]]
    quality_rows: list[dict[str, Any]]
    exposure_counts: list[dict[str, Any]]
    accepted: dict[tuple[datetime, str], int]
    last_event: int | None  # the highest id of the events taken
    exposures: list[tuple[str, str]]  # (experiment, unit) of the exposures taken


def _collect(conn: sa.Connection, plans: dict[str, Plan], batch: int, late_after: float) -> _Work | None:
    """Read the pending rows, pair them and work out what the round writes (reads only)."""
    x, e = ExposureRecord.__table__, EventRecord.__table__
    columns = (e.c.id, e.c.unit, e.c.event, e.c.value, e.c.timestamp, e.c.received_at, e.c.environment)
    new_x = conn.execute(sa.select(x).where(sa.not_(x.c.aggregated)).limit(batch)).all()
    new_e = conn.execute(sa.select(*columns).where(sa.not_(e.c.aggregated))
                         .order_by(e.c.id).limit(batch)).all()
    if not new_x and not new_e:
        return None
    deltas = Deltas(plans, late_after)
    # new exposures x events already folded in (the unit's history so far)
    tracked_x = [row for row in new_x if row.experiment_key in plans]
    history = _by_unit(conn, {row.unit for row in tracked_x}, lambda chunk: sa.select(*columns)
                       .where(e.c.aggregated, e.c.unit.in_(chunk)))
    for exposure in tracked_x:
        for event in history.get(exposure.unit, ()):
            deltas.pair(event, exposure)
            deltas.count(event, exposure)
    # new events x the unit's exposures that are folded in or being folded in now;
    # an exposure left for a later round will meet this event there (in step 1)
    taken = {(row.experiment_key, row.unit) for row in new_x}
    exposures = _by_unit(conn, {row.unit for row in new_e},
                         lambda chunk: sa.select(x).where(x.c.unit.in_(chunk)))
    for event in new_e:
        for exposure in exposures.get(event.unit, ()):
            if exposure.aggregated or (exposure.experiment_key, exposure.unit) in taken:
                deltas.pair(event, exposure)
                deltas.count(event, exposure)
    if deltas.skipped:
        log.warning("left %d event(s) out of the metrics: their value is beyond +-%g (stored "
                    "before ingestion bounded values)", deltas.skipped, MAX_EVENT_VALUE)
    increments = list(deltas.rows.values())
    sum_rows, unit_rows = _unit_writes(increments, plans, _old_rows(conn, increments))
    return _Work(
        taken=len(new_x) + len(new_e), sum_rows=sum_rows, unit_rows=unit_rows,
        quality_rows=[{"experiment_key": k, "hour": h, "kind": kind, "count": n}
                      for (k, h, kind), n in deltas.quality.items()],
        exposure_counts=_exposure_counts(new_x),
        accepted=events.accepted_counts(utc(row.received_at) for row in new_e),
        last_event=new_e[-1].id if new_e else None,
        exposures=[(row.experiment_key, row.unit) for row in new_x])


def _apply(conn: sa.Connection, work: _Work) -> int:
    """Write a round's rows and mark the rows it took folded in (writes only)."""
    e = EventRecord.__table__
    _write_units(conn, work.sum_rows, work.unit_rows)
    upsert(conn, ExperimentQualityRecord.__table__, work.quality_rows,
           ["experiment_key", "hour", "kind"], add=("count",))
    upsert(conn, ExposureCountRecord.__table__, work.exposure_counts,
           ["experiment_key", "variant", "epoch", "period"], add=("count",))
    events.add_counts(conn, work.accepted)
    if work.last_event is not None:
        # the events taken are exactly the pending ones up to the highest id taken (ORDER
        # BY id LIMIT): rows committed since have higher ids (SQLite) or are not in this
        # transaction's view (PostgreSQL), so they are untouched
        conn.execute(sa.update(e).where(sa.not_(e.c.aggregated), e.c.id <= work.last_event)
                     .values(aggregated=True))
    if work.exposures:
        _mark_exposures(conn, work.exposures)
    return work.taken


# One statement whatever the number of exposures, with the keys in one parameter: an
# executemany or an expanding IN of thousands of rows costs tens of milliseconds of
# Python under the write lock, the statement itself a few.
_MARK_EXPOSURES = {
    "sqlite": sa.text(
        "UPDATE exposures SET aggregated = 1 WHERE NOT aggregated AND (experiment_key, unit) IN "
        "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:taken))"),
    "postgresql": sa.text(
        "UPDATE exposures SET aggregated = true WHERE NOT aggregated AND (experiment_key, unit) IN "
        "(SELECT k, u FROM unnest(CAST(:keys AS varchar[]), CAST(:units AS varchar[])) AS t(k, u))"),
}


def _mark_exposures(conn: sa.Connection, taken: list[tuple[str, str]]) -> None:
    """Mark the (experiment, unit) exposures `taken` folded in."""
    if conn.dialect.name == "sqlite":
        conn.execute(_MARK_EXPOSURES["sqlite"], {"taken": json.dumps(taken)})
    else:
        keys, units = zip(*taken)
        conn.execute(_MARK_EXPOSURES["postgresql"], {"keys": list(keys), "units": list(units)})


def run_round(db: Database, batch: int = 5_000, late_after: float = LATE_AFTER) -> int:
    """Fold up to `batch` pending events and exposures in; return how many rows were taken.

    On SQLite the round reads in read transactions (the plans too, unless one must be
    rebuilt) and holds the write lock only for its short write phase, so event ingestion
    and first assignments are not stalled behind it; rounds exclude each
    other through their own lock, and only rounds write the aggregate tables, so what a
    round read is still current when it writes.
    """
    if not db.is_sqlite:
        with _postgres_round(db) as conn:
            plans = _plans(conn)
            _rebuild_stale(conn, plans)
            work = _collect(conn, plans, batch, late_after)
            return _apply(conn, work) if work else 0
    with db.aggregate_lock.hold():
        with db.engine.connect() as conn, conn.begin():
            plans = _plans(conn)
            stale = bool(_stale(conn, plans))
        if stale:  # rare, and reads+writes: under the write lock, reading the plans again
            with db.write_connection() as conn:
                plans = _plans(conn)
                _rebuild_stale(conn, plans)
        with db.engine.connect() as conn, conn.begin():
            work = _collect(conn, plans, batch, late_after)
        if work is None:
            return 0
        with db.write_connection() as conn:
            return _apply(conn, work)


def catch_up(db: Database, batch: int = 5_000, late_after: float = LATE_AFTER) -> int:
    """Run rounds until everything pending when the call began is folded in; return the
    rows processed.

    A round that takes fewer than `batch` rows has taken every row committed before it
    read, so the call stops there: under a steady stream of events, chasing the few rows
    that arrived during the last round would run round after round of fixed cost (and
    write-lock hand-offs with the ingesting requests) for a handful of rows each; they
    wait for the next call instead.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    total = 0
    while True:
        done = run_round(db, batch, late_after)
        total += done
        if done < batch:
            return total
