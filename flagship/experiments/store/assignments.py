"""Server-side sticky assignment stores (the interface is in `experiments/assignment.py`).

`SqlAssignments` is the embedded default: the `exposures` table is both the sticky
record and the exposure log. `RedisAssignments` is for production; exposures still land
in SQL for the analysis.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from redis.exceptions import RedisError

from flagship import telemetry
from flagship.db import Database, insert_alone, insert_new
from flagship.experiments.assignment import Assignment, AssignmentStore
from flagship.experiments.store.tables import ExposureRecord

log = logging.getLogger(__name__)
REDIS_RETRY_SECONDS = 5.0
BACKFILL_MARGIN = timedelta(seconds=60)  # assignments in flight when the outage was seen


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _from_row(row: Any) -> Assignment:
    return Assignment(row.experiment_key, row.unit, row.variant, row.layer_key, _utc(row.assigned_at),
                      row.epoch)


def insert_exposure(db: Database, assignment: Assignment) -> bool:
    """Insert the exposure unless present; True if this call inserted it (race-free).

    Concurrent first assignments are merged into one INSERT by the group-commit writer;
    one alone in its commit is a single self-committing INSERT on SQLite.
    """
    values = {"experiment_key": assignment.experiment, "unit": assignment.unit,
              "variant": assignment.variant, "layer_key": assignment.layer,
              "assigned_at": assignment.assigned_at, "epoch": assignment.epoch}
    return db.batched_merge("exposures", values, _insert_exposures, _insert_exposure_alone)


def _insert_exposure_alone(conn: sa.Connection, row: dict[str, Any]) -> Any:
    """`_insert_exposures(conn, [row])[0]` as one statement that commits by itself, for an
    exposure alone in its commit (or NOT_DONE: see `insert_alone`)."""
    return insert_alone(conn, ExposureRecord.__table__, row)


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
        table = ExposureRecord.__table__
        self.select = sa.select(table)
        # built once: on the hot path, building the WHERE clause cost more than running it
        self._of_unit = sa.select(table.c.experiment_key, table.c.unit, table.c.variant, table.c.layer_key,
                                  table.c.assigned_at, table.c.epoch).where(table.c.unit == sa.bindparam("unit"))

    def for_unit(self, unit: str) -> dict[str, Assignment]:
        rows = self._db.select_rows(self._of_unit, {"unit": unit})
        return {experiment: Assignment(experiment, unit_, variant, layer, _utc(assigned_at), epoch)
                for experiment, unit_, variant, layer, assigned_at, epoch in rows}

    def assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        if insert_exposure(self._db, assignment):
            return assignment, True
        existing = self.for_unit(assignment.unit).get(assignment.experiment)
        return (existing or assignment), False


class RedisAssignments:
    """Production store: one Redis hash per unit, field = experiment (HSETNX is the lock).

    Exposures are still written to SQL, where the analysis reads them; the Redis hash
    is the sticky record the hot path consults. SQL therefore holds every assignment,
    which makes it the fallback: while Redis is unreachable, reads and first assignments
    go to the exposures table (logged loudly once; Redis is retried every
    `retry_seconds`), and when Redis is back the assignments made meanwhile are copied
    into it, so nobody's variant changes across the outage.
    """

    def __init__(self, client: Any, db: Database, prefix: str = "flagship:assign:",
                 retry_seconds: float = REDIS_RETRY_SECONDS) -> None:
        self._redis = client
        self._db = db
        self._prefix = prefix
        self._sql = SqlAssignments(db)
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._down_since: datetime | None = None  # wall clock: the backfill reads from it
        self._retry_at = 0.0

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and SQL serves the sticky records."""
        return self._down_since is not None

    def check(self) -> dict[str, Any]:
        """Readiness: can Redis be reached now (and what serves while it cannot)."""
        try:
            self._redis.ping()
        except RedisError as error:
            self._failed(error)
            return {"status": "down", "fallback": "sql exposures table",
                    "error": type(error).__name__}
        self._recovered()
        return {"status": "ok"}

    def ping(self) -> str | None:
        """Why Redis cannot be reached now, or None (no state changes: for start-up checks)."""
        try:
            self._redis.ping()
        except RedisError as error:
            return _reason(error)
        return None

    def for_unit(self, unit: str) -> dict[str, Assignment]:
        if self._usable():
            try:
                raw = self._redis.hgetall(self._prefix + unit)
            except RedisError as error:
                self._failed(error)
            else:
                self._recovered()
                return {_text(exp): _decode(_text(exp), unit, _text(v)) for exp, v in raw.items()}
        return self._sql.for_unit(unit)

    def assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        if self._usable():
            try:
                result = self._assign(assignment)
            except RedisError as error:
                self._failed(error)
            else:
                self._recovered()
                return result
        return self._sql.assign(assignment)

    def _assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        key = self._prefix + assignment.unit
        if self._redis.hsetnx(key, assignment.experiment, _encode(assignment)):
            if insert_exposure(self._db, assignment):
                return assignment, True
            # SQL already has one (assigned while Redis was down): that one holds
            kept = self._sql.for_unit(assignment.unit).get(assignment.experiment, assignment)
            self._redis.hset(key, assignment.experiment, _encode(kept))
            return kept, False
        current = self._redis.hget(key, assignment.experiment)
        return _decode(assignment.experiment, assignment.unit, _text(current)), False

    def _usable(self) -> bool:
        return self._down_since is None or time.monotonic() >= self._retry_at

    def _failed(self, error: Exception) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = datetime.now(timezone.utc)
                telemetry.REDIS_DEGRADED.set(1)
            self._retry_at = time.monotonic() + self.retry_seconds
        if first:
            log.error("Redis is unreachable (%s): sticky assignments are read from and written "
                      "to the SQL exposures table until it is back (retried every %.0f s)",
                      _reason(error), self.retry_seconds)

    def _recovered(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is None:
            return
        telemetry.REDIS_DEGRADED.set(0)
        try:
            copied = self._backfill(since - BACKFILL_MARGIN)
        except RedisError as error:  # down again: keep serving from SQL
            self._failed(error)
            return
        log.warning("Redis is reachable again: %d assignments made meanwhile copied into it",
                    copied)

    def _backfill(self, since: datetime) -> int:
        table = ExposureRecord.__table__
        with self._db.engine.connect() as conn:
            rows = conn.execute(self._sql.select.where(table.c.assigned_at >= since)).all()
        pipe = self._redis.pipeline(transaction=False)
        for row in rows:
            assignment = _from_row(row)
            pipe.hset(self._prefix + assignment.unit, assignment.experiment, _encode(assignment))
        pipe.execute()
        return len(rows)


def _encode(assignment: Assignment) -> str:
    return (f"{assignment.variant}\t{assignment.layer}\t{assignment.assigned_at.isoformat()}"
            f"\t{assignment.epoch}")


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


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

        # short timeouts: an unreachable Redis must cost a request milliseconds, not minutes
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=1.0)
        return RedisAssignments(client, db)
    return SqlAssignments(db)


__all__ = ["SqlAssignments", "RedisAssignments", "ExposureRecord", "make_assignment_store"]
