"""Layer and experiment tables, and the queries the experiment service runs."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import JSON, Column, Field, SQLModel

from flagship.experiments.store.assignments import ExposureRecord  # noqa: F401  (table registration)


def _ts(nullable: bool = False, **kwargs: Any) -> Any:
    return Field(default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=nullable, **kwargs))


class LayerRecord(SQLModel, table=True):
    """A traffic layer (试验层): 10,000 buckets hashed with its own salt."""

    __tablename__ = "layers"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    name: str = ""
    description: str = ""
    salt: str
    version: int
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    updated_by: str


class ExperimentRecord(SQLModel, table=True):
    """An experiment: its configuration document, lifecycle state and bucket ranges."""

    __tablename__ = "experiments"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    flag_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    layer_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    status: str = Field(index=True)
    version: int
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    ranges: list = Field(sa_column=Column(JSON, nullable=False))
    started_at: Optional[datetime] = _ts(nullable=True)
    ended_at: Optional[datetime] = _ts(nullable=True)
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str


class ExperimentRevisionRecord(SQLModel, table=True):
    """One version of an experiment's configuration and state, with its diff."""

    __tablename__ = "experiment_revisions"
    __table_args__ = (sa.UniqueConstraint("experiment_key", "version"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    experiment_key: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    version: int
    action: str
    actor: str
    created_at: datetime = _ts()
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    diff: list = Field(sa_column=Column(JSON, nullable=False))


def get_layer(session: Session, key: str) -> LayerRecord | None:
    return session.execute(sa.select(LayerRecord).where(LayerRecord.key == key)).scalar_one_or_none()


def get_experiment(session: Session, key: str, lock: bool = False) -> ExperimentRecord | None:
    query = sa.select(ExperimentRecord).where(ExperimentRecord.key == key)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def layers(session: Session) -> Sequence[LayerRecord]:
    return session.execute(sa.select(LayerRecord).order_by(LayerRecord.key)).scalars().all()


def experiments_in_layer(session: Session, layer_key: str) -> Sequence[ExperimentRecord]:
    return session.execute(sa.select(ExperimentRecord).where(ExperimentRecord.layer_key == layer_key)
                           .order_by(ExperimentRecord.key)).scalars().all()


def experiments_of_flag(session: Session, flag_key: str) -> Sequence[ExperimentRecord]:
    return session.execute(sa.select(ExperimentRecord).where(ExperimentRecord.flag_key == flag_key)
                           .order_by(ExperimentRecord.key)).scalars().all()


def query_experiments(session: Session, *, status: str | None, layer: str | None, flag: str | None,
                      offset: int, limit: int) -> tuple[Sequence[ExperimentRecord], int]:
    query = sa.select(ExperimentRecord)
    for column, value in ((ExperimentRecord.status, status), (ExperimentRecord.layer_key, layer),
                          (ExperimentRecord.flag_key, flag)):
        if value is not None:
            query = query.where(column == value)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(ExperimentRecord.key).offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def snapshot_documents(session: Session) -> tuple[list[dict], list[dict]]:
    """Layer and experiment documents in the form `Snapshot.from_dict` reads."""
    layer_docs = [{"key": r.key, "salt": r.salt} for r in layers(session)]
    rows = session.execute(sa.select(ExperimentRecord).order_by(ExperimentRecord.key)).scalars().all()
    experiment_docs = [{
        "key": r.key, "flag": r.flag_key, "layer": r.layer_key, "status": r.status,
        "ranges": r.ranges,
        "variants": [{k: v[k] for k in ("variant", "weight", "is_control")}
                     for v in r.document.get("variants", [])],
        "allowlist": r.document.get("allowlist", {}), "blocklist": r.document.get("blocklist", []),
        "start_at": r.document.get("start_at"), "end_at": r.document.get("end_at"),
    } for r in rows]
    return layer_docs, experiment_docs


def experiment_revisions(session: Session, key: str, offset: int,
                         limit: int) -> tuple[Sequence[ExperimentRevisionRecord], int]:
    query = sa.select(ExperimentRevisionRecord).where(ExperimentRevisionRecord.experiment_key == key)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(ExperimentRevisionRecord.version.desc())
                           .offset(offset).limit(limit)).scalars().all()
    return rows, int(total)
