"""Queries over the experiments domain's configuration: layers, experiments, metrics."""
from __future__ import annotations

from typing import Collection, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from flagship.experiments.model import Metric, load_experiment
from flagship.experiments.store.tables import (ExperimentRecord, ExperimentRevisionRecord,
                                               LayerRecord, MetricRecord)


def get_layer(session: Session, key: str, lock: bool = False) -> LayerRecord | None:
    query = sa.select(LayerRecord).where(LayerRecord.key == key)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def lock_layer(session: Session, key: str) -> None:
    """Row-lock a layer (PostgreSQL): concurrent bucket claims in it queue up."""
    session.execute(sa.select(LayerRecord.id).where(LayerRecord.key == key).with_for_update())


def get_experiment(session: Session, key: str, lock: bool = False) -> ExperimentRecord | None:
    query = sa.select(ExperimentRecord).where(ExperimentRecord.key == key)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def layers(session: Session, environment: str | None = None) -> Sequence[LayerRecord]:
    query = sa.select(LayerRecord).order_by(LayerRecord.key)
    if environment is not None:
        query = query.where(LayerRecord.environment == environment)
    return session.execute(query).scalars().all()


def experiments(session: Session, statuses: Collection[str] | None = None,
                environment: str | None = None) -> Sequence[ExperimentRecord]:
    query = sa.select(ExperimentRecord).order_by(ExperimentRecord.key)
    if statuses is not None:
        query = query.where(ExperimentRecord.status.in_(list(statuses)))
    if environment is not None:
        query = query.where(ExperimentRecord.environment == environment)
    return session.execute(query).scalars().all()


def experiments_in_layer(session: Session, layer_key: str) -> Sequence[ExperimentRecord]:
    return session.execute(sa.select(ExperimentRecord).where(ExperimentRecord.layer_key == layer_key)
                           .order_by(ExperimentRecord.key)).scalars().all()


def experiments_of_flag(session: Session, flag_key: str) -> Sequence[ExperimentRecord]:
    return session.execute(sa.select(ExperimentRecord).where(ExperimentRecord.flag_key == flag_key)
                           .order_by(ExperimentRecord.key)).scalars().all()


def query_experiments(session: Session, *, environment: str | None, status: str | None,
                      layer: str | None, flag: str | None, offset: int,
                      limit: int) -> tuple[Sequence[ExperimentRecord], int]:
    query = sa.select(ExperimentRecord)
    for column, value in ((ExperimentRecord.environment, environment), (ExperimentRecord.status, status),
                          (ExperimentRecord.layer_key, layer), (ExperimentRecord.flag_key, flag)):
        if value is not None:
            query = query.where(column == value)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(ExperimentRecord.key).offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def snapshot_documents(session: Session, environment: str) -> tuple[list[dict], list[dict]]:
    """An environment's layer and experiment documents in the form `Snapshot.from_dict` reads."""
    layer_docs = [{"key": r.key, "salt": r.salt} for r in layers(session, environment)]
    experiment_docs = []
    for r in experiments(session, environment=environment):
        experiment = load_experiment(r.document)
        experiment_docs.append({
            "key": r.key, "flag": r.flag_key, "layer": r.layer_key, "status": r.status,
            "ranges": r.ranges, "salt": experiment.salt, "epoch": len(r.epochs or []) or 1,
            "variants": [{"variant": v.name, "weight": v.weight, "is_control": v.is_control}
                         for v in experiment.variants],
            "allowlist": dict(experiment.allowlist), "blocklist": list(experiment.blocklist),
            "start_at": r.document.get("start_at"), "end_at": r.document.get("end_at")})
    return layer_docs, experiment_docs


def experiment_revisions(session: Session, key: str, offset: int,
                         limit: int) -> tuple[Sequence[ExperimentRevisionRecord], int]:
    query = sa.select(ExperimentRevisionRecord).where(ExperimentRevisionRecord.experiment_key == key)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(ExperimentRevisionRecord.version.desc())
                           .offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def experiment_revision(session: Session, key: str, version: int) -> ExperimentRevisionRecord | None:
    return session.execute(sa.select(ExperimentRevisionRecord).where(
        ExperimentRevisionRecord.experiment_key == key,
        ExperimentRevisionRecord.version == version)).scalar_one_or_none()


def last_experiment_version(session: Session, key: str) -> int:
    value = session.execute(sa.select(sa.func.max(ExperimentRevisionRecord.version))
                            .where(ExperimentRevisionRecord.experiment_key == key)).scalar()
    return int(value or 0)


# -- metrics ------------------------------------------------------------------------------------

def metric_of(record: MetricRecord) -> Metric:
    """The definition a row stores."""
    return Metric(key=record.key, name=record.name, event=record.event, kind=record.kind,
                  denominator_event=record.denominator_event, direction=record.direction,
                  winsorize_percentile=record.winsorize_percentile, description=record.description)


def get_metric(session: Session, key: str, lock: bool = False) -> MetricRecord | None:
    query = sa.select(MetricRecord).where(MetricRecord.key == key)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def query_metrics(session: Session, offset: int, limit: int) -> tuple[Sequence[MetricRecord], int]:
    total = session.execute(sa.select(sa.func.count()).select_from(MetricRecord)).scalar_one()
    rows = session.execute(sa.select(MetricRecord).order_by(MetricRecord.key)
                           .offset(offset).limit(limit)).scalars().all()
    return rows, int(total)


def metrics_by_key(session: Session | sa.Connection, keys: Collection[str]) -> dict[str, Metric]:
    """The metrics among `keys` that exist (the caller decides whether a missing one is an error)."""
    if not keys:
        return {}
    table = MetricRecord.__table__
    rows = session.execute(sa.select(table).where(table.c.key.in_(list(keys))))
    return {r.key: metric_of(r) for r in rows}


def existing_metric_keys(session: Session, keys: Collection[str]) -> set[str]:
    """The keys among `keys` that exist, share-locked on PostgreSQL so that a concurrent
    delete of one waits for the caller's transaction and then sees the reference."""
    query = sa.select(MetricRecord.key).where(MetricRecord.key.in_(list(keys)))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    return set(session.execute(query).scalars())


def experiments_using(session: Session, key: str) -> list[tuple[str, str]]:
    """(experiment key, status) of every experiment naming `key` as a success or guardrail metric."""
    found = []
    for record in experiments(session):
        if key in load_experiment(record.document).metric_keys:
            found.append((record.key, record.status))
    return found
