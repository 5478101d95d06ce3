"""Server-side sticky assignment stores (the interface is in `experiments/assignment.py`).

`SqlAssignments` is the embedded default: the `exposures` table is both the sticky
record and the exposure log. `RedisAssignments` is for production; exposures still land
in SQL for the analysis.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from flagship.db import Database, insert_new
from flagship.experiments.assignment import Assignment, AssignmentStore
from flagship.experiments.store.tables import ExposureRecord


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _from_row(row: Any) -> Assignment:
    return Assignment(row.experiment_key, row.unit, row.variant, row.layer_key, _utc(row.assigned_at),
                      row.epoch)


def insert_exposure(db: Database, assignment: Assignment) -> bool:
    """Insert the exposure unless present; True if this call inserted it (race-free).

    Concurrent first assignments are merged into one INSERT by the group-commit writer.
    """
    values = {"experiment_key": assignment.experiment, "unit": assignment.unit,
              "variant": assignment.variant, "layer_key": assignment.layer,
              "assigned_at": assignment.assigned_at, "epoch": assignment.epoch}
    return db.batched_merge("exposures", values, _insert_exposures)


def _insert_exposures(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[bool]:
    inserted = set(insert_new(conn, ExposureRecord.__table__, rows, ("experiment_key", "unit")))
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
        encoded = (f"{assignment.variant}\t{assignment.layer}\t{assignment.assigned_at.isoformat()}"
                   f"\t{assignment.epoch}")
        if self._redis.hsetnx(key, assignment.experiment, encoded):
            insert_exposure(self._db, assignment)
            return assignment, True
        current = self._redis.hget(key, assignment.experiment)
        return _decode(assignment.experiment, assignment.unit, _text(current)), False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(experiment: str, unit: str, value: str) -> Assignment:
    variant, layer, at, *epoch = value.split("\t")  # no epoch: written before epochs existed
    return Assignment(experiment, unit, variant, layer, datetime.fromisoformat(at),
                      int(epoch[0]) if epoch else 1)


def make_assignment_store(db: Database, redis_url: str) -> AssignmentStore:
    """Redis when FLAGSHIP_REDIS_URL is set, else the SQL exposures table."""
    if redis_url:
        import redis

        return RedisAssignments(redis.Redis.from_url(redis_url), db)
    return SqlAssignments(db)


__all__ = ["SqlAssignments", "RedisAssignments", "ExposureRecord", "make_assignment_store"]
