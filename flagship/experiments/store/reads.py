"""What the analysis, the monitor and the exports read: O(variants x hours) rows for the
statistics, plus the per-unit reads that only winsorized metrics and exports need."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

import numpy as np
import sqlalchemy as sa

from flagship.experiments.analysis.variants import VariantStats
from flagship.experiments.model import Metric
from flagship.experiments.store import sums
from flagship.experiments.store.tables import (EventIssueRecord, EventRecord, ExperimentQualityRecord,
                                               ExposureCountRecord, ExposureRecord, UnitMetricRecord)


def exposure_counts(conn: sa.Connection, experiment: str) -> dict[str, int]:
    """Exposed (aggregated) units per variant."""
    t = ExposureCountRecord.__table__
    rows = conn.execute(sa.select(t.c.variant, sa.func.sum(t.c.count))
                        .where(t.c.experiment_key == experiment).group_by(t.c.variant))
    return {variant: int(n or 0) for variant, n in rows}


def exposures_by_epoch(conn: sa.Connection, experiment: str) -> dict[tuple[int, str], int]:
    """Exposed units per (weight epoch, variant)."""
    t = ExposureCountRecord.__table__
    rows = conn.execute(sa.select(t.c.epoch, t.c.variant, sa.func.sum(t.c.count))
                        .where(t.c.experiment_key == experiment).group_by(t.c.epoch, t.c.variant))
    return {(int(epoch), variant): int(n or 0) for epoch, variant, n in rows}


def exposures_by_hour(conn: sa.Connection, experiment: str) -> dict[str, dict[int, int]]:
    """New exposed units per variant and hour of assignment."""
    t = ExposureCountRecord.__table__
    rows = conn.execute(sa.select(t.c.variant, t.c.period, sa.func.sum(t.c.count))
                        .where(t.c.experiment_key == experiment).group_by(t.c.variant, t.c.period))
    out: dict[str, dict[int, int]] = {}
    for variant, hour, n in rows:
        out.setdefault(variant, {})[int(hour)] = int(n or 0)
    return out


def sums_by_hour(conn: sa.Connection, experiment: str, metric: str) -> dict[str, dict[int, tuple[float, ...]]]:
    """Changes of each variant's sums per hour."""
    out: dict[str, dict[int, tuple[float, ...]]] = {}
    for variant, hour, row in sums.by_period(conn, experiment, metric):
        out.setdefault(variant, {})[hour] = row
    return out


def value_columns(metric: Metric, table: sa.Table) -> tuple[Any, Any]:
    """SQL expressions of a unit's value y and pre-exposure value x for the metric kind
    (for `mean`: the unit's average event value)."""
    c = table.c
    zero = sa.literal(0.0)
    if metric.kind == "conversion":
        return (sa.case((c.post_count > 0, 1.0), else_=zero), sa.case((c.pre_count > 0, 1.0), else_=zero))
    if metric.kind == "count":
        return sa.cast(c.post_count, sa.Float), sa.cast(c.pre_count, sa.Float)
    if metric.kind == "mean":
        return (sa.case((c.post_count > 0, c.post_sum / c.post_count), else_=zero),
                sa.case((c.pre_count > 0, c.pre_sum / c.pre_count), else_=zero))
    return c.post_sum, c.pre_sum  # sum, and a ratio's numerator


def unit_values(conn: sa.Connection, experiment: str, metric: Metric) -> dict[str, tuple[str, float, float, float]]:
    """unit -> (variant, y, x, d) of the units with a row (for `mean`: y the unit's total
    value and d its number of events; other kinds: d the denominator)."""
    t = UnitMetricRecord.__table__
    y, x = value_columns(metric, t)
    d = t.c.den_sum
    if metric.kind == "mean":
        y, d = t.c.post_sum, sa.cast(t.c.post_count, sa.Float)
    rows = conn.execute(sa.select(t.c.unit, t.c.variant, y, x, d).where(
        t.c.experiment_key == experiment, t.c.metric_key == metric.key))
    return {row[0]: (row[1], float(row[2]), float(row[3]), float(row[4])) for row in rows}


def winsorized_stats(conn: sa.Connection, experiment: str, metric: Metric,
                     counts: dict[str, int]) -> dict[str, VariantStats]:
    """Per-variant statistics with per-unit values capped at the metric's percentile (for
    `mean`, the unit's average value is capped and its events keep their number)."""
    rows = list(unit_values(conn, experiment, metric).values())
    if metric.kind == "mean":
        active = [(v, y / d, x, d) for v, y, x, d in rows if d > 0]
        cap = float(np.percentile([a for _, a, _, _ in active], metric.winsorize_percentile)) if active else 0.0
        out = {}
        for variant in sorted(counts):
            mine = [(min(a, cap) * d, d) for v, a, _, d in active if v == variant]
            y = np.array([m[0] for m in mine]) if mine else np.zeros(0)
            d = np.array([m[1] for m in mine]) if mine else np.zeros(0)
            out[variant] = VariantStats(variant, len(mine), float(y.sum()), float((y * y).sum()),
                                        den_sum=float(d.sum()), den_sum_sq=float((d * d).sum()),
                                        num_den=float((y * d).sum()))
        return out
    total = sum(counts.values())
    ys = np.zeros(total)
    ys[:len(rows)] = [r[1] for r in rows]
    cap = float(np.percentile(ys, metric.winsorize_percentile)) if total else 0.0
    out = {}
    for variant, n in sorted(counts.items()):
        mine = [(min(y, cap), min(x, cap)) for v, y, x, _ in rows if v == variant]
        y = np.array([p[0] for p in mine]) if mine else np.zeros(0)
        x = np.array([p[1] for p in mine]) if mine else np.zeros(0)
        out[variant] = VariantStats(variant, n, float(y.sum()), float((y * y).sum()), float(x.sum()),
                                    float((x * x).sum()), float((x * y).sum()))
    return out


def scan_variant_stats(conn: sa.Connection, experiment: str, metric: Metric,
                       counts: dict[str, int]) -> dict[str, tuple[float, ...]]:
    """The sums (in `sums.SUMS` order) computed by scanning the unit rows: the reference
    the incrementally kept sums must equal."""
    t = UnitMetricRecord.__table__
    y, x = value_columns(metric, t)
    d = t.c.den_sum
    if metric.kind == "mean":
        y, d = t.c.post_sum, sa.cast(t.c.post_count, sa.Float)
    if metric.kind == "mean":
        x = t.c.pre_sum
    active = sa.case(((t.c.post_count > 0) | (t.c.den_count > 0), 1.0), else_=sa.literal(0.0))
    where = [t.c.experiment_key == experiment, t.c.metric_key == metric.key]
    if metric.kind == "mean":
        where.append(t.c.post_count > 0)
    rows = conn.execute(sa.select(
        t.c.variant, sa.func.sum(active), sa.func.sum(y), sa.func.sum(y * y), sa.func.sum(x),
        sa.func.sum(x * x), sa.func.sum(x * y), sa.func.sum(d), sa.func.sum(d * d), sa.func.sum(y * d))
        .where(*where).group_by(t.c.variant)).all()
    found = {row[0]: tuple(float(v or 0.0) for v in row[1:]) for row in rows}
    return {variant: found.get(variant, sums.ZERO) for variant in sorted(counts)}


def metric_volume(conn: sa.Connection, experiment: str, metric: str) -> int:
    """Counted events of one metric."""
    t = UnitMetricRecord.__table__
    value = conn.execute(sa.select(sa.func.sum(t.c.post_count)).where(
        t.c.experiment_key == experiment, t.c.metric_key == metric)).scalar()
    return int(value or 0)


def _hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def experiment_quality(conn: sa.Connection, experiment: str, since: datetime | None) -> dict[str, int]:
    """Accepted / late events of the experiment's exposed units, and duplicate / rejected
    events naming them (since the experiment started)."""
    q, i, x = ExperimentQualityRecord.__table__, EventIssueRecord.__table__, ExposureRecord.__table__
    counts = {kind: int(n or 0) for kind, n in conn.execute(
        sa.select(q.c.kind, sa.func.sum(q.c.count)).where(q.c.experiment_key == experiment)
        .group_by(q.c.kind))}
    issues = sa.select(i.c.kind, sa.func.sum(i.c.count)).join(
        x, sa.and_(x.c.unit == i.c.unit, x.c.experiment_key == experiment)).group_by(i.c.kind)
    if since is not None:
        issues = issues.where(i.c.hour >= _hour(since))
    counts.update({kind: int(n or 0) for kind, n in conn.execute(issues)})
    return {k: counts.get(k, 0) for k in ("accepted", "duplicate", "rejected", "late")}


def pending(conn: sa.Connection) -> dict[str, int]:
    """Events and exposures not yet folded into the aggregates (what a read may lag by)."""
    e, x = EventRecord.__table__, ExposureRecord.__table__
    return {"events": int(conn.execute(sa.select(sa.func.count()).where(sa.not_(e.c.aggregated))).scalar_one()),
            "exposures": int(conn.execute(sa.select(sa.func.count()).where(sa.not_(x.c.aggregated))).scalar_one())}


def oldest_pending_event(conn: sa.Connection) -> datetime | None:
    """When the oldest event not yet aggregated was received (None: nothing pending)."""
    e = EventRecord.__table__
    value = conn.execute(sa.select(e.c.received_at).where(sa.not_(e.c.aggregated))
                         .order_by(e.c.id).limit(1)).scalar()
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def export_rows(conn: sa.Connection, query: Any, batch: int) -> Iterator[Any]:
    """Rows in batches (a server-side cursor on PostgreSQL): no table is held in memory."""
    return iter(conn.execute(query.execution_options(yield_per=batch)))


def _iso(value: datetime | None) -> str | None:
    """UTC ISO-8601 (SQLite hands datetimes back naive, PostgreSQL in the session's zone)."""
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).isoformat()


def export_assignments(conn: sa.Connection, key: str, batch: int) -> Iterator[dict[str, Any]]:
    """The experiment's units: variant, weight epoch and assignment time."""
    x = ExposureRecord.__table__
    query = sa.select(x.c.unit, x.c.variant, x.c.epoch, x.c.assigned_at).where(x.c.experiment_key == key)
    for row in export_rows(conn, query.order_by(x.c.unit), batch):
        yield {"unit": row.unit, "variant": row.variant, "epoch": row.epoch,
               "assigned_at": _iso(row.assigned_at)}


def export_events(conn: sa.Connection, key: str, batch: int) -> Iterator[dict[str, Any]]:
    """Every event of the experiment's units, before and after exposure (the `aggregated`
    flag and the surrogate id are the store's bookkeeping, not data)."""
    e, x = EventRecord.__table__, ExposureRecord.__table__
    query = (sa.select(e.c.event_id, e.c.unit, e.c.event, e.c.value, e.c.timestamp, e.c.received_at,
                       e.c.properties)
             .join(x, sa.and_(x.c.unit == e.c.unit, x.c.experiment_key == key)).order_by(e.c.id))
    for row in export_rows(conn, query, batch):
        yield {**row._mapping, "timestamp": _iso(row.timestamp), "received_at": _iso(row.received_at)}


def export_unit_rows(conn: sa.Connection, key: str, metric: Metric, batch: int) -> Iterator[dict[str, Any]]:
    """One row per assigned unit: zeros for units without events, as the analysis counts them."""
    from flagship.experiments.store.sums import COUNTERS

    x, t = ExposureRecord.__table__, UnitMetricRecord.__table__
    value, pre_value = value_columns(metric, t)  # the analysis' own formulas: the file cannot drift
    zero = sa.func.coalesce
    joined = x.outerjoin(t, sa.and_(t.c.experiment_key == x.c.experiment_key,
                                    t.c.metric_key == metric.key, t.c.unit == x.c.unit))
    query = (sa.select(x.c.unit, x.c.variant, zero(value, 0.0).label("value"),
                       zero(pre_value, 0.0).label("pre_value"), *(zero(t.c[c], 0).label(c) for c in COUNTERS))
             .select_from(joined).where(x.c.experiment_key == key).order_by(x.c.unit))
    for row in export_rows(conn, query, batch):
        yield {"metric": metric.key, **row._mapping}


def exposed_since(conn: sa.Connection, key: str, since: datetime) -> dict[str, int]:
    """Units first exposed at or after `since`, per variant (or arm), folded in or not."""
    x = ExposureRecord.__table__
    rows = conn.execute(sa.select(x.c.variant, sa.func.count()).where(
        x.c.experiment_key == key, x.c.assigned_at >= since).group_by(x.c.variant))
    return {variant: int(n) for variant, n in rows}


def exposure_counts_of(conn: sa.Connection, keys: list[str]) -> dict[str, dict[str, int]]:
    """`exposure_counts` of many subjects in one statement: key -> variant -> units."""
    t = ExposureCountRecord.__table__
    out: dict[str, dict[str, int]] = {k: {} for k in keys}
    if keys:
        for key, variant, n in conn.execute(sa.select(t.c.experiment_key, t.c.variant, sa.func.sum(t.c.count))
                                            .where(t.c.experiment_key.in_(keys))
                                            .group_by(t.c.experiment_key, t.c.variant)):
            out[key][variant] = int(n or 0)
    return out


def exposed_since_of(conn: sa.Connection, starts: dict[str, datetime]) -> dict[str, dict[str, int]]:
    """`exposed_since` of many subjects, each from its own start, in one statement."""
    out: dict[str, dict[str, int]] = {k: {} for k in starts}
    if not starts:
        return out
    x = ExposureRecord.__table__
    items = sorted(starts.items())
    for at in range(0, len(items), 200):  # SQLite parses a long OR chain as a deep tree
        wanted = sa.or_(*(sa.and_(x.c.experiment_key == key, x.c.assigned_at >= start)
                          for key, start in items[at:at + 200]))
        rows = conn.execute(sa.select(x.c.experiment_key, x.c.variant, sa.func.count()).where(wanted)
                            .group_by(x.c.experiment_key, x.c.variant))
        for key, variant, n in rows:
            out[key][variant] = int(n)
    return out
