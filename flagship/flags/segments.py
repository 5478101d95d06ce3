"""Segment use cases: reusable audiences, one set per environment."""
from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flagship.db import bump_snapshot_revision
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.flags import store
from flagship.flags.model import segment_from_dict, segment_to_dict
from flagship.flags.service import check_version, require_environment, segment_view
from flagship.flags.store import SegmentRecord
from flagship.runtime import Runtime, Tx


def _require_segment(session: Session, key: str, environment: str) -> SegmentRecord:
    record = store.get_segment(session, key, environment)
    if record is None:
        raise NotFoundError(f"segment {key!r} not found in environment {environment!r}")
    return record


def _canonical_segment(runtime: Runtime, doc: dict[str, Any]) -> dict[str, Any]:
    return segment_to_dict(segment_from_dict(doc, runtime.operators))


def list_segments(runtime: Runtime, environment: str) -> list[dict[str, Any]]:
    """Every segment of an environment, by key."""
    with runtime.db.session() as session:
        require_environment(session, environment)
        return [segment_view(record) for record in store.segments_in(session, environment)]


def get_segment(runtime: Runtime, key: str, environment: str) -> dict[str, Any]:
    """One segment, or NotFoundError."""
    with runtime.db.session() as session:
        return segment_view(_require_segment(session, key, environment))


def insert_segment(tx: Tx, runtime: Runtime, doc: dict[str, Any], environment: str) -> SegmentRecord:
    """Validate and add a segment inside the caller's transaction."""
    canonical = _canonical_segment(runtime, doc)
    key = canonical["key"]
    if store.get_segment(tx.session, key, environment) is not None:
        raise ConflictError(f"segment {key!r} already exists in environment {environment!r}",
                            {"key": ["already exists"]})
    record = SegmentRecord(key=key, environment=environment, version=1, document=canonical,
                           created_at=tx.now, updated_at=tx.now, updated_by=tx.actor)
    tx.session.add(record)
    tx.audit("segment.create", "segment", key, None, canonical, environment=environment)
    bump_snapshot_revision(tx.session)
    tx.session.flush()
    return record


def create_segment(runtime: Runtime, actor: str, doc: dict[str, Any], environment: str) -> dict[str, Any]:
    """Validate and store a new segment in `environment`."""
    try:
        with runtime.change(actor) as tx:
            require_environment(tx.session, environment)
            record = insert_segment(tx, runtime, doc, environment)
    except IntegrityError:
        raise ConflictError(f"segment {doc.get('key')!r} already exists",
                            {"key": ["already exists"]}) from None
    return segment_view(record)


def replace_segment(runtime: Runtime, actor: str, key: str, doc: dict[str, Any],
                    expected: int | None, environment: str) -> dict[str, Any]:
    """Replace a segment's document; every flag of the environment using it sees the change."""
    with runtime.change(actor) as tx:
        record = _require_segment(tx.session, key, environment)
        check_version(record.version, expected, "segment", key)
        if doc.get("key", key) != key:
            raise ValidationError("a segment's key cannot change", field="key")
        canonical = _canonical_segment(runtime, {**doc, "key": key})
        before = record.document
        if not store.compare_and_set(tx.session, record, record.version,
                                     {"document": canonical, "updated_at": tx.now, "updated_by": actor}):
            raise ConflictError(f"segment {key!r} was changed by someone else: reload it")
        tx.audit("segment.update", "segment", key, before, canonical, environment=environment)
        bump_snapshot_revision(tx.session)
        tx.session.expire(record)
        return segment_view(record)


def flags_using_segment(session: Session, key: str, environment: str) -> list[str]:
    """Keys of the environment's flags whose rules reference segment `key`."""
    flags, _ = store.all_documents(session, environment)
    return [doc["key"] for doc in flags if key in referenced_segments(doc)]


def referenced_segments(doc: dict[str, Any]) -> set[str]:
    """Segment keys a flag document's rules refer to."""
    found: set[str] = set()
    for rule in doc.get("rules", []):
        found.update(c["segment"] for c in _conditions(rule) if "segment" in c)
    return found


def _conditions(rule: dict[str, Any]) -> Iterable[dict[str, Any]]:
    return [c for c in rule.get("conditions", []) if isinstance(c, dict)]


def delete_segment(runtime: Runtime, actor: str, key: str, expected: int | None = None,
                   environment: str = "production") -> None:
    """Delete a segment no flag of its environment uses (else 409 naming the flags)."""
    with runtime.change(actor) as tx:
        record = _require_segment(tx.session, key, environment)
        check_version(record.version, expected, "segment", key)
        users = flags_using_segment(tx.session, key, environment)
        if users:
            raise ConflictError(f"segment {key!r} is used by flags: {', '.join(users)}",
                                {"flags": users})
        tx.audit("segment.delete", "segment", key, record.document, None, environment=environment)
        tx.session.delete(record)
        bump_snapshot_revision(tx.session)
