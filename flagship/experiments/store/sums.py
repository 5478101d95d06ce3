"""Per-variant sums kept up to date as unit rows change, hour by hour, so results read
O(variants x hours) rows and the sequential looks are a function of the data.

When the aggregator adds increments to a unit's row, the unit's contribution to its
variant's sums changes from f(old row) to f(new row); the difference is added to the
variant's row for the hour (period) of the events that made it. A unit's increments of
several hours are applied in hour order, so the sums up to an hour are the variant's
state at the end of that hour. (A unit's events that arrive out of order are attributed
to the hour they happened in but measured against the state the unit had when they
arrived: the final sums are exact, intermediate hours of such a unit approximate.)

A unit's contribution is (active, y, y^2, x, x^2, x*y, d, d^2, y*d): whether it has a
counted event, its value y (by metric kind), its pre-exposure value x and, for ratio and
mean metrics, the denominator d (for `mean`: the number of events).
"""
from __future__ import annotations

from typing import Any, Iterable

import sqlalchemy as sa

from flagship.db import upsert
from flagship.experiments.store.tables import VariantSumsRecord

SUMS = ("units", "sum", "sum_sq", "pre_sum", "pre_sum_sq", "cross", "den_sum", "den_sum_sq", "num_den")
ZERO = (0.0,) * len(SUMS)
COUNTERS = ("post_sum", "post_count", "den_sum", "den_count", "pre_sum", "pre_count", "pre_den_sum")
HOUR = 3600


def values(kind: str, row: dict[str, Any]) -> tuple[float, float, float]:
    """(y, x, d) of a unit row for a metric kind."""
    if kind == "conversion":
        return float(row["post_count"] > 0), float(row["pre_count"] > 0), 0.0
    if kind == "count":
        return float(row["post_count"]), float(row["pre_count"]), 0.0
    if kind == "mean":  # total value over number of events: a ratio of per-unit sums
        return float(row["post_sum"]), float(row["pre_sum"]), float(row["post_count"])
    return float(row["post_sum"]), float(row["pre_sum"]), float(row["den_sum"])  # sum, ratio


def contribution(kind: str, row: dict[str, Any] | None) -> tuple[float, ...]:
    if row is None or (kind == "mean" and not row["post_count"]):
        return ZERO  # a mean averages over units with events: the others are not in it
    y, x, d = values(kind, row)
    active = float(row["post_count"] > 0 or row["den_count"] > 0)
    return (active, y, y * y, x, x * x, x * y, d, d * d, y * d)


Key = tuple[str, str, str]  # experiment, metric, unit


def changes(kinds: dict[tuple[str, str], str], old: dict[Key, dict[str, Any]],
            increments: Iterable[dict[str, Any]]) -> tuple[dict[tuple[str, str, str, int], list[float]],
                                                           dict[Key, dict[str, Any]]]:
    """Variant deltas by hour from applying `increments` (each with a `period`) to the
    `old` unit rows, and each unit's total increment (what its row gets added)."""
    by_unit: dict[Key, list[dict[str, Any]]] = {}
    for inc in increments:
        by_unit.setdefault((inc["experiment_key"], inc["metric_key"], inc["unit"]), []).append(inc)
    out: dict[tuple[str, str, str, int], list[float]] = {}
    totals: dict[Key, dict[str, Any]] = {}
    for key, incs in by_unit.items():
        kind, state = kinds[key[:2]], old.get(key)
        for inc in sorted(incs, key=lambda i: i["period"]):
            after = {c: (state[c] if state else 0) + inc[c] for c in COUNTERS}
            delta = [n - o for n, o in zip(contribution(kind, after), contribution(kind, state))]
            target = out.setdefault((key[0], key[1], inc["variant"], inc["period"]), [0.0] * len(SUMS))
            for i, value in enumerate(delta):
                target[i] += value
            state = after
        total = totals[key] = {**{c: 0 for c in COUNTERS}, "experiment_key": key[0],
                               "metric_key": key[1], "unit": key[2], "variant": incs[0]["variant"]}
        for inc in incs:
            for c in COUNTERS:
                total[c] += inc[c]
    return out, totals


def rows(deltas: dict[tuple[str, str, str, int], list[float]]) -> list[dict[str, Any]]:
    """The variant rows that per-(experiment, metric, variant, hour) deltas add (`add`)."""
    return [{"experiment_key": e, "metric_key": m, "variant": v, "period": p, **dict(zip(SUMS, d))}
            for (e, m, v, p), d in deltas.items()]


def add(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Add `rows` (see `rows`) to the variant rows."""
    upsert(conn, VariantSumsRecord.__table__, rows,
           ["experiment_key", "metric_key", "variant", "period"], add=SUMS)


def reset(conn: sa.Connection, experiment: str) -> None:
    table = VariantSumsRecord.__table__
    conn.execute(sa.delete(table).where(table.c.experiment_key == experiment))


def read(conn: sa.Connection, experiment: str, metric: str,
         until_period: int | None = None) -> dict[str, tuple[float, ...]]:
    """variant -> sums (in SUMS order) for one metric, over every hour (or up to one)."""
    table = VariantSumsRecord.__table__
    query = sa.select(table.c.variant, *[sa.func.sum(table.c[c]) for c in SUMS]).where(
        table.c.experiment_key == experiment, table.c.metric_key == metric).group_by(table.c.variant)
    if until_period is not None:
        query = query.where(table.c.period <= until_period)
    return {row[0]: tuple(float(v or 0.0) for v in row[1:]) for row in conn.execute(query)}


def by_period(conn: sa.Connection, experiment: str, metric: str) -> list[tuple[str, int, tuple[float, ...]]]:
    """(variant, hour, sums) rows of one metric in hour order (the changes, not cumulative)."""
    table = VariantSumsRecord.__table__
    rows = conn.execute(sa.select(table.c.variant, table.c.period, *[table.c[c] for c in SUMS]).where(
        table.c.experiment_key == experiment, table.c.metric_key == metric).order_by(table.c.period))
    return [(row[0], int(row[1]), tuple(float(v) for v in row[2:])) for row in rows]


def read_many(conn: sa.Connection, keys: list[str], metrics: list[str]) -> dict[tuple[str, str], dict[str, tuple[float, ...]]]:
    """`read` of many subjects and metrics in one statement: (key, metric) -> variant -> sums."""
    out: dict[tuple[str, str], dict[str, tuple[float, ...]]] = {}
    if not keys or not metrics:
        return out
    table = VariantSumsRecord.__table__
    rows = conn.execute(sa.select(table.c.experiment_key, table.c.metric_key, table.c.variant,
                                  *[sa.func.sum(table.c[c]) for c in SUMS])
                        .where(table.c.experiment_key.in_(keys), table.c.metric_key.in_(metrics))
                        .group_by(table.c.experiment_key, table.c.metric_key, table.c.variant))
    for key, metric, variant, *values in rows:
        out.setdefault((key, metric), {})[variant] = tuple(float(v or 0.0) for v in values)
    return out
