"""Writing accepted events, SDK-sent exposures and data-quality counters (one transaction).

The store-wide counters per hour (`event_counters`): duplicate, rejected and late are
added by the request that saw them; accepted is added by the aggregation round that folds
the events in (`accepted_counts`), and until then the events themselves are the count
(`global_quality` reads both). An ordinary single event thus writes its row and nothing
else: a counter upsert on every event was a tenth of its CPU, and its page one more
written to the WAL at every commit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

import sqlalchemy as sa

from flagship.db import NOT_DONE, insert_alone, insert_new, upsert
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
        taken = set(mine)
        repeated = [row["unit"] for row in batch.rows if row["event_id"] not in taken]
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


def alone(batch: Batch) -> Callable[[sa.Connection, Batch], Any] | None:
    """`write_alone` if `batch` is the ordinary single event whose whole write is its row
    (not an exposure, not late, nothing rejected or repeated); else None."""
    if len(batch.rows) != 1 or batch.exposures or batch.issues or batch.late \
            or any(n for kind, n in batch.counts.items() if kind != "accepted"):
        return None
    return write_alone


def write_alone(conn: sa.Connection, batch: Batch) -> Any:
    """`write(conn, [batch])` for a batch `alone` admits, as one statement that commits by
    itself (the writer runs it outside a transaction): 1 when the event was inserted.
    NOT_DONE when it was not (a duplicate has counters to add: `write` does that, in a
    transaction) or the statement cannot run alone here."""
    inserted = insert_alone(conn, EventRecord.__table__, batch.rows[0])
    if inserted is not True:
        return NOT_DONE
    batch.counts.update(accepted=1, late=0)
    return 1


def _count(conn: sa.Connection, batches: list[Batch]) -> None:
    """Add the batches' duplicate / rejected / late counts (accepted: see the module)."""
    totals: dict[tuple[datetime, str], int] = {}
    for batch in batches:
        for kind, n in batch.counts.items():
            if n and kind != "accepted":
                key = (_hour(batch.now), kind)
                totals[key] = totals.get(key, 0) + n
    add_counts(conn, totals)


def accepted_counts(received: Iterable[datetime]) -> dict[tuple[datetime, str], int]:
    """Events counted as accepted in the hours they were received: what the aggregation
    round that marks them aggregated adds (`add_counts`, in its transaction)."""
    totals: dict[tuple[datetime, str], int] = {}
    for at in received:
        key = (_hour(at), "accepted")
        totals[key] = totals.get(key, 0) + 1
    return totals


def add_counts(conn: sa.Connection, totals: dict[tuple[datetime, str], int]) -> None:
    upsert(conn, EventCounterRecord.__table__,
           [{"hour": hour, "kind": kind, "count": n} for (hour, kind), n in totals.items()],
           ["hour", "kind"], add=("count",))


def global_quality(conn: sa.Connection, since: datetime | None = None) -> dict[str, int]:
    """The whole store's accepted / duplicate / rejected / late counts (since an hour).

    One statement, so one view of the store on every backend: an aggregation round that
    commits meanwhile moves events from the pending tail into the counters, never both
    or neither."""
    t, e = EventCounterRecord.__table__, EventRecord.__table__
    counted = sa.select(t.c.kind.label("kind"), t.c.count.label("n"))
    pending = sa.select(sa.literal("accepted").label("kind"), sa.literal(1).label("n")) \
        .where(sa.not_(e.c.aggregated))
    if since is not None:
        counted = counted.where(t.c.hour >= _hour(since))
        pending = pending.where(e.c.received_at >= _hour(since))
    both = sa.union_all(counted, pending).subquery()
    query = sa.select(both.c.kind, sa.func.sum(both.c.n)).group_by(both.c.kind)
    counts = {kind: int(n or 0) for kind, n in conn.execute(query)}
    return {k: counts.get(k, 0) for k in ("accepted", "duplicate", "rejected", "late")}
