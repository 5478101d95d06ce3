"""Audit log: one row per mutation, written in the mutation's own transaction."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import JSON, Column, Field, SQLModel

from flagship.db import as_utc


class AuditRecord(SQLModel, table=True):
    """Who did what to which object, with the document before and after."""

    __tablename__ = "audit_log"
    id: Optional[int] = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False, index=True))
    actor: str = Field(index=True)
    action: str = Field(index=True)
    target_type: str = Field(index=True)
    target_key: str = Field(index=True)
    before: Optional[Any] = Field(default=None, sa_column=Column(JSON))
    after: Optional[Any] = Field(default=None, sa_column=Column(JSON))


def audit_to_dict(record: AuditRecord) -> dict[str, Any]:
    """The JSON form of an audit record (also what `track_event` hooks receive)."""
    at = as_utc(record.at)
    return {
        "id": record.id, "at": at.isoformat() if at else None, "actor": record.actor,
        "action": record.action, "target_type": record.target_type,
        "target": record.target_key, "before": record.before, "after": record.after,
    }


def list_audit(session: Session, *, actor: str | None = None, action: str | None = None,
               target_type: str | None = None, target: str | None = None,
               since: datetime | None = None, until: datetime | None = None,
               offset: int = 0, limit: int = 50) -> tuple[list[AuditRecord], int]:
    """Filtered audit records, newest first, with the total before paging."""
    query = sa.select(AuditRecord)
    equal = {AuditRecord.actor: actor, AuditRecord.action: action,
             AuditRecord.target_type: target_type, AuditRecord.target_key: target}
    for column, value in equal.items():
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if until is not None:
        query = query.where(AuditRecord.at < until)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(
        query.order_by(AuditRecord.id.desc()).offset(offset).limit(limit)).scalars().all()
    return list(rows), int(total)
