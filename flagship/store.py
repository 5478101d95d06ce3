"""Platform tables (audit log, API keys) and their queries; the domains have their own stores."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

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
    environment: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))
    before: Optional[Any] = Field(default=None, sa_column=Column(JSON))
    after: Optional[Any] = Field(default=None, sa_column=Column(JSON))


class ApiKeyRecord(SQLModel, table=True):
    """An API key; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    scope: str
    prefix: str  # first characters of the key, to recognise it in listings
    key_hash: str = Field(sa_column=Column(sa.String(64), unique=True, nullable=False))
    created_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    created_by: str
    revoked_at: Optional[datetime] = Field(default=None, sa_column=Column(sa.DateTime(timezone=True)))
    # an SDK key reads and writes one environment; an admin key bound to one may only act there
    environment: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))


class OutboxRecord(SQLModel, table=True):
    """A notification waiting for delivery, written in the transaction that caused it.

    Every audit record becomes one (type = its action, e.g. ``flag.update``), and services
    emit others (``rollout.rolled_back``, ``alert.opened``...). The dispatcher delivers each
    to the notifiers (`notify` hook) at least once; the event id is the idempotency key.
    """

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_pending", "id", sqlite_where=sa.text("delivered_at IS NULL"),
                               postgresql_where=sa.text("delivered_at IS NULL")),)
    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(sa.String(64), unique=True, nullable=False))
    type: str = Field(sa_column=Column(sa.String(64), nullable=False, index=True))
    at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    environment: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))
    payload: dict = Field(sa_column=Column(JSON, nullable=False))
    attempts: int = 0
    failed: Optional[dict] = Field(default=None, sa_column=Column(JSON, nullable=True))
    next_attempt_at: Optional[datetime] = Field(default=None, sa_column=Column(sa.DateTime(timezone=True)))
    delivered_at: Optional[datetime] = Field(default=None, sa_column=Column(sa.DateTime(timezone=True)))


def audit_to_dict(record: AuditRecord) -> dict[str, Any]:
    """The JSON form of an audit record (also what `track_event` hooks receive)."""
    at = as_utc(record.at)
    return {
        "id": record.id, "at": at.isoformat() if at else None, "actor": record.actor,
        "action": record.action, "target_type": record.target_type,
        "target": record.target_key, "environment": record.environment,
        "before": record.before, "after": record.after,
    }


def query_audit(session: Session, *, actor: str | None = None, action: str | None = None,
                target_type: str | None = None, target: str | None = None,
                environment: str | None = None,
                since: datetime | None = None, until: datetime | None = None,
                offset: int = 0, limit: int = 50) -> tuple[list[AuditRecord], int]:
    """Filtered audit records, newest first, with the total before paging."""
    query = sa.select(AuditRecord)
    equal = {AuditRecord.actor: actor, AuditRecord.action: action,
             AuditRecord.target_type: target_type, AuditRecord.target_key: target,
             AuditRecord.environment: environment}
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


def get_key(session: Session, name: str) -> ApiKeyRecord | None:
    return session.execute(sa.select(ApiKeyRecord).where(ApiKeyRecord.name == name)).scalar_one_or_none()


def all_keys(session: Session) -> Sequence[ApiKeyRecord]:
    return session.execute(sa.select(ApiKeyRecord).order_by(ApiKeyRecord.id)).scalars().all()


def live_key(conn: sa.Connection, digest: str) -> tuple[str, str, str | None] | None:
    """(name, scope, environment) of the unrevoked key with this hash."""
    row = conn.execute(sa.select(ApiKeyRecord.name, ApiKeyRecord.scope, ApiKeyRecord.environment)
                       .where(ApiKeyRecord.key_hash == digest, ApiKeyRecord.revoked_at.is_(None))).first()
    return (row[0], row[1], row[2]) if row else None


def count_live_keys(session: Session, scope: str | None = None, unbound: bool = False) -> int:
    query = sa.select(sa.func.count(ApiKeyRecord.id)).where(ApiKeyRecord.revoked_at.is_(None))
    if scope:
        query = query.where(ApiKeyRecord.scope == scope)
    if unbound:
        query = query.where(ApiKeyRecord.environment.is_(None))
    return int(session.execute(query).scalar_one())
