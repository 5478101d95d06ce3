"""events: one index fewer on the hottest insert

Every accepted event updated five indexes. `ix_events_environment` served no query (the
rebuild joins on the unit; the quality counters have their own table), and the one query
by event name (the volume alert rules: an event's count per hour since a time) is better
served by (event, received_at) than by the event alone. So: drop both, create that one.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""
from __future__ import annotations

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_events_environment', table_name='events')
    op.drop_index('ix_events_event', table_name='events')
    op.create_index('ix_events_event_received', 'events', ['event', 'received_at'])


def downgrade() -> None:
    op.drop_index('ix_events_event_received', table_name='events')
    op.create_index('ix_events_event', 'events', ['event'])
    op.create_index('ix_events_environment', 'events', ['environment'])
