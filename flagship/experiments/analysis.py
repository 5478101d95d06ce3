"""From per-unit rows to per-variant sufficient statistics (cost: O(variants x metrics) rows
returned; the database does one grouped scan of the experiment's unit rows)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from flagship.experiments.store import sums
from flagship.experiments.store.aggregates import UnitMetricRecord
from flagship.experiments.metrics import Metric
from flagship.experiments.store.assignments import ExposureRecord


@dataclass(frozen=True)
class VariantStats:
    """Sufficient statistics of one metric in one variant; units without events count as 0.

    `sum`/`sum_sq` are of the per-unit value y, `pre_*` of the unit's pre-exposure value x
    and `cross` is sum(x*y). For ratio metrics y is the numerator and `den_*` describe the
    per-unit denominator, with `num_den` = sum(numerator * denominator).
    """

    variant: str
    n: int
    sum: float
    sum_sq: float
    pre_sum: float = 0.0
    pre_sum_sq: float = 0.0
    cross: float = 0.0
    den_sum: float = 0.0
    den_sum_sq: float = 0.0
    num_den: float = 0.0

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.sum_sq - self.sum * self.sum / self.n) / (self.n - 1))


def exposure_counts(conn: sa.Connection, experiment: str) -> dict[str, int]:
    """Exposed units per variant."""
    x = ExposureRecord.__table__
    rows = conn.execute(sa.select(x.c.variant, sa.func.count()).where(x.c.experiment_key == experiment)
                        .group_by(x.c.variant)).all()
    return {variant: int(count) for variant, count in rows}


def value_columns(metric: Metric, table: sa.Table) -> tuple[Any, Any]:
    """SQL expressions of a unit's value y and pre-exposure value x for the metric kind."""
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


def variant_stats(conn: sa.Connection, experiment: str, metric: Metric,
                  variants: list[str] | None = None,
                  counts: dict[str, int] | None = None) -> dict[str, VariantStats]:
    """Per-variant sufficient statistics of `metric`, winsorized when the metric says so.

    Pass `counts` (from `exposure_counts`) when computing several metrics: counting
    exposures is the costliest part and is the same for all of them.
    """
    counts = dict(exposure_counts(conn, experiment) if counts is None else counts)
    for name in variants or []:
        counts.setdefault(name, 0)
    if metric.winsorize_percentile:
        return _winsorized(conn, experiment, metric, counts)
    # maintained incrementally by the aggregator: O(variants) rows, whatever the units
    kept = sums.read(conn, experiment, metric.key)
    return {variant: VariantStats(variant, n, *kept.get(variant, sums.ZERO))
            for variant, n in sorted(counts.items())}


def scan_variant_stats(conn: sa.Connection, experiment: str, metric: Metric,
                       counts: dict[str, int]) -> dict[str, VariantStats]:
    """The same sums computed by scanning the unit rows (the reference the sums must equal)."""
    t = UnitMetricRecord.__table__
    y, x = value_columns(metric, t)
    den = t.c.den_sum
    rows = conn.execute(sa.select(
        t.c.variant, sa.func.sum(y), sa.func.sum(y * y), sa.func.sum(x), sa.func.sum(x * x),
        sa.func.sum(x * y), sa.func.sum(den), sa.func.sum(den * den), sa.func.sum(y * den))
        .where(t.c.experiment_key == experiment, t.c.metric_key == metric.key)
        .group_by(t.c.variant)).all()
    found = {row[0]: [float(v or 0.0) for v in row[1:]] for row in rows}
    return {variant: VariantStats(variant, n, *found.get(variant, [0.0] * 8))
            for variant, n in sorted(counts.items())}


def unit_values(conn: sa.Connection, experiment: str, metric: Metric) -> dict[str, tuple[str, float, float]]:
    """unit -> (variant, y, x) for units with any event (others are all zeros)."""
    t = UnitMetricRecord.__table__
    y, x = value_columns(metric, t)
    rows = conn.execute(sa.select(t.c.unit, t.c.variant, y, x).where(
        t.c.experiment_key == experiment, t.c.metric_key == metric.key))
    return {row[0]: (row[1], float(row[2]), float(row[3])) for row in rows}


def _winsorized(conn: sa.Connection, experiment: str, metric: Metric,
                counts: dict[str, int]) -> dict[str, VariantStats]:
    values = unit_values(conn, experiment, metric)
    total = sum(counts.values())
    ys = np.zeros(total)
    ys[:len(values)] = [v[1] for v in values.values()]
    cap = float(np.percentile(ys, metric.winsorize_percentile)) if total else 0.0
    out = {}
    for variant, n in sorted(counts.items()):
        mine = [(min(y, cap), min(x, cap)) for v, y, x in values.values() if v == variant]
        y = np.array([p[0] for p in mine]) if mine else np.zeros(0)
        x = np.array([p[1] for p in mine]) if mine else np.zeros(0)
        out[variant] = VariantStats(variant, n, float(y.sum()), float((y * y).sum()), float(x.sum()),
                                    float((x * x).sum()), float((x * y).sum()))
    return out
