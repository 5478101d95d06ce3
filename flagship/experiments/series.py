"""One metric over time: cumulative daily looks (lift and CI per day, to see novelty
effects), with the always-valid p-value as a running minimum across the looks."""
from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa

from flagship.errors import NotFoundError
from flagship.experiments import results
from flagship.experiments.store import aggregates as aggregate
from flagship.experiments.analysis import VariantStats
from flagship.experiments.ingest import EventRecord
from flagship.experiments.metrics import Metric, metrics_by_key
from flagship.experiments.store.assignments import ExposureRecord
from flagship.experiments.store.config import ExperimentRecord
from flagship.runtime import Runtime

MAX_DAYS = 120


def _epoch(value: Any) -> float:
    value = aggregate._utc(value)
    return value.timestamp()


def _load(conn: sa.Connection, key: str, metric: Metric) -> dict[str, Any]:
    """Arrays of the experiment's exposures and of its units' events for this metric."""
    x, e = ExposureRecord.__table__, EventRecord.__table__
    exposures = conn.execute(sa.select(x.c.unit, x.c.variant, x.c.assigned_at)
                             .where(x.c.experiment_key == key)).all()
    index = {row.unit: i for i, row in enumerate(exposures)}
    names = [metric.event] + ([metric.denominator_event] if metric.denominator_event else [])
    events = conn.execute(sa.select(e.c.unit, e.c.event, e.c.value, e.c.timestamp)
                          .join(x, sa.and_(x.c.unit == e.c.unit, x.c.experiment_key == key))
                          .where(e.c.event.in_(names))).all()
    return {
        "variants": [row.variant for row in exposures],
        "assigned": np.array([_epoch(row.assigned_at) for row in exposures]),
        "unit": np.array([index[row.unit] for row in events], dtype=np.int64),
        "ts": np.array([_epoch(row.timestamp) for row in events]),
        "value": np.array([float(row.value) for row in events]),
        "is_den": np.array([row.event != metric.event for row in events], dtype=bool),
    }


def _look(data: dict[str, Any], metric: Metric, start: float, end: float | None, at: float,
          names: list[str]) -> dict[str, VariantStats]:
    """Per-variant stats of everything known at time `at`."""
    units = len(data["variants"])
    exposed = data["assigned"] < at
    ts, unit = data["ts"], data["unit"]
    inside = (ts < at) & (ts >= start) & (ts >= data["assigned"][unit] if units else ts < at)
    if end is not None:
        inside &= ts < end
    num, den = inside & ~data["is_den"], inside & data["is_den"]
    total = np.bincount(unit[num], weights=data["value"][num], minlength=units)
    count = np.bincount(unit[num], minlength=units).astype(float)
    den_sum = np.bincount(unit[den], weights=data["value"][den], minlength=units)
    y = {"conversion": (count > 0).astype(float), "count": count,
         "mean": np.divide(total, count, out=np.zeros(units), where=count > 0)}.get(metric.kind, total)
    variant = np.array(data["variants"])
    out = {}
    for name in names:
        mask = exposed & (variant == name) if units else np.zeros(0, dtype=bool)
        ys, ds = y[mask], den_sum[mask]
        out[name] = VariantStats(name, int(mask.sum()), float(ys.sum()), float((ys * ys).sum()),
                                 den_sum=float(ds.sum()), den_sum_sq=float((ds * ds).sum()),
                                 num_den=float((ys * ds).sum()))
    return out


def metric_report(runtime: Runtime, key: str, metric_key: str) -> dict[str, Any]:
    """`/results` for one metric plus its cumulative daily series."""
    full = results.results(runtime, key)
    entry = next((m for m in full["metrics"] if m["metric"] == metric_key), None)
    if entry is None:
        raise NotFoundError(f"experiment {key!r} has no metric {metric_key!r}")
    with runtime.db.session() as session:
        record = session.execute(sa.select(ExperimentRecord).where(ExperimentRecord.key == key)).scalar_one()
        metric = metrics_by_key(session, [metric_key])[metric_key]
        data = _load(session.connection(), key, metric)
        doc, started, ended = record.document, record.started_at, record.ended_at
    series = _series(runtime, doc, metric, data, started, ended)
    return {**entry, "experiment": key, "srm": full["srm"], "series": series}


def _series(runtime: Runtime, doc: dict[str, Any], metric: Metric, data: dict[str, Any],
            started: Any, ended: Any) -> list[dict[str, Any]]:
    if started is None:
        return []
    starts = [t for t in (aggregate._utc(started), aggregate._utc(doc.get("start_at"))) if t]
    ends = [t for t in (aggregate._utc(ended), aggregate._utc(doc.get("end_at"))) if t]
    start, end = max(starts), (min(ends) if ends else None)
    last = min([runtime.clock(), *([end] if end else [])])
    names = [v["variant"] for v in doc["variants"]]
    control = next(v["variant"] for v in doc["variants"] if v["is_control"])
    day = start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    looks, best = [], {}
    while len(looks) < MAX_DAYS:
        at = min(day, last)
        stats = _look(data, metric, start.timestamp(), end.timestamp() if end else None,
                      at.timestamp(), names)
        comparisons = []
        for name in names:
            if name == control:
                continue
            c = results._compare(metric, stats[control], stats[name], doc, None, len(names) - 1)
            if "always_valid" in c:  # running minimum: it never rises between looks
                best[name] = min(best.get(name, 1.0), c["always_valid"]["p_value"])
                c["always_valid"]["p_value"] = best[name]
            comparisons.append({k: c.get(k) for k in ("variant", "difference", "ci", "relative_lift",
                                                      "relative_ci", "p_value", "always_valid", "error")
                                if k in c})
        looks.append({"at": at.astimezone(timezone.utc).isoformat(),
                      "variants": {v: {"units": s.n, "mean": s.mean} for v, s in stats.items()},
                      "comparisons": comparisons})
        if at >= last:
            break
        day += timedelta(days=1)
    return looks
