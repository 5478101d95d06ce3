"""The live monitor of a running experiment (seed 000 AC5, 实时实验指标监控)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flagship.errors import NotFoundError
from flagship.experiments import analysis
from flagship.experiments.store import aggregates as aggregate
from flagship.experiments.ingest import EventCounterRecord
from flagship.experiments.metrics import metrics_by_key
from flagship.experiments.stats import srm_test
from flagship.experiments.store.assignments import ExposureRecord
from flagship.experiments.store.config import ExperimentRecord
from flagship.runtime import Runtime


def _hour(column: Any, dialect: str) -> Any:
    if dialect == "sqlite":
        return sa.func.strftime("%Y-%m-%dT%H:00:00Z", column)
    return sa.func.to_char(sa.func.date_trunc("hour", sa.func.timezone("UTC", column)),
                           'YYYY-MM-DD"T"HH24:00:00"Z"')


def _exposures(conn: sa.Connection, key: str, dialect: str) -> dict[str, Any]:
    x = ExposureRecord.__table__
    hour = _hour(x.c.assigned_at, dialect)
    rows = conn.execute(sa.select(hour, x.c.variant, sa.func.count()).where(x.c.experiment_key == key)
                        .group_by(hour, x.c.variant).order_by(hour)).all()
    hourly: dict[str, dict[str, int]] = {}
    for at, variant, count in rows:
        hourly.setdefault(at, {})[variant] = int(count)
    return {"per_hour": [{"hour": at, "by_variant": counts} for at, counts in hourly.items()]}


def _quality(conn: sa.Connection, since: datetime | None) -> dict[str, int]:
    t = EventCounterRecord.__table__
    query = sa.select(t.c.kind, sa.func.sum(t.c.count)).group_by(t.c.kind)
    if since is not None:
        query = query.where(t.c.hour >= since.replace(minute=0, second=0, microsecond=0))
    counts = {kind: int(n or 0) for kind, n in conn.execute(query)}
    return {k: counts.get(k, 0) for k in ("accepted", "duplicate", "rejected", "late")}


def monitor(runtime: Runtime, key: str) -> dict[str, Any]:
    """Exposures, event volume, live means, SRM, sample progress, data quality."""
    aggregate.catch_up(runtime.db)
    with runtime.db.session() as session:
        record = session.execute(sa.select(ExperimentRecord).where(ExperimentRecord.key == key)).scalar_one_or_none()
        if record is None:
            raise NotFoundError(f"experiment {key!r} not found")
        doc = record.document
        names = [v["variant"] for v in doc["variants"]]
        keys = aggregate.metric_keys(doc)
        metrics = metrics_by_key(session, keys)
        conn = session.connection()
        counts = analysis.exposure_counts(conn, key)
        exposures = {"total": {n: counts.get(n, 0) for n in names}, **_exposures(conn, key, runtime.db.engine.dialect.name)}
        metric_rows = []
        for metric_key in keys:
            metric = metrics.get(metric_key)
            if metric is None:
                metric_rows.append({"metric": metric_key, "error": "metric not defined"})
                continue
            stats = analysis.variant_stats(conn, key, metric, names, counts)
            volume = _volume(conn, key, metric_key)
            metric_rows.append({"metric": metric_key, "kind": metric.kind, "events": volume,
                                "variants": {v: {"units": s.n, "mean": _mean(metric, s)}
                                             for v, s in stats.items()}})
        quality = _quality(conn, record.started_at)
    weights = [v["weight"] for v in doc["variants"]]
    observed = [counts.get(n, 0) for n in names]
    srm = None
    if sum(observed) > 0:
        result = srm_test(observed, weights)
        srm = {"p_value": result.p_value, "mismatch": result.mismatch, "observed": dict(zip(names, observed)),
               "expected": dict(zip(names, [float(e) for e in result.expected]))}
    needed = doc.get("minimum_sample_size") or 0
    progress = min(observed) / needed if needed and observed else None
    return {"experiment": key, "status": record.status, "exposures": exposures, "metrics": metric_rows,
            "srm": srm, "minimum_sample_size": needed, "sample_progress": progress,
            "data_quality": quality}


def _volume(conn: sa.Connection, key: str, metric_key: str) -> int:
    t = aggregate.UnitMetricRecord.__table__
    value = conn.execute(sa.select(sa.func.sum(t.c.post_count)).where(
        t.c.experiment_key == key, t.c.metric_key == metric_key)).scalar()
    return int(value or 0)


def _mean(metric: Any, stats: analysis.VariantStats) -> float | None:
    if metric.kind == "ratio":
        return stats.sum / stats.den_sum if stats.den_sum else None
    return stats.mean
