"""Rollout tables and their queries: rollouts, evaluations, transitions, templates, the job lease."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import JSON, Column, Field, SQLModel


def _ts(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=nullable))


class RolloutTemplateRecord(SQLModel, table=True):
    """A named ramp policy that rollouts copy when they are created (no live link)."""

    __tablename__ = "rollout_templates"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    name: str = ""
    description: str = ""
    policy: dict = Field(sa_column=Column(JSON, nullable=False))
    version: int
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    updated_by: str


class RolloutRecord(SQLModel, table=True):
    """A progressive rollout of one rule of one flag in one environment.

    `state` is the pure core's RolloutState document; `version` is bumped by every change
    (compare-and-set: two appliers never both act).
    """

    __tablename__ = "rollouts"
    id: Optional[int] = Field(default=None, primary_key=True)
    environment: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    flag_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    rule_id: str = Field(sa_column=Column(sa.String(64), nullable=False))
    variant: str
    description: str = ""
    policy: dict = Field(sa_column=Column(JSON, nullable=False))
    template: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))
    status: str = Field(sa_column=Column(sa.String(16), nullable=False, index=True))
    attempt: int = 1
    state: dict = Field(sa_column=Column(JSON, nullable=False))
    attempt_started_at: Optional[datetime] = _ts(nullable=True)
    version: int
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str


class RolloutEvaluationRecord(SQLModel, table=True):
    """One periodic evaluation of a rollout: unique per (rollout, attempt, slot), so a slot
    evaluated twice (two workers, a retried job) is skipped the second time."""

    __tablename__ = "rollout_evaluations"
    __table_args__ = (sa.UniqueConstraint("rollout_id", "attempt", "slot", name="uq_rollout_evaluation_slot"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    rollout_id: int = Field(sa_column=Column(sa.Integer, nullable=False, index=True))
    attempt: int
    slot: int
    evaluated_at: datetime = _ts()
    decision: Optional[str] = Field(default=None, sa_column=Column(sa.String(16), nullable=True))
    reasons: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    results: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    observations: Optional[dict] = Field(default=None, sa_column=Column(JSON, nullable=True))


class TransitionRecord(SQLModel, table=True):
    """A change of a rollout's status or percentage, with who and why (the timeline)."""

    __tablename__ = "rollout_transitions"
    __table_args__ = (sa.UniqueConstraint("rollout_id", "attempt", "seq", name="uq_rollout_transition_seq"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    rollout_id: int = Field(sa_column=Column(sa.Integer, nullable=False, index=True))
    attempt: int
    seq: int
    action: str
    actor: str
    from_status: str
    to_status: str
    from_percent_bp: int
    to_percent_bp: int
    from_step: int
    to_step: int
    reasons: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    evidence: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()


class JobLeaseRecord(SQLModel, table=True):
    """Who runs a periodic job now (embedded mode): one row per job, taken when expired."""

    __tablename__ = "job_leases"
    name: str = Field(sa_column=Column(sa.String(64), primary_key=True))
    holder: str = Field(sa_column=Column(sa.String(128), nullable=False))
    expires_at: datetime = _ts()


def get_rollout(session: Session, rollout_id: int, lock: bool = False) -> RolloutRecord | None:
    query = sa.select(RolloutRecord).where(RolloutRecord.id == rollout_id)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def rollouts(session: Session, *, environment: str | None = None, statuses: Sequence[str] | None = None,
             flag: str | None = None) -> Sequence[RolloutRecord]:
    query = sa.select(RolloutRecord).order_by(RolloutRecord.id)
    if environment is not None:
        query = query.where(RolloutRecord.environment == environment)
    if statuses is not None:
        query = query.where(RolloutRecord.status.in_(list(statuses)))
    if flag is not None:
        query = query.where(RolloutRecord.flag_key == flag)
    return session.execute(query).scalars().all()


def compare_and_set(session: Session, record: RolloutRecord, values: dict[str, Any]) -> bool:
    """Write `values` only if the rollout is still at the version read (race-free)."""
    result = session.execute(sa.update(RolloutRecord).where(
        RolloutRecord.id == record.id, RolloutRecord.version == record.version)
        .values(version=record.version + 1, **values).execution_options(synchronize_session=False))
    return result.rowcount == 1


def next_seq(session: Session, rollout_id: int, attempt: int) -> int:
    value = session.execute(sa.select(sa.func.max(TransitionRecord.seq)).where(
        TransitionRecord.rollout_id == rollout_id, TransitionRecord.attempt == attempt)).scalar()
    return int(value or 0) + 1


def transitions(session: Session, rollout_id: int) -> Sequence[TransitionRecord]:
    return session.execute(sa.select(TransitionRecord).where(TransitionRecord.rollout_id == rollout_id)
                           .order_by(TransitionRecord.attempt, TransitionRecord.seq)).scalars().all()


def evaluations(session: Session, rollout_id: int, limit: int = 200) -> Sequence[RolloutEvaluationRecord]:
    return session.execute(sa.select(RolloutEvaluationRecord).where(
        RolloutEvaluationRecord.rollout_id == rollout_id)
        .order_by(RolloutEvaluationRecord.id.desc()).limit(limit)).scalars().all()


def get_template(session: Session, key: str, lock: bool = False) -> RolloutTemplateRecord | None:
    query = sa.select(RolloutTemplateRecord).where(RolloutTemplateRecord.key == key)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def templates(session: Session) -> Sequence[RolloutTemplateRecord]:
    return session.execute(sa.select(RolloutTemplateRecord).order_by(RolloutTemplateRecord.key)).scalars().all()
