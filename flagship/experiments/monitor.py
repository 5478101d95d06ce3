"""The live monitor of a running experiment (seed 000 AC5, 实时实验指标监控), and the store's
global data-quality counters. Reads only: the aggregation job keeps the numbers current."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flagship.experiments import results
from flagship.experiments.analysis import decide
from flagship.experiments.store import events, reads
from flagship.runtime import Runtime

HOUR = 3600


def _hourly(by_hour: dict[str, dict[int, int]]) -> list[dict[str, Any]]:
    hours = sorted({h for counts in by_hour.values() for h in counts})
    return [{"hour": datetime.fromtimestamp(h * HOUR, timezone.utc).strftime("%Y-%m-%dT%H:00:00Z"),
             "by_variant": {v: counts[h] for v, counts in by_hour.items() if h in counts}}
            for h in hours]


def monitor(runtime: Runtime, key: str) -> dict[str, Any]:
    """Exposures, event volume, live means, SRM, sample progress, data quality."""
    data = results.read(runtime, key, with_looks=False)
    experiment, record = data.experiment, data.record
    with runtime.db.engine.connect() as conn, conn.begin():
        by_hour = reads.exposures_by_hour(conn, key)
        volumes = {m: reads.metric_volume(conn, key, m) for m in data.metrics}
        quality = reads.experiment_quality(conn, key, record.started_at)
    metric_rows: list[dict[str, Any]] = []
    for metric_key in experiment.metric_keys:
        metric = data.metrics.get(metric_key)
        if metric is None:
            metric_rows.append({"metric": metric_key, "error": "metric not defined"})
            continue
        metric_rows.append({"metric": metric_key, "kind": metric.kind, "events": volumes[metric_key],
                            "variants": {v: {"units": s.n, "mean": s.value(metric)}
                                         for v, s in data.stats[metric_key].items()}})
    observed = [data.counts.get(n, 0) for n in experiment.variant_names]
    srm = decide.srm(experiment, data.by_epoch, record.epochs or [])
    if srm["checked"]:
        srm["expected"] = _expected(experiment, data.by_epoch, record.epochs or [])
    needed = experiment.minimum_sample_size
    progress = min(observed) / needed if needed and observed else None
    return {"experiment": key, "status": record.status,
            "exposures": {"total": dict(zip(experiment.variant_names, observed)), "per_hour": _hourly(by_hour)},
            "metrics": metric_rows, "srm": srm if srm["checked"] else None,
            "minimum_sample_size": needed, "sample_progress": progress, "data_quality": quality,
            "pending": data.pending}


def _expected(experiment: Any, by_epoch: dict[tuple[int, str], int], epochs: list[Any]) -> dict[str, float]:
    """Expected units per variant: each epoch's units split by that epoch's weights."""
    weights = {int(e["epoch"]): e["weights"] for e in epochs} or {1: experiment.weights}
    expected = {n: 0.0 for n in experiment.variant_names}
    for epoch in {e for e, _ in by_epoch}:
        total = sum(by_epoch.get((epoch, n), 0) for n in experiment.variant_names)
        planned = weights.get(epoch, experiment.weights)
        scale = sum(planned.get(n, 0.0) for n in experiment.variant_names) or 1.0
        for n in experiment.variant_names:
            expected[n] += total * planned.get(n, 0.0) / scale
    return expected


def data_quality(runtime: Runtime, since: datetime | None = None) -> dict[str, Any]:
    """The whole store's data-quality counters (admin view), and what is still pending."""
    with runtime.db.engine.connect() as conn, conn.begin():
        return {"counters": events.global_quality(conn, since), "pending": reads.pending(conn)}
