"""Server-side sticky assignment stores (the interface is in `assign.py`).

`SqlAssignments` is the embedded default: the `exposures` table is both the sticky
record and the exposure log. `RedisAssignments` is for production; exposures still land
in SQL for the analysis.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

from flagship.db import Database
from flagship.experiments.assignment import Assignment, AssignmentStore


class ExposureRecord(SQLModel, table=True):
    """First exposure of a unit to an experiment (and its sticky variant)."""

    __tablename__ = "exposures"
    __table_args__ = (sa.Index("ix_exposures_pending", "experiment_key", "unit",
                               sqlite_where=sa.text("NOT aggregated"),
                               postgresql_where=sa.text("NOT aggregated")),
                      {"sqlite_with_rowid": False})
    experiment_key: str = Field(sa_column=Column(sa.String(128), primary_key=True))
    unit: str = Field(sa_column=Column(sa.String(256), primary_key=True, index=True))
    variant: str
    layer_key: str
    assigned_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    # the aggregator's work queue: exposures whose earlier events are not yet attributed
    aggregated: bool = Field(default=False, sa_column=Column(sa.Boolean, nullable=False,
                                                             server_default=sa.false()))


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _from_row(row: Any) -> Assignment:
    return Assignment(row.experiment_key, row.unit, row.variant, row.layer_key, _utc(row.assigned_at))


def insert_exposure(db: Database, assignment: Assignment) -> bool:
    """Insert the exposure unless present; True if this call inserted it (race-free).

    Concurrent first assignments are merged into one INSERT by the group-commit writer.
    """
    values = {"experiment_key": assignment.experiment, "unit": assignment.unit,
              "variant": assignment.variant, "layer_key": assignment.layer,
              "assigned_at": assignment.assigned_at}
    return db.batched_merge("exposures", values, lambda conn, rows: _insert_exposures(conn, db, rows))


def _insert_exposures(conn: sa.Connection, db: Database, rows: list[dict[str, Any]]) -> list[bool]:
    table = ExposureRecord.__table__
    if db.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    # RETURNING tells reliably what was inserted (rowcount does not, on psycopg)
    statement = insert(table).on_conflict_do_nothing().returning(table.c.experiment_key, table.c.unit)
    inserted = {tuple(row) for row in conn.execute(statement, rows)}
    credited = []
    for row in rows:  # a pair listed twice in one batch is credited to the first only
        key = (row["experiment_key"], row["unit"])
        credited.append(key in inserted)
        inserted.discard(key)
    return credited


class SqlAssignments:
    """The embedded default: assignments are the rows of the exposures table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._select = sa.select(ExposureRecord.__table__)

    def for_unit(self, unit: str) -> dict[str, Assignment]:
        table = ExposureRecord.__table__
        with self._db.engine.connect() as conn:
            rows = conn.execute(self._select.where(table.c.unit == unit)).all()
        return {row.experiment_key: _from_row(row) for row in rows}

    def assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        if insert_exposure(self._db, assignment):
            return assignment, True
        existing = self.for_unit(assignment.unit).get(assignment.experiment)
        return (existing or assignment), False


class RedisAssignments:
    """Production store: one Redis hash per unit, field = experiment (HSETNX is the lock).

    Exposures are still written to SQL, where the analysis reads them; the Redis hash
    is the sticky record the hot path consults.
    """

    def __init__(self, client: Any, db: Database, prefix: str = "flagship:assign:") -> None:
        self._redis = client
        self._db = db
        self._prefix = prefix

    def for_unit(self, unit: str) -> dict[str, Assignment]:
        raw = self._redis.hgetall(self._prefix + unit)
        return {_text(exp): _decode(_text(exp), unit, _text(value)) for exp, value in raw.items()}

    def assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        key = self._prefix + assignment.unit
        encoded = f"{assignment.variant}\t{assignment.layer}\t{assignment.assigned_at.isoformat()}"
        if self._redis.hsetnx(key, assignment.experiment, encoded):
            insert_exposure(self._db, assignment)
            return assignment, True
        current = self._redis.hget(key, assignment.experiment)
        return _decode(assignment.experiment, assignment.unit, _text(current)), False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(experiment: str, unit: str, value: str) -> Assignment:
    variant, layer, at = value.split("\t")
    return Assignment(experiment, unit, variant, layer, datetime.fromisoformat(at))


def make_assignment_store(db: Database, redis_url: str) -> AssignmentStore:
    """Redis when FLAGSHIP_REDIS_URL is set, else the SQL exposures table."""
    if redis_url:
        import redis

        return RedisAssignments(redis.Redis.from_url(redis_url), db)
    return SqlAssignments(db)


__all__ = ["SqlAssignments", "RedisAssignments", "ExposureRecord", "make_assignment_store"]
