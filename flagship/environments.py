"""Environment use cases: list, create (optionally copying another environment's
targeting and segments), update, delete. Above both domains: deleting one must know
whether experiments live in it."""
from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flagship.db import as_utc, bump_snapshot_revision
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.experiments.store.tables import ExperimentRecord, LayerRecord
from flagship.flags import store as flag_store
from flagship.flags.model import KEY_PATTERN
from flagship.flags.service import check_version, insert_other_environment
from flagship.flags.store import EnvironmentRecord, FlagRecord, SegmentRecord
from flagship.runtime import Runtime, Tx
from flagship.store import ApiKeyRecord

COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
FIELDS = ("name", "colour", "requires_approval", "position")


def environment_view(record: EnvironmentRecord) -> dict[str, Any]:
    return {"key": record.key, "name": record.name, "colour": record.colour,
            "requires_approval": record.requires_approval, "position": record.position,
            "version": record.version, "created_at": as_utc(record.created_at).isoformat(),
            "updated_at": as_utc(record.updated_at).isoformat(), "updated_by": record.updated_by}


def _doc(record: EnvironmentRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in ("key", *FIELDS)}


def _check(doc: dict[str, Any]) -> None:
    if "colour" in doc and not COLOUR.fullmatch(str(doc["colour"])):
        raise ValidationError("must be a colour like #1a7f37", field="colour")
    if "name" in doc and not 1 <= len(doc["name"]) <= 128:
        raise ValidationError("must be 1 to 128 characters", field="name")


def _require(session: Any, key: str, lock: bool = False) -> EnvironmentRecord:
    record = flag_store.get_environment(session, key, lock=lock)
    if record is None:
        raise NotFoundError(f"environment {key!r} not found")
    return record


def list_environments(runtime: Runtime) -> list[dict[str, Any]]:
    """Every environment, in display order."""
    with runtime.db.session() as session:
        return [environment_view(r) for r in flag_store.environments(session)]


def get_environment(runtime: Runtime, key: str) -> dict[str, Any]:
    with runtime.db.session() as session:
        return environment_view(_require(session, key))


def _populate(tx: Tx, runtime: Runtime, key: str, copy_from: str | None) -> None:
    """Give the new environment every flag: a copy of `copy_from`'s targeting and segments,
    or each flag switched off without rules."""
    if copy_from is not None:
        _require(tx.session, copy_from)
        for segment in flag_store.segments_in(tx.session, copy_from):
            tx.session.add(SegmentRecord(key=segment.key, environment=key, version=1,
                                         document=segment.document, created_at=tx.now,
                                         updated_at=tx.now, updated_by=tx.actor))
        tx.session.flush()
    source = copy_from or runtime.config["DEFAULT_ENVIRONMENT"]
    for flag in flag_store.flags_in(tx.session, source):
        insert_other_environment(tx, runtime, flag.document, key, copy=copy_from is not None)


def create_environment(runtime: Runtime, actor: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A new environment with every flag (see `_populate`)."""
    key = doc.get("key")
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValidationError("must be 1-128 letters, digits, '_', '.' or '-'", field="key")
    _check(doc)
    try:
        with runtime.change(actor) as tx:
            if flag_store.get_environment(tx.session, key) is not None:
                raise ConflictError(f"environment {key!r} already exists", {"key": ["already exists"]})
            position = doc.get("position")
            if position is None:
                position = len(flag_store.environments(tx.session))
            record = EnvironmentRecord(key=key, name=doc.get("name") or key,
                                       colour=doc.get("colour") or "#57606a",
                                       requires_approval=bool(doc.get("requires_approval", False)),
                                       position=position, version=1, created_at=tx.now,
                                       updated_at=tx.now, updated_by=actor)
            tx.session.add(record)
            tx.session.flush()
            _populate(tx, runtime, key, doc.get("copy_from"))
            tx.audit("environment.create", "environment", key, None,
                     {**_doc(record), "copy_from": doc.get("copy_from")}, environment=key)
            bump_snapshot_revision(tx.session)
    except IntegrityError:
        raise ConflictError(f"environment {key!r} already exists", {"key": ["already exists"]}) from None
    return environment_view(record)


def update_environment(runtime: Runtime, actor: str, key: str, patch: dict[str, Any],
                       expected: int | None) -> dict[str, Any]:
    """Rename, recolour, reorder; `requires_approval` is recorded for approval workflows."""
    if patch.get("key", key) != key:
        raise ValidationError("an environment's key cannot change", field="key")
    _check(patch)
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        check_version(record.version, expected, "environment", key)
        before = _doc(record)
        for name in FIELDS:
            if name in patch:
                setattr(record, name, patch[name])
        record.version += 1
        record.updated_at, record.updated_by = tx.now, actor
        tx.audit("environment.update", "environment", key, before, _doc(record), environment=key)
        return environment_view(record)


def _count(session: Any, model: Any, key: str) -> list[str]:
    return list(session.execute(sa.select(model.key).where(model.environment == key)).scalars())


def delete_environment(runtime: Runtime, actor: str, key: str) -> None:
    """Delete an environment and its flag targeting and segments (their revisions and audit
    records stay); refused for the default environment, or while layers, experiments or
    live SDK keys belong to it."""
    if key == runtime.config["DEFAULT_ENVIRONMENT"]:
        raise ConflictError(f"environment {key!r} is the default environment (FLAGSHIP_DEFAULT_ENVIRONMENT)")
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        for model, what in ((LayerRecord, "layers"), (ExperimentRecord, "experiments")):
            held = _count(tx.session, model, key)
            if held:
                raise ConflictError(f"environment {key!r} holds {what}: {', '.join(held)}", {what: held})
        keys = list(tx.session.execute(sa.select(ApiKeyRecord.name).where(
            ApiKeyRecord.environment == key, ApiKeyRecord.revoked_at.is_(None))).scalars())
        if keys:
            raise ConflictError(f"environment {key!r} has live API keys: {', '.join(keys)}; revoke "
                                "them first", {"keys": keys})
        for model in (FlagRecord, SegmentRecord):
            tx.session.execute(sa.delete(model).where(model.environment == key))
        tx.audit("environment.delete", "environment", key, _doc(record), None, environment=key)
        tx.session.delete(record)
        bump_snapshot_revision(tx.session)
