"""Results and report time for an experiment with 1,000,000 units, 3 variants, 5 metrics.

The unit rows are written directly (as the aggregator would have left them), the variant
sums are built by one scan (as a rebuild does), then /results' service and the HTML report
are timed. Target: results <= 0.5 s; the report well under 5 s.

    python benchmarks/bench_results.py [--units 1000000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from flagship.app import create_app
from flagship.db import upgrade

METRICS = [{"key": "converted", "event": "purchase", "kind": "conversion"},
           {"key": "revenue", "event": "purchase", "kind": "sum"},
           {"key": "basket", "event": "purchase", "kind": "mean"},
           {"key": "pages", "event": "page", "kind": "count"},
           {"key": "latency", "event": "load", "kind": "mean", "direction": "decrease"}]


def populate(app, units: int) -> None:
    from flagship.experiments.store import aggregates as aggregate
    from flagship.experiments.store.config import metrics_by_key

    client = app.test_client()
    for metric in METRICS:
        assert client.post("/api/v1/metrics", json=metric).status_code == 201
    client.post("/api/v1/layers", json={"key": "main"})
    doc = {"key": "exp", "flag": "f", "layer": "main", "success_metrics": ["converted", "revenue", "basket", "pages"],
           "guardrail_metrics": [{"metric": "latency", "margin": 0.05}], "minimum_sample_size": 300000,
           "variants": [{"variant": v, "value": i, "is_control": v == "a"} for i, v in enumerate("abc")]}
    assert client.post("/api/v1/experiments", json=doc).status_code == 201
    assert client.post("/api/v1/experiments/exp/start").status_code == 200
    db = app.extensions["flagship"].db
    rng = np.random.default_rng(3)
    variants = rng.choice(list("abc"), units)
    at = datetime.now(timezone.utc)
    with db.engine.begin() as conn:
        for start in range(0, units, 100_000):
            chunk = range(start, min(units, start + 100_000))
            conn.execute(sa.text("INSERT INTO exposures (experiment_key, unit, variant, layer_key, assigned_at, "
                                 "aggregated) VALUES ('exp', :u, :v, 'main', :at, 1)"),
                         [{"u": f"u{i}", "v": variants[i], "at": at} for i in chunk])
            for metric in METRICS:
                rows = [{"m": metric["key"], "u": f"u{i}", "v": variants[i], "s": float(rng.gamma(2, 10)),
                         "c": int(rng.integers(1, 4)), "p": float(rng.gamma(2, 9))} for i in chunk if i % 3]
                conn.execute(sa.text(
                    "INSERT INTO unit_metrics (experiment_key, metric_key, unit, variant, post_sum, post_count, "
                    "den_sum, den_count, pre_sum, pre_count, pre_den_sum) VALUES ('exp', :m, :u, :v, :s, :c, 0, 0, "
                    ":p, 1, 0)"), rows)
        plans = aggregate._plans(conn)
        conn.execute(sa.insert(aggregate.AggregationStateRecord.__table__).values(
            experiment_key="exp", signature=plans["exp"].signature))
        keep_sums(conn, "exp", variants, metrics_by_key(conn, [m["key"] for m in METRICS]).values(), at)


def keep_sums(conn, experiment: str, variants, metrics, at: datetime) -> None:
    """What the aggregator keeps as it folds rows in: exposure counts and per-variant sums
    (one hour's rows, built by the same scan a rebuild uses)."""
    from flagship.experiments.store.reads import scan_variant_stats
    from flagship.experiments.store.sums import SUMS
    from flagship.experiments.store.tables import ExposureCountRecord, VariantSumsRecord

    period = int(at.timestamp()) // 3600
    names, counts = np.unique(variants, return_counts=True)
    exposed = {str(v): int(n) for v, n in zip(names, counts)}
    conn.execute(sa.insert(ExposureCountRecord.__table__), [
        {"experiment_key": experiment, "variant": v, "epoch": 1, "period": period, "count": n}
        for v, n in exposed.items()])
    for metric in metrics:
        scanned = scan_variant_stats(conn, experiment, metric, exposed)
        conn.execute(sa.insert(VariantSumsRecord.__table__), [
            {"experiment_key": experiment, "metric_key": metric.key, "variant": v, "period": period,
             **dict(zip(SUMS, sums))} for v, sums in scanned.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1_000_000)
    args = parser.parse_args()
    from flagship.experiments.report import build_report, render_html
    from flagship.experiments.results import results

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'results.db'}"
        upgrade(url)
        app = create_app({"DATABASE_URL": url, "AUTH": False, "ENTRY_POINTS": False})
        populate(app, args.units)
        runtime = app.extensions["flagship"]
        timings, pages = [], []
        with app.app_context():
            for _ in range(3):
                t0 = time.perf_counter()
                body = results(runtime, "exp")
                timings.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                render_html(build_report(runtime, "exp"))
                pages.append(time.perf_counter() - t0)
        runtime.db.dispose()
    print(f"/results for {args.units:,} units, 3 variants, 5 metrics: best {min(timings):.3f} s "
          f"(target <= 0.5 s); decision: {body['decision']['action']}")
    print(f"HTML report (results + page + SVG): best {min(pages):.3f} s (seed: < 5 s)")


if __name__ == "__main__":
    main()
