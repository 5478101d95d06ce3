"""Looks at an experiment's results, remembered so sequential answers never go backwards.

Each `/results` call is a look. The always-valid p-value is the running minimum over the
looks and the confidence sequence the running intersection; the mixing variance tau^2 is
fixed at the first look (choosing it again from later data would void the guarantee).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

from flagship.db import Database


class SequentialLookRecord(SQLModel, table=True):
    """The sequential state of one metric x treatment comparison."""

    __tablename__ = "sequential_looks"
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    metric_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    variant: str = Field(sa_column=Column(sa.String(64), primary_key=True))
    tau2: float
    p_value: float
    ci_low: float
    ci_high: float
    looks: int
    updated_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))


State = dict[tuple[str, str], dict[str, Any]]


def load(conn: sa.Connection, experiment: str) -> State:
    """(metric, variant) -> {tau2, p_value, ci, looks} of the earlier looks."""
    table = SequentialLookRecord.__table__
    rows = conn.execute(sa.select(table).where(table.c.experiment_key == experiment)).mappings()
    return {(r["metric_key"], r["variant"]): {"tau2": r["tau2"], "p_value": r["p_value"],
                                              "ci": (r["ci_low"], r["ci_high"]), "looks": r["looks"]}
            for r in rows}


def save(db: Database, experiment: str, state: State, now: datetime) -> None:
    """Store this look's running state (one small upsert through the writer)."""
    if not state:
        return
    table = SequentialLookRecord.__table__
    if db.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    rows = [{"experiment_key": experiment, "metric_key": m, "variant": v, "tau2": s["tau2"],
             "p_value": s["p_value"], "ci_low": s["ci"][0], "ci_high": s["ci"][1],
             "looks": s["looks"], "updated_at": now} for (m, v), s in state.items()]
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.experiment_key, table.c.metric_key, table.c.variant],
        set_={c: statement.excluded[c] for c in ("tau2", "p_value", "ci_low", "ci_high", "looks",
                                                 "updated_at")})
    db.batched(lambda conn: conn.execute(statement, rows))
