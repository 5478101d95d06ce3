"""Event ingestion: validate per item, store idempotently, commit before answering."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Optional

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel

from flagship.experiments.events import EXPOSURE, Bounds, EventIn, parse_event
from flagship.experiments.store.assignments import ExposureRecord
from flagship.runtime import Runtime


class EventRecord(SQLModel, table=True):
    """A metric event (or an SDK-sent exposure), stored once per event_id."""

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_pending", "id", sqlite_where=sa.text("NOT aggregated"),
                               postgresql_where=sa.text("NOT aggregated")),)
    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    unit: str = Field(sa_column=Column(sa.String(256), nullable=False, index=True))
    event: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    value: float
    timestamp: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    received_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    properties: Optional[dict] = Field(default=None, sa_column=Column(JSON))
    # the aggregator's work queue: rows not yet folded into per-unit aggregates
    aggregated: bool = Field(default=False, sa_column=Column(sa.Boolean, nullable=False,
                                                             server_default=sa.false()))


class EventCounterRecord(SQLModel, table=True):
    """Data-quality counters per hour: accepted, duplicate, rejected, late."""

    __tablename__ = "event_counters"
    hour: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    kind: str = Field(sa_column=Column(sa.String(16), primary_key=True))
    count: int = 0


@dataclass
class IngestResult:
    """What happened to a request's events."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": self.rejected}


def bounds_from(config: dict[str, Any]) -> Bounds:
    """Timestamp bounds from FLAGSHIP_EVENT_* settings."""
    return Bounds(max_past=timedelta(days=config["EVENT_MAX_PAST_DAYS"]),
                  max_future=timedelta(seconds=config["EVENT_MAX_FUTURE_SECONDS"]),
                  late_after=timedelta(seconds=config["EVENT_LATE_SECONDS"]))


def _insert(db_is_sqlite: bool, table: sa.Table) -> Any:
    if db_is_sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table)


def _check_exposure(event: EventIn, experiments: Any) -> dict[str, list[str]] | None:
    spec = experiments.get(event.experiment)
    if spec is None:
        return {"experiment": [f"unknown experiment {event.experiment!r}"]}
    if event.variant not in {v.variant for v in spec.variants}:
        return {"variant": [f"{event.variant!r} is not a variant of {event.experiment!r}"]}
    return None


def validate(items: Iterable[Any], now: datetime, bounds: Bounds,
             experiments: Any) -> tuple[list[EventIn], list[dict[str, Any]], int]:
    """Split items into valid events and rejections; repeated ids in one request are duplicates."""
    valid: list[EventIn] = []
    rejected: list[dict[str, Any]] = []
    seen: set[str] = set()
    repeats = 0
    for index, item in enumerate(items):
        parsed = parse_event(item, now, bounds)
        if isinstance(parsed, EventIn) and parsed.event == EXPOSURE:
            parsed = _check_exposure(parsed, experiments) or parsed
        if not isinstance(parsed, EventIn):
            rejected.append({"index": index, "errors": parsed})
        elif parsed.event_id in seen:
            repeats += 1
        else:
            seen.add(parsed.event_id)
            valid.append(parsed)
    return valid, rejected, repeats


def _experiments(runtime: Runtime, items: list[Any]) -> Any:
    """Experiment specs, read only when the request carries exposures (they are checked)."""
    if not any(isinstance(item, dict) and item.get("event") == EXPOSURE for item in items):
        return {}
    return runtime.snapshots.get().snapshot.experiments


def ingest(runtime: Runtime, items: list[Any], now: datetime | None = None) -> IngestResult:
    """Store the valid events of `items`; return only after they are committed."""
    now = now or runtime.clock()
    bounds = bounds_from(runtime.config)
    experiments = _experiments(runtime, items)
    valid, rejected, repeats = validate(items, now, bounds, experiments)
    result = IngestResult(rejected=rejected, late=sum(e.is_late(now, bounds) for e in valid))
    batch = _Batch(
        rows=[{"event_id": e.event_id, "unit": e.unit, "event": e.event, "value": e.value,
               "timestamp": e.timestamp, "properties": e.properties, "received_at": now}
              for e in valid],
        exposures={e.event_id: {"experiment_key": e.experiment, "unit": e.unit, "variant": e.variant,
                                "layer_key": experiments[e.experiment].layer, "assigned_at": e.timestamp}
                   for e in valid if e.event == EXPOSURE},
        counts={"duplicate": repeats, "rejected": len(rejected), "late": result.late}, now=now)
    sqlite = runtime.db.is_sqlite
    # concurrent requests' events are written by one INSERT in one transaction
    result.accepted = runtime.db.batched_merge(
        "events", batch, lambda conn, batches: _write(conn, sqlite, batches))
    result.duplicates = len(valid) - result.accepted + repeats
    return result


@dataclass
class _Batch:
    """One request's events on their way to the writer."""

    rows: list[dict[str, Any]]
    exposures: dict[str, dict[str, Any]]
    counts: dict[str, int]
    now: datetime


def _write(conn: sa.Connection, sqlite: bool, batches: list[_Batch]) -> list[int]:
    """Insert every batch's events at once; return how many each batch had inserted.

    An event_id listed by two concurrent requests is inserted once and credited to the
    first of them; the other sees a duplicate.
    """
    rows = [row for batch in batches for row in batch.rows]
    inserted: set[str] = set()
    if rows:
        table = EventRecord.__table__
        statement = _insert(sqlite, table).on_conflict_do_nothing().returning(table.c.event_id)
        inserted = {row[0] for row in conn.execute(statement, rows)}
    credited, exposures = [], []
    for batch in batches:
        mine = [row["event_id"] for row in batch.rows if row["event_id"] in inserted]
        inserted.difference_update(mine)
        credited.append(len(mine))
        exposures += [batch.exposures[i] for i in mine if i in batch.exposures]
        batch.counts.update(accepted=len(mine))
        batch.counts["duplicate"] += len(batch.rows) - len(mine)
    if exposures:  # only a unit's first exposure counts
        conn.execute(_insert(sqlite, ExposureRecord.__table__).on_conflict_do_nothing(), exposures)
    totals: dict[tuple[datetime, str], int] = {}
    for batch in batches:
        hour = batch.now.replace(minute=0, second=0, microsecond=0)
        for kind, n in batch.counts.items():
            totals[(hour, kind)] = totals.get((hour, kind), 0) + n
    _count(conn, sqlite, totals)
    return credited


def _count(conn: sa.Connection, sqlite: bool, totals: dict[tuple[datetime, str], int]) -> None:
    table = EventCounterRecord.__table__
    rows = [{"hour": hour, "kind": kind, "count": n} for (hour, kind), n in totals.items() if n]
    if not rows:
        return
    statement = _insert(sqlite, table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.hour, table.c.kind],
        set_={"count": table.c.count + statement.excluded.count})
    conn.execute(statement, rows)
