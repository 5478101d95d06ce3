"""Layer use cases: the traffic layers experiments claim buckets in (seed 004 试验层)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flagship.db import as_utc, bump_snapshot_revision
from flagship.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from flagship.experiments import allocation
from flagship.experiments.model import ACTIVE
from flagship.experiments.store import config as store
from flagship.flags.model import KEY_PATTERN
from flagship.experiments.store.tables import ExperimentRecord, LayerRecord
from flagship.flags import service as flags
from flagship.runtime import Runtime


def default_salt(key: str) -> str:
    """A new layer's salt: its own namespace, never a flag's or an experiment's."""
    return f"layer:{key}"


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


def layer_view(record: LayerRecord, experiments: list[ExperimentRecord]) -> dict[str, Any]:
    """A layer with its allocation map: who owns which buckets, and what is free."""
    active = [e for e in experiments if e.status in ACTIVE]
    allocations = [{"experiment": e.key, "status": e.status, "ranges": e.ranges,
                    "percentage": allocation.size(e.ranges) / 100} for e in active]
    free = allocation.free_ranges([e.ranges for e in active])
    return {"key": record.key, "environment": record.environment, "name": record.name,
            "description": record.description, "salt": record.salt, "version": record.version, "created_at": _iso(record.created_at),
            "updated_at": _iso(record.updated_at), "updated_by": record.updated_by,
            "allocations": allocations, "free_ranges": [list(r) for r in free],
            "free_percentage": allocation.size(free) / 100,
            "experiments": [{"key": e.key, "status": e.status} for e in experiments]}


def _layer_doc(record: LayerRecord) -> dict[str, Any]:
    return {"key": record.key, "name": record.name, "description": record.description,
            "salt": record.salt}


def _require_layer(session: Session, key: str, bound: str | None = None) -> LayerRecord:
    record = store.get_layer(session, key)
    if record is None:
        raise NotFoundError(f"layer {key!r} not found")
    if bound is not None and record.environment != bound:  # a key bound elsewhere
        raise PermissionDeniedError(f"this key is bound to environment {bound!r}; layer "
                                    f"{key!r} is in {record.environment!r}")
    return record


def list_layers(runtime: Runtime, environment: str | None = None) -> list[dict[str, Any]]:
    """Every layer (of one environment), with its allocation map."""
    with runtime.db.session() as session:
        return [layer_view(r, list(store.experiments_in_layer(session, r.key)))
                for r in store.layers(session, environment)]


def get_layer(runtime: Runtime, key: str, bound: str | None = None) -> dict[str, Any]:
    with runtime.db.session() as session:
        record = _require_layer(session, key, bound)
        return layer_view(record, list(store.experiments_in_layer(session, key)))


def _check_new_layer(doc: dict[str, Any]) -> None:
    """What the API's schema checks, for every front door (the UI's form had a 500 on an
    empty key and stored keys that no URL could reach)."""
    key = doc.get("key")
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValidationError("must be 1-128 letters, digits, '_', '.' or '-'", field="key")
    for name, limit in (("name", 256), ("description", 10_000), ("salt", 128)):
        value = doc.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise ValidationError(f"must be text of at most {limit:,} characters", field=name)


def create_layer(runtime: Runtime, actor: str, doc: dict[str, Any],
                 environment: str | None = None) -> dict[str, Any]:
    """A layer in `environment` (layer keys are unique across environments)."""
    _check_new_layer(doc)
    environment = environment or runtime.config["DEFAULT_ENVIRONMENT"]
    try:
        with runtime.change(actor) as tx:
            flags.require_environment(tx.session, environment)
            if store.get_layer(tx.session, doc["key"]) is not None:
                raise ConflictError(f"layer {doc['key']!r} already exists", {"key": ["already exists"]})
            record = LayerRecord(key=doc["key"], environment=environment, name=doc.get("name") or doc["key"],
                                 description=doc.get("description", ""),
                                 salt=doc.get("salt") or default_salt(doc["key"]), version=1,
                                 created_at=tx.now, updated_at=tx.now, updated_by=actor)
            flags.claim_salts(tx, "layer", record.key, set(), {record.salt})
            tx.session.add(record)
            tx.session.flush()
            tx.audit("layer.create", "layer", record.key, None, _layer_doc(record), environment=environment)
            bump_snapshot_revision(tx.session)
    except IntegrityError:
        raise ConflictError(f"layer {doc['key']!r} already exists", {"key": ["already exists"]}) from None
    return layer_view(record, [])


def update_layer(runtime: Runtime, actor: str, key: str, patch: dict[str, Any],
                 expected: int | None, bound: str | None = None) -> dict[str, Any]:
    """Change name/description; the salt only while no experiment ever used the layer."""
    with runtime.change(actor) as tx:
        record = _require_layer(tx.session, key, bound)
        flags.check_version(record.version, expected, "layer", key)
        experiments = list(store.experiments_in_layer(tx.session, key))
        if "salt" in patch and patch["salt"] != record.salt and any(
                e.status != "draft" for e in experiments):
            raise ConflictError("the salt of a layer that has run experiments cannot change: "
                                "it would reshuffle every unit", {"salt": ["in use"]})
        before = _layer_doc(record)
        if "salt" in patch and patch["salt"] != record.salt:
            flags.claim_salts(tx, "layer", key, {record.salt}, {patch["salt"]})
        for name in ("name", "description", "salt"):
            if name in patch:
                setattr(record, name, patch[name])
        record.version += 1
        record.updated_at, record.updated_by = tx.now, actor
        tx.audit("layer.update", "layer", key, before, _layer_doc(record), environment=record.environment)
        bump_snapshot_revision(tx.session)
        return layer_view(record, experiments)


def delete_layer(runtime: Runtime, actor: str, key: str, bound: str | None = None) -> None:
    with runtime.change(actor) as tx:
        record = _require_layer(tx.session, key, bound)
        experiments = list(store.experiments_in_layer(tx.session, key))
        active = [e.key for e in experiments if e.status in ACTIVE]
        if active:
            raise ConflictError(f"layer {key!r} holds active experiments: {', '.join(active)}",
                                {"experiments": active})
        drafts = [e.key for e in experiments if e.status == "draft"]
        if drafts:
            raise ConflictError(f"layer {key!r} holds draft experiments: {', '.join(drafts)}; "
                                "move or delete them first", {"experiments": drafts})
        flags.claim_salts(tx, "layer", key, {record.salt}, set())
        tx.audit("layer.delete", "layer", key, _layer_doc(record), None, environment=record.environment)
        tx.session.delete(record)
        bump_snapshot_revision(tx.session)
