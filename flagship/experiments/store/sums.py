"""Per-variant sums kept up to date as unit rows change, so results read O(variants) rows.

When the aggregator adds increments to a unit's row, the unit's contribution to its
variant's sums changes from f(old row) to f(new row); the difference is added to the
variant row. A unit's contribution is its value y (by metric kind), its pre-exposure
value x, and for ratios the denominator d: (y, y^2, x, x^2, x*y, d, d^2, y*d).
"""
from __future__ import annotations

from typing import Any, Iterable

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

SUMS = ("sum", "sum_sq", "pre_sum", "pre_sum_sq", "cross", "den_sum", "den_sum_sq", "num_den")
ZERO = (0.0,) * len(SUMS)


class VariantSumsRecord(SQLModel, table=True):
    """Sums over one variant's units of one metric (units without rows contribute 0)."""

    __tablename__ = "variant_sums"
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    metric_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    variant: str = Field(sa_column=Column(sa.String(64), primary_key=True))
    sum: float = 0.0
    sum_sq: float = 0.0
    pre_sum: float = 0.0
    pre_sum_sq: float = 0.0
    cross: float = 0.0
    den_sum: float = 0.0
    den_sum_sq: float = 0.0
    num_den: float = 0.0


def values(kind: str, row: dict[str, Any]) -> tuple[float, float, float]:
    """(y, x, d) of a unit row for a metric kind; mirrors analysis.value_columns."""
    if kind == "conversion":
        y, x = float(row["post_count"] > 0), float(row["pre_count"] > 0)
    elif kind == "count":
        y, x = float(row["post_count"]), float(row["pre_count"])
    elif kind == "mean":
        y = row["post_sum"] / row["post_count"] if row["post_count"] else 0.0
        x = row["pre_sum"] / row["pre_count"] if row["pre_count"] else 0.0
    else:  # sum, and a ratio's numerator
        y, x = float(row["post_sum"]), float(row["pre_sum"])
    return y, x, float(row["den_sum"])


def contribution(kind: str, row: dict[str, Any] | None) -> tuple[float, ...]:
    if row is None:
        return ZERO
    y, x, d = values(kind, row)
    return (y, y * y, x, x * x, x * y, d, d * d, y * d)


def _insert(sqlite: bool) -> Any:
    if sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(VariantSumsRecord.__table__)


def add(conn: sa.Connection, sqlite: bool, deltas: dict[tuple[str, str, str], list[float]]) -> None:
    """Add per-(experiment, metric, variant) deltas to the variant rows."""
    if not deltas:
        return
    table = VariantSumsRecord.__table__
    statement = _insert(sqlite)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.experiment_key, table.c.metric_key, table.c.variant],
        set_={c: table.c[c] + statement.excluded[c] for c in SUMS})
    conn.execute(statement, [{"experiment_key": e, "metric_key": m, "variant": v, **dict(zip(SUMS, d))}
                             for (e, m, v), d in deltas.items()])


def changes(kinds: dict[tuple[str, str], str], old: dict[tuple[str, str, str], dict[str, Any]],
            increments: Iterable[dict[str, Any]], counters: tuple[str, ...]) -> dict[tuple[str, str, str], list[float]]:
    """Variant deltas from applying `increments` to the `old` unit rows."""
    out: dict[tuple[str, str, str], list[float]] = {}
    for inc in increments:
        key = (inc["experiment_key"], inc["metric_key"], inc["unit"])
        kind = kinds[key[:2]]
        before = old.get(key)
        after = {c: (before[c] if before else 0) + inc[c] for c in counters}
        delta = [n - o for n, o in zip(contribution(kind, after), contribution(kind, before))]
        target = out.setdefault((key[0], key[1], inc["variant"]), [0.0] * len(SUMS))
        for i, value in enumerate(delta):
            target[i] += value
    return out


def reset(conn: sa.Connection, experiment: str) -> None:
    table = VariantSumsRecord.__table__
    conn.execute(sa.delete(table).where(table.c.experiment_key == experiment))


def read(conn: sa.Connection, experiment: str, metric: str) -> dict[str, tuple[float, ...]]:
    """variant -> sums (in SUMS order) for one metric."""
    table = VariantSumsRecord.__table__
    rows = conn.execute(sa.select(table.c.variant, *[table.c[c] for c in SUMS]).where(
        table.c.experiment_key == experiment, table.c.metric_key == metric))
    return {row[0]: tuple(float(v) for v in row[1:]) for row in rows}
