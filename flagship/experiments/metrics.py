"""Metric definitions: the table, the frozen `Metric`, its validation and its use cases."""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Optional

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import Column, Field, SQLModel

from flagship.db import as_utc
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.experiments.store.config import ExperimentRecord
from flagship.flags.model import KEY_PATTERN
from flagship.flags.service import check_version
from flagship.runtime import Runtime

KINDS = ("conversion", "sum", "mean", "count", "ratio")
DIRECTIONS = ("increase", "decrease")
EVENT_MAX = 128
# what a metric means; it must not move under an experiment that is collecting data
# (same states as `service.ACTIVE`, repeated so the service can import this module)
MEANING = ("event", "kind", "denominator_event")
LIVE = ("running", "paused")


def _ts(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=nullable))


class MetricRecord(SQLModel, table=True):
    """A metric definition: which event, aggregated how per unit, and which way is good."""

    __tablename__ = "metrics"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    name: str = ""
    event: str = Field(sa_column=Column(sa.String(128), nullable=False, index=True))
    kind: str
    denominator_event: Optional[str] = Field(default=None, sa_column=Column(sa.String(128), nullable=True))
    direction: str = "increase"
    winsorize_percentile: Optional[float] = None
    description: str = ""
    version: int
    created_at: datetime = _ts()
    created_by: str
    updated_at: datetime = _ts()
    updated_by: str


@dataclass(frozen=True)
class Metric:
    """A metric definition as the analysis reads it.

    `conversion`: the unit did `event` at least once; `sum` / `mean`: of event values per
    unit; `count`: events per unit; `ratio`: sum of `event` over sum of `denominator_event`
    per unit (delta method). `winsorize_percentile` caps per-unit values at that percentile.
    """

    key: str
    name: str
    event: str
    kind: str
    denominator_event: str | None
    direction: str
    winsorize_percentile: float | None
    description: str
    version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


def metric_from_record(record: MetricRecord) -> Metric:
    """The frozen form of a row (UTC restored on SQLite)."""
    return Metric(key=record.key, name=record.name, event=record.event, kind=record.kind,
                  denominator_event=record.denominator_event, direction=record.direction,
                  winsorize_percentile=record.winsorize_percentile, description=record.description,
                  version=record.version, created_at=as_utc(record.created_at),  # type: ignore[arg-type]
                  created_by=record.created_by, updated_at=as_utc(record.updated_at),  # type: ignore[arg-type]
                  updated_by=record.updated_by)


# -- validation (pure) --------------------------------------------------------------------------

def _check_event(value: Any, field: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= EVENT_MAX:
        raise ValidationError(f"must be an event name of 1-{EVENT_MAX} characters", field=field)
    if value.startswith("$"):
        raise ValidationError(f"{value!r}: names starting with '$' are reserved (e.g. $exposure)",
                              field=field)


def _check_winsorize(value: Any, kind: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 50 < value < 100:
        raise ValidationError("must be a percentile above 50 and below 100 (e.g. 99)",
                              field="winsorize_percentile")
    if kind == "conversion":
        raise ValidationError("a conversion metric is 0 or 1 per unit: there is nothing to cap",
                              field="winsorize_percentile")
    if kind == "ratio":
        raise ValidationError("capping a ratio's numerator alone would bias the ratio; winsorize "
                              "sum, mean or count metrics", field="winsorize_percentile")


def validate_metric(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical definition document, or ValidationError naming the field."""
    key = doc.get("key")
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValidationError("must be 1-128 letters, digits, '_', '.' or '-', starting with a "
                              "letter or digit", field="key")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ValidationError(f"must be one of {', '.join(KINDS)}", field="kind")
    _check_event(doc.get("event"), "event")
    denominator = doc.get("denominator_event")
    if kind == "ratio":
        if denominator is None:
            raise ValidationError("a ratio metric needs the event it divides by", field="denominator_event")
        _check_event(denominator, "denominator_event")
        if denominator == doc["event"]:
            raise ValidationError("must differ from 'event' (the ratio would always be 1)",
                                  field="denominator_event")
    elif denominator is not None:
        raise ValidationError(f"only ratio metrics have one, not {kind}", field="denominator_event")
    direction = doc.get("direction") or "increase"
    if direction not in DIRECTIONS:
        raise ValidationError(f"must be one of {', '.join(DIRECTIONS)}", field="direction")
    _check_winsorize(doc.get("winsorize_percentile"), kind)
    return {"key": key, "name": doc.get("name") or key, "event": doc["event"], "kind": kind,
            "denominator_event": denominator, "direction": direction,
            "winsorize_percentile": None if doc.get("winsorize_percentile") is None
            else float(doc["winsorize_percentile"]),
            "description": doc.get("description") or ""}


def _doc(record: MetricRecord) -> dict[str, Any]:
    """The definition as audited (before/after)."""
    return {"key": record.key, "name": record.name, "event": record.event, "kind": record.kind,
            "denominator_event": record.denominator_event, "direction": record.direction,
            "winsorize_percentile": record.winsorize_percentile, "description": record.description}


# -- queries ------------------------------------------------------------------------------------

def _get(session: Session, key: str, lock: bool = False) -> MetricRecord | None:
    query = sa.select(MetricRecord).where(MetricRecord.key == key)
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def _require(session: Session, key: str, lock: bool = False) -> MetricRecord:
    record = _get(session, key, lock=lock)
    if record is None:
        raise NotFoundError(f"metric {key!r} not found")
    return record


def metrics_by_key(session: Session, keys: Collection[str]) -> dict[str, Metric]:
    """The metrics among `keys` that exist (the caller decides whether a missing one is an error)."""
    if not keys:
        return {}
    rows = session.execute(sa.select(MetricRecord).where(MetricRecord.key.in_(list(keys)))).scalars()
    return {r.key: metric_from_record(r) for r in rows}


def experiments_using(session: Session, key: str) -> list[tuple[str, str]]:
    """(experiment key, status) of every experiment naming `key` as a success or guardrail metric."""
    rows = session.execute(sa.select(ExperimentRecord.key, ExperimentRecord.status,
                                     ExperimentRecord.document).order_by(ExperimentRecord.key))
    found = []
    for exp_key, status, document in rows:
        names = set(document.get("success_metrics") or [])
        names.update(g.get("metric") for g in document.get("guardrail_metrics") or [])
        if key in names:
            found.append((exp_key, status))
    return found


# -- use cases ----------------------------------------------------------------------------------

def list_metrics(runtime: Runtime, page: int = 1, per_page: int = 50) -> tuple[list[Metric], int]:
    """One page of metrics by key, and the total."""
    with runtime.db.session() as session:
        total = session.execute(sa.select(sa.func.count()).select_from(MetricRecord)).scalar_one()
        rows = session.execute(sa.select(MetricRecord).order_by(MetricRecord.key)
                               .offset((page - 1) * per_page).limit(per_page)).scalars()
        return [metric_from_record(r) for r in rows], int(total)


def get_metric(runtime: Runtime, key: str) -> Metric:
    with runtime.db.session() as session:
        return metric_from_record(_require(session, key))


def _duplicate(key: str) -> ConflictError:
    return ConflictError(f"metric {key!r} already exists", {"key": ["already exists"]})


def create_metric(runtime: Runtime, actor: str, doc: Mapping[str, Any]) -> Metric:
    canonical = validate_metric(doc)
    try:
        with runtime.change(actor) as tx:
            if _get(tx.session, canonical["key"]) is not None:
                raise _duplicate(canonical["key"])
            record = MetricRecord(**canonical, version=1, created_at=tx.now, created_by=actor,
                                  updated_at=tx.now, updated_by=actor)
            tx.session.add(record)
            tx.session.flush()
            tx.audit("metric.create", "metric", record.key, None, _doc(record))
    except IntegrityError:  # a concurrent create of the same key won the race
        raise _duplicate(canonical["key"]) from None
    return metric_from_record(record)


def replace_metric(runtime: Runtime, actor: str, key: str, doc: Mapping[str, Any],
                   expected_version: int | None) -> Metric:
    """PUT a definition; its meaning is frozen while a running or paused experiment uses it."""
    if doc.get("key", key) != key:
        raise ValidationError("a metric's key cannot change", field="key")
    canonical = validate_metric({**doc, "key": key})
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        check_version(record.version, expected_version, "metric", key)
        changed = [name for name in MEANING if getattr(record, name) != canonical[name]]
        live = [e for e, status in experiments_using(tx.session, key) if status in LIVE] if changed else []
        if live:
            raise ConflictError(
                f"metric {key!r} is used by running or paused experiments ({', '.join(live)}): its "
                f"{', '.join(changed)} cannot change while they collect data; create a new metric",
                {**{name: ["used by a live experiment"] for name in changed}, "experiments": live})
        before = _doc(record)
        for name, value in canonical.items():
            setattr(record, name, value)
        record.version += 1
        record.updated_at, record.updated_by = tx.now, actor
        tx.audit("metric.update", "metric", key, before, _doc(record))
        return metric_from_record(record)


def delete_metric(runtime: Runtime, actor: str, key: str) -> None:
    """Delete a metric no experiment references (finished ones keep it for their results)."""
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        users = [e for e, _ in experiments_using(tx.session, key)]
        if users:
            raise ConflictError(f"metric {key!r} is used by experiments: {', '.join(users)}",
                                {"experiments": users})
        tx.audit("metric.delete", "metric", key, _doc(record), None)
        tx.session.delete(record)
