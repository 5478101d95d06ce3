"""The scheduled flag changes table and its queries (the flags domain: flags never import
the rollout domain, so this table lives here rather than with the notification tables)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import JSON, Column, Field, SQLModel

STATUSES = ("pending", "applied", "failed", "cancelled")


class ScheduledChangeRecord(SQLModel, table=True):
    """A change of one flag in one environment to apply at `at` (enable, disable, set a
    rollout percentage); the periodic job applies it as `system:schedule`."""

    __tablename__ = "scheduled_changes"
    __table_args__ = (sa.Index("ix_scheduled_changes_due", "status", "at"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    environment: str = Field(sa_column=Column(sa.String(128), nullable=False))
    flag_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    change: dict = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(sa_column=Column(sa.String(16), nullable=False))
    created_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    created_by: str
    applied_at: Optional[datetime] = Field(default=None, sa_column=Column(sa.DateTime(timezone=True)))
    error: Optional[str] = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    cancelled_by: Optional[str] = Field(default=None, sa_column=Column(sa.String, nullable=True))


def get(session: Session, change_id: int) -> ScheduledChangeRecord | None:
    return session.get(ScheduledChangeRecord, change_id)


def for_flag(session: Session, flag_key: str, environment: str,
             statuses: Sequence[str] | None = None) -> Sequence[ScheduledChangeRecord]:
    """A flag's scheduled changes in one environment, soonest first."""
    query = sa.select(ScheduledChangeRecord).where(ScheduledChangeRecord.flag_key == flag_key,
                                                   ScheduledChangeRecord.environment == environment)
    if statuses:
        query = query.where(ScheduledChangeRecord.status.in_(list(statuses)))
    return session.execute(query.order_by(ScheduledChangeRecord.at, ScheduledChangeRecord.id)).scalars().all()


def due_ids(session: Session, now: datetime, limit: int) -> list[int]:
    """Ids of pending changes whose time has come, oldest first."""
    t = ScheduledChangeRecord
    return list(session.execute(sa.select(t.id).where(t.status == "pending", t.at <= now)
                                .order_by(t.at, t.id).limit(limit)).scalars())


def set_status(session: Session, change_id: int, expected: str, values: dict[str, Any]) -> bool:
    """Move a change out of `expected` status (compare-and-set: two job runs never both act)."""
    result = session.execute(sa.update(ScheduledChangeRecord)
                             .where(ScheduledChangeRecord.id == change_id,
                                    ScheduledChangeRecord.status == expected)
                             .values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1
