"""event_counters: accepted events are counted when they are aggregated

Until now each request added its accepted events to `event_counters`; from this revision
the aggregation round does, when it marks them aggregated, and the store-wide figures add
the events still pending. Events already pending at the upgrade were counted by their
request, so their counts come off now (the round adds them back); a downgrade puts the
pending events' counts back where the old code expects them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

events = sa.table('events', sa.column('received_at', sa.DateTime(timezone=True)),
                  sa.column('aggregated', sa.Boolean))
counters = sa.table('event_counters', sa.column('hour', sa.DateTime(timezone=True)),
                    sa.column('kind', sa.String), sa.column('count', sa.Integer))


def _pending_by_hour(conn: sa.Connection) -> dict[datetime, int]:
    totals: dict[datetime, int] = {}
    for (received,) in conn.execute(sa.select(events.c.received_at).where(sa.not_(events.c.aggregated))):
        if isinstance(received, str):
            received = datetime.fromisoformat(received)
        if received.tzinfo is None:
            received = received.replace(tzinfo=timezone.utc)
        hour = received.replace(minute=0, second=0, microsecond=0)
        totals[hour] = totals.get(hour, 0) + 1
    return totals


def _move(sign: int) -> None:
    conn = op.get_bind()
    for hour, n in _pending_by_hour(conn).items():
        where = (counters.c.hour == hour) & (counters.c.kind == 'accepted')
        changed = conn.execute(sa.update(counters).where(where).values(count=counters.c.count + sign * n))
        if changed.rowcount == 0 and sign > 0:
            conn.execute(sa.insert(counters).values(hour=hour, kind='accepted', count=n))
    # an hour whose accepted events are all pending is counted by the tail alone now
    conn.execute(sa.delete(counters).where((counters.c.kind == 'accepted') & (counters.c.count == 0)))


def upgrade() -> None:
    _move(-1)


def downgrade() -> None:
    _move(+1)
