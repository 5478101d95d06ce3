"""Notification and alert tables and their queries: webhooks with their delivery log, alert
rules and alerts, plus the outbox queries of the dispatcher (the outbox table itself is a
platform table, `flagship.store.OutboxRecord`, written by `Tx.emit`)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import JSON, Column, Field, SQLModel

from flagship.db import as_utc
from flagship.store import OutboxRecord


def _ts(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=nullable))


class WebhookRecord(SQLModel, table=True):
    """An HTTP endpoint that receives the events whose type matches one of its patterns.

    The secret signs every body (HMAC-SHA256); it is shown once, when the webhook is created."""

    __tablename__ = "webhooks"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    url: str = Field(sa_column=Column(sa.String(2048), nullable=False))
    event_types: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret: str = Field(sa_column=Column(sa.String(256), nullable=False))
    environment: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))
    enabled: bool = True
    version: int = 1
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str


class WebhookDeliveryRecord(SQLModel, table=True):
    """One attempt to deliver one event to one webhook (the delivery log). A webhook that
    answered 2xx for an event is never sent that event again."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.Index("ix_webhook_deliveries_event", "event_id", "webhook_id"),
                      sa.Index("ix_webhook_deliveries_webhook", "webhook_id", "id"))
    id: Optional[int] = Field(default=None, primary_key=True)
    webhook_id: int = Field(sa_column=Column(sa.Integer, nullable=False))
    event_id: str = Field(sa_column=Column(sa.String(64), nullable=False))
    type: str = Field(sa_column=Column(sa.String(64), nullable=False))
    attempt: int
    ok: bool
    status_code: Optional[int] = Field(default=None, sa_column=Column(sa.Integer, nullable=True))
    error: Optional[str] = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    duration_ms: float
    attempted_at: datetime = _ts()


class AlertRuleRecord(SQLModel, table=True):
    """An alert rule on an experiment (by key) or a rollout (by id). Deleting one keeps the
    row (`deleted_at`) so its alerts keep their rule and an experiment whose rules were all
    removed is not given the default rules again."""

    __tablename__ = "alert_rules"
    __table_args__ = (sa.Index("ix_alert_rules_subject", "subject_type", "subject_key"),
                      # the default rules are added once per subject, even by two job runs at once
                      sa.Index("uq_alert_rules_default", "subject_type", "subject_key", "kind", unique=True,
                               sqlite_where=sa.text("created_by = 'system:alerts'"),
                               postgresql_where=sa.text("created_by = 'system:alerts'")))
    id: Optional[int] = Field(default=None, primary_key=True)
    subject_type: str = Field(sa_column=Column(sa.String(16), nullable=False))
    subject_key: str = Field(sa_column=Column(sa.String(128), nullable=False))
    kind: str = Field(sa_column=Column(sa.String(32), nullable=False))
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    severity: str = Field(sa_column=Column(sa.String(16), nullable=False))
    enabled: bool = True
    version: int = 1
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str
    deleted_at: Optional[datetime] = _ts(nullable=True)


class AlertRecord(SQLModel, table=True):
    """A firing of an alert rule: open -> acknowledged -> resolved. At most one unresolved
    alert per rule (a partial unique index), so a condition that keeps firing opens one."""

    __tablename__ = "alerts"
    __table_args__ = (sa.Index("uq_alerts_unresolved_rule", "rule_id", unique=True,
                               sqlite_where=sa.text("status <> 'resolved'"),
                               postgresql_where=sa.text("status <> 'resolved'")),
                      sa.Index("ix_alerts_status", "status", "id"),
                      sa.Index("ix_alerts_subject", "subject_type", "subject_key"))
    id: Optional[int] = Field(default=None, primary_key=True)
    rule_id: int = Field(sa_column=Column(sa.Integer, nullable=False))
    subject_type: str = Field(sa_column=Column(sa.String(16), nullable=False))
    subject_key: str = Field(sa_column=Column(sa.String(128), nullable=False))
    environment: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))
    kind: str = Field(sa_column=Column(sa.String(32), nullable=False))
    severity: str = Field(sa_column=Column(sa.String(16), nullable=False))
    status: str = Field(sa_column=Column(sa.String(16), nullable=False))
    message: str = ""
    evidence: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    opened_at: datetime = _ts()
    acknowledged_at: Optional[datetime] = _ts(nullable=True)
    acknowledged_by: Optional[str] = Field(default=None, sa_column=Column(sa.String, nullable=True))
    resolved_at: Optional[datetime] = _ts(nullable=True)
    resolution: Optional[str] = Field(default=None, sa_column=Column(sa.String, nullable=True))


# -- webhooks --------------------------------------------------------------------------------------

def get_webhook(session: Session, webhook_id: int) -> WebhookRecord | None:
    return session.get(WebhookRecord, webhook_id)


def webhooks(session: Session, enabled_only: bool = False) -> Sequence[WebhookRecord]:
    query = sa.select(WebhookRecord).order_by(WebhookRecord.id)
    if enabled_only:
        query = query.where(WebhookRecord.enabled.is_(True))
    return session.execute(query).scalars().all()


def webhook_by_name(session: Session, name: str, lock: bool = False) -> WebhookRecord | None:
    query = sa.select(WebhookRecord).where(WebhookRecord.name == name)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def delivery_state(session: Session, event_id: str) -> dict[int, tuple[int, bool]]:
    """webhook id -> (attempts made for this event, whether one succeeded)."""
    t = WebhookDeliveryRecord.__table__
    rows = session.execute(sa.select(t.c.webhook_id, sa.func.count(),
                                     sa.func.max(sa.case((t.c.ok, 1), else_=0)))
                           .where(t.c.event_id == event_id).group_by(t.c.webhook_id))
    return {int(w): (int(n), bool(ok)) for w, n, ok in rows}


def deliveries(session: Session, webhook_id: int, offset: int,
               limit: int) -> tuple[Sequence[WebhookDeliveryRecord], int]:
    """A webhook's delivery attempts, newest first, and their total."""
    t = WebhookDeliveryRecord
    total = session.execute(sa.select(sa.func.count()).select_from(t)
                            .where(t.webhook_id == webhook_id)).scalar_one()
    rows = session.execute(sa.select(t).where(t.webhook_id == webhook_id)
                           .order_by(t.id.desc()).offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def prune_deliveries(session: Session, before: datetime) -> int:
    t = WebhookDeliveryRecord
    return session.execute(sa.delete(t).where(t.attempted_at < before)
                           .execution_options(synchronize_session=False)).rowcount


# -- the outbox (dispatcher) ----------------------------------------------------------------------

def due_events(session: Session, now: datetime, limit: int) -> Sequence[OutboxRecord]:
    """Undelivered events whose next attempt is due, oldest first (rows another transaction
    holds are skipped on PostgreSQL; everywhere the claim is a compare-and-set)."""
    t = OutboxRecord
    query = (sa.select(t).where(t.delivered_at.is_(None),
                                sa.or_(t.next_attempt_at.is_(None), t.next_attempt_at <= now))
             .order_by(t.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.execute(query).scalars().all()


def pending_events(session: Session, limit: int) -> Sequence[OutboxRecord]:
    """Undelivered events, due or not, oldest first."""
    t = OutboxRecord
    return session.execute(sa.select(t).where(t.delivered_at.is_(None)).order_by(t.id)
                           .limit(limit)).scalars().all()


def claim_event(session: Session, row_id: int, attempts: int, lease_until: datetime) -> bool:
    """Take an event for one delivery attempt: attempts + 1 and a lease, if nobody else did."""
    t = OutboxRecord
    result = session.execute(sa.update(t).where(t.id == row_id, t.attempts == attempts, t.delivered_at.is_(None))
                             .values(attempts=attempts + 1, next_attempt_at=lease_until)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1


def finish_event(session: Session, row_id: int, attempts: int, values: dict[str, Any]) -> bool:
    """Record the outcome of the attempt claimed at `attempts` (a stale claimer writes nothing)."""
    t = OutboxRecord
    result = session.execute(sa.update(t).where(t.id == row_id, t.attempts == attempts)
                             .values(**values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def prune_events(session: Session, before: datetime) -> int:
    t = OutboxRecord
    return session.execute(sa.delete(t).where(t.delivered_at.is_not(None), t.delivered_at < before)
                           .execution_options(synchronize_session=False)).rowcount


# -- alert rules and alerts --------------------------------------------------------------------

def get_rule(session: Session, rule_id: int) -> AlertRuleRecord | None:
    record = session.get(AlertRuleRecord, rule_id)
    return None if record is None or record.deleted_at is not None else record


def rules(session: Session, subject_type: str | None = None, subject_key: str | None = None,
          enabled_only: bool = False, with_deleted: bool = False) -> Sequence[AlertRuleRecord]:
    t = AlertRuleRecord
    query = sa.select(t).order_by(t.id)
    if subject_type is not None:
        query = query.where(t.subject_type == subject_type)
    if subject_key is not None:
        query = query.where(t.subject_key == subject_key)
    if enabled_only:
        query = query.where(t.enabled.is_(True))
    if not with_deleted:
        query = query.where(t.deleted_at.is_(None))
    return session.execute(query).scalars().all()


def subjects_with_rules(session: Session, subject_type: str) -> set[str]:
    """Subjects that have (or had) rules: they are configured and get no default rules."""
    t = AlertRuleRecord
    return set(session.execute(sa.select(t.subject_key).where(t.subject_type == subject_type)
                               .distinct()).scalars())


def get_alert(session: Session, alert_id: int) -> AlertRecord | None:
    return session.get(AlertRecord, alert_id)


def unresolved(session: Session, rule_ids: Sequence[int] | None = None) -> dict[int, AlertRecord]:
    """rule id -> its open or acknowledged alert."""
    query = sa.select(AlertRecord).where(AlertRecord.status != "resolved")
    if rule_ids is not None:
        query = query.where(AlertRecord.rule_id.in_(list(rule_ids)))
    return {a.rule_id: a for a in session.execute(query).scalars()}


def query_alerts(session: Session, *, status: str | None = None, subject_type: str | None = None,
                 subject_key: str | None = None, environment: str | None = None,
                 offset: int = 0, limit: int = 50) -> tuple[Sequence[AlertRecord], int]:
    """Filtered alerts, newest first, with the total before paging."""
    t = AlertRecord
    query = sa.select(t)
    for column, value in ((t.status, status), (t.subject_type, subject_type),
                          (t.subject_key, subject_key), (t.environment, environment)):
        if value is not None:
            query = query.where(column == value)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(t.id.desc()).offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def resolve(session: Session, alert_id: int, now: datetime, resolution: str) -> bool:
    """Resolve an unresolved alert (compare-and-set: only one resolver emits the event)."""
    t = AlertRecord
    result = session.execute(sa.update(t).where(t.id == alert_id, t.status != "resolved")
                             .values(status="resolved", resolved_at=now, resolution=resolution)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1


def acknowledge(session: Session, alert_id: int, now: datetime, actor: str) -> bool:
    t = AlertRecord
    result = session.execute(sa.update(t).where(t.id == alert_id, t.status == "open")
                             .values(status="acknowledged", acknowledged_at=now, acknowledged_by=actor)
                             .execution_options(synchronize_session=False))
    return result.rowcount == 1


# -- what the alert detectors read -----------------------------------------------------------------

def _epoch_hour(conn: sa.Connection, column: Any) -> Any:
    """SQL for the epoch hour (seconds // 3600) of a timestamp column, per dialect."""
    if conn.dialect.name == "sqlite":
        return sa.cast(sa.func.strftime("%s", column), sa.Integer) / 3600
    return sa.cast(sa.func.floor(sa.extract("epoch", column) / 3600), sa.Integer)


def exposures_per_hour(conn: sa.Connection, subject: str, since_hour: int) -> dict[int, float]:
    """Newly exposed units of an experiment (or analysed rollout) per epoch hour, all variants."""
    from flagship.experiments.store.tables import ExposureCountRecord

    t = ExposureCountRecord.__table__
    rows = conn.execute(sa.select(t.c.period, sa.func.sum(t.c.count))
                        .where(t.c.experiment_key == subject, t.c.period >= since_hour)
                        .group_by(t.c.period))
    return {int(hour): float(n or 0) for hour, n in rows}


def last_exposure(conn: sa.Connection, subject: str) -> float | None:
    """Epoch seconds by which the last exposure had happened: the end of the last aggregated
    hour with exposures, or a newer exposure still waiting for aggregation."""
    from flagship.experiments.store.tables import ExposureCountRecord, ExposureRecord

    counts = ExposureCountRecord.__table__
    hour = conn.execute(sa.select(sa.func.max(counts.c.period))
                        .where(counts.c.experiment_key == subject, counts.c.count > 0)).scalar()
    raw = ExposureRecord.__table__
    pending = conn.execute(sa.select(sa.func.max(raw.c.assigned_at))
                           .where(raw.c.experiment_key == subject, sa.not_(raw.c.aggregated))).scalar()
    marks = [] if hour is None else [(int(hour) + 1) * 3600.0]
    if pending is not None:
        if isinstance(pending, str):  # SQLite aggregates return the stored text
            pending = datetime.fromisoformat(pending)
        marks.append(as_utc(pending).timestamp())
    return max(marks) if marks else None


def events_per_hour(conn: sa.Connection, environment: str, event: str, since: datetime) -> dict[int, float]:
    """Events of one name received per epoch hour in an environment, since `since`."""
    from flagship.experiments.store.tables import EventRecord

    t = EventRecord.__table__
    hour = _epoch_hour(conn, t.c.received_at)
    rows = conn.execute(sa.select(hour, sa.func.count())
                        .where(t.c.environment == environment, t.c.event == event,
                               t.c.received_at >= since).group_by(hour))
    return {int(h): float(n) for h, n in rows}
