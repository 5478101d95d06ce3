"""Metric definition use cases: list, get, create, replace, delete (the model is in model.py)."""
from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy.exc import IntegrityError

from flagship.db import as_utc
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.experiments.model import ACTIVE, Metric, metric_from_dict, metric_to_dict
from flagship.experiments.store import config as store
from flagship.experiments.store.tables import MetricRecord
from flagship.flags.service import check_version
from flagship.runtime import Runtime

# what a metric means; it must not move under an experiment that is collecting data
MEANING = ("event", "kind", "denominator_event")


def metric_view(record: MetricRecord) -> dict[str, Any]:
    """The API form: the definition plus version and timestamps."""
    return {**metric_to_dict(store.metric_of(record)), "version": record.version,
            "created_at": as_utc(record.created_at), "created_by": record.created_by,
            "updated_at": as_utc(record.updated_at), "updated_by": record.updated_by}


def _require(session: Any, key: str, lock: bool = False) -> MetricRecord:
    record = store.get_metric(session, key, lock=lock)
    if record is None:
        raise NotFoundError(f"metric {key!r} not found")
    return record


def list_metrics(runtime: Runtime, page: int = 1, per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    """One page of metrics by key, and the total."""
    with runtime.db.session() as session:
        rows, total = store.query_metrics(session, (page - 1) * per_page, per_page)
        return [metric_view(r) for r in rows], total


def get_metric(runtime: Runtime, key: str) -> dict[str, Any]:
    with runtime.db.session() as session:
        return metric_view(_require(session, key))


def metrics_by_key(runtime: Runtime, keys: list[str] | tuple[str, ...]) -> dict[str, Metric]:
    """The definitions among `keys` that exist."""
    with runtime.db.session() as session:
        return store.metrics_by_key(session, keys)


def _duplicate(key: str) -> ConflictError:
    return ConflictError(f"metric {key!r} already exists", {"key": ["already exists"]})


def create_metric(runtime: Runtime, actor: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    metric = metric_from_dict(doc)
    try:
        with runtime.change(actor) as tx:
            if store.get_metric(tx.session, metric.key) is not None:
                raise _duplicate(metric.key)
            record = MetricRecord(**metric_to_dict(metric), version=1, created_at=tx.now,
                                  created_by=actor, updated_at=tx.now, updated_by=actor)
            tx.session.add(record)
            tx.session.flush()
            tx.audit("metric.create", "metric", record.key, None, metric_to_dict(metric))
    except IntegrityError:  # a concurrent create of the same key won the race
        raise _duplicate(metric.key) from None
    return metric_view(record)


def replace_metric(runtime: Runtime, actor: str, key: str, doc: Mapping[str, Any],
                   expected_version: int | None) -> dict[str, Any]:
    """PUT a definition; its meaning is frozen while a running or paused experiment uses it."""
    if doc.get("key", key) != key:
        raise ValidationError("a metric's key cannot change", field="key")
    metric = metric_from_dict({**doc, "key": key})
    canonical = metric_to_dict(metric)
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        check_version(record.version, expected_version, "metric", key)
        changed = [name for name in MEANING if getattr(record, name) != canonical[name]]
        live = [e for e, status in store.experiments_using(tx.session, key) if status in ACTIVE] if changed else []
        if live:
            raise ConflictError(
                f"metric {key!r} is used by running or paused experiments ({', '.join(live)}): its "
                f"{', '.join(changed)} cannot change while they collect data; create a new metric",
                {**{name: ["used by a live experiment"] for name in changed}, "experiments": live})
        before = metric_to_dict(store.metric_of(record))
        for name, value in canonical.items():
            setattr(record, name, value)
        record.version += 1
        record.updated_at, record.updated_by = tx.now, actor
        tx.audit("metric.update", "metric", key, before, canonical)
        return metric_view(record)


def delete_metric(runtime: Runtime, actor: str, key: str) -> None:
    """Delete a metric no experiment references (finished ones keep it for their results)."""
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        users = [e for e, _ in store.experiments_using(tx.session, key)]
        if users:
            raise ConflictError(f"metric {key!r} is used by experiments: {', '.join(users)}",
                                {"experiments": users})
        tx.audit("metric.delete", "metric", key, metric_to_dict(store.metric_of(record)), None)
        tx.session.delete(record)
