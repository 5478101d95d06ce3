"""Writing accepted events, SDK-sent exposures and data-quality counters (one transaction)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flagship.db import insert_new, upsert
from flagship.experiments.store.tables import (EventCounterRecord, EventIssueRecord, EventRecord,
                                               ExposureRecord)


@dataclass
class Batch:
    """One request's events on their way to the writer.

    `issues` are (unit, kind) pairs of items that were rejected or repeated within the
    request, so an experiment's data-quality counters can include its units' problems.
    `late` are the event ids that arrived late; only those accepted count as late.
    """

    rows: list[dict[str, Any]]
    exposures: dict[str, dict[str, Any]]
    counts: dict[str, int]
    issues: list[tuple[str, str]]
    now: datetime
    late: set[str] = field(default_factory=set)


def _hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def write(conn: sa.Connection, batches: list[Batch]) -> list[int]:
    """Insert every batch's events at once; return how many each batch had inserted.

    An event_id listed by two concurrent requests is inserted once and credited to the
    first of them; the other sees a duplicate.
    """
    rows = [row for batch in batches for row in batch.rows]
    inserted = {row[0] for row in insert_new(conn, EventRecord.__table__, rows, ("event_id",))}
    credited, exposures = [], []
    issues: dict[tuple[str, datetime, str], int] = {}
    for batch in batches:
        mine = [row["event_id"] for row in batch.rows if row["event_id"] in inserted]
        inserted.difference_update(mine)
        credited.append(len(mine))
        exposures += [batch.exposures[i] for i in mine if i in batch.exposures]
        batch.counts.update(accepted=len(mine), late=sum(1 for i in mine if i in batch.late))
        repeated = [row["unit"] for row in batch.rows if row["event_id"] not in mine]
        batch.counts["duplicate"] += len(repeated)
        for unit, kind in [*batch.issues, *((u, "duplicate") for u in repeated)]:
            key = (unit, _hour(batch.now), kind)
            issues[key] = issues.get(key, 0) + 1
    insert_new(conn, ExposureRecord.__table__, exposures)  # only a unit's first exposure counts
    upsert(conn, EventIssueRecord.__table__,
           [{"unit": u, "hour": h, "kind": k, "count": n} for (u, h, k), n in issues.items()],
           ["unit", "hour", "kind"], add=("count",))
    _count(conn, batches)
    return credited


def _count(conn: sa.Connection, batches: list[Batch]) -> None:
    totals: dict[tuple[datetime, str], int] = {}
    for batch in batches:
        for kind, n in batch.counts.items():
            totals[(_hour(batch.now), kind)] = totals.get((_hour(batch.now), kind), 0) + n
    upsert(conn, EventCounterRecord.__table__,
           [{"hour": hour, "kind": kind, "count": n} for (hour, kind), n in totals.items() if n],
           ["hour", "kind"], add=("count",))


def global_quality(conn: sa.Connection, since: datetime | None = None) -> dict[str, int]:
    """The whole store's accepted / duplicate / rejected / late counts (since an hour)."""
    t = EventCounterRecord.__table__
    query = sa.select(t.c.kind, sa.func.sum(t.c.count)).group_by(t.c.kind)
    if since is not None:
        query = query.where(t.c.hour >= _hour(since))
    counts = {kind: int(n or 0) for kind, n in conn.execute(query)}
    return {k: counts.get(k, 0) for k in ("accepted", "duplicate", "rejected", "late")}
