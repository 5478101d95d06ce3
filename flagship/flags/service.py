"""Flag and segment use cases: validation, versioned writes, revisions, audit, snapshot."""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flagship.db import as_utc, bump_snapshot_revision
from flagship.diff import json_diff
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.flags import store
from flagship.flags.model import flag_from_dict, flag_to_dict, segment_from_dict, segment_to_dict
from flagship.flags.store import FlagRecord, FlagRevisionRecord, SegmentRecord
from flagship.runtime import Runtime, Tx


def _iso(value: Any) -> str:
    return as_utc(value).isoformat()


def flag_view(record: FlagRecord) -> dict[str, Any]:
    """The API form of a flag: its document plus version and timestamps."""
    return {**record.document, "version": record.version,
            "created_at": _iso(record.created_at), "created_by": record.created_by,
            "updated_at": _iso(record.updated_at), "updated_by": record.updated_by}


def segment_view(record: SegmentRecord) -> dict[str, Any]:
    """The API form of a segment."""
    return {**record.document, "version": record.version, "created_at": _iso(record.created_at),
            "updated_at": _iso(record.updated_at), "updated_by": record.updated_by}


def revision_view(record: FlagRevisionRecord) -> dict[str, Any]:
    """The API form of a flag revision."""
    return {"version": record.version, "action": record.action, "actor": record.actor,
            "created_at": _iso(record.created_at), "document": record.document, "diff": record.diff}


def _canonical_flag(runtime: Runtime, session: Session, doc: dict[str, Any]) -> dict[str, Any]:
    flag = flag_from_dict(doc, runtime.operators, store.segment_keys(session))
    return flag_to_dict(flag)


def _require_flag(session: Session, key: str) -> FlagRecord:
    record = store.get_flag(session, key)
    if record is None:
        raise NotFoundError(f"flag {key!r} not found")
    return record


def check_version(current: int, expected: int | None, kind: str, key: str) -> None:
    if expected is not None and expected != current:
        raise ConflictError(
            f"{kind} {key!r} is at version {current}, not {expected}: reload it and apply "
            "your change again", {"version": [f"current version is {current}"]})


def flag_salts(doc: dict[str, Any] | None) -> set[str]:
    """The salts a flag document hashes with: its rollouts' and its release rules'."""
    if not doc:
        return set()
    salt = doc.get("salt") or doc["key"]
    salts = {salt}
    for rule in doc.get("rules", []):
        if rule.get("kind") == "release":
            salts.add((rule.get("params") or {}).get("salt") or f"{salt}:release")
    return salts


def claim_salts(tx: Tx, owner_type: str, owner_key: str, before: set[str], after: set[str]) -> None:
    """Refuse a new salt another object hashes with (409 naming it); record the change."""
    clash = store.claim_salts(tx.session, owner_type, owner_key, after - before, before - after)
    if clash is not None:
        salt, other_type, other_key = clash
        raise ConflictError(f"salt {salt!r} is already used by {other_type} {other_key!r}: units "
                            "would split along the same line in both; choose another salt",
                            {"salt": [f"used by {other_type} {other_key}"]})


def _record_revision(tx: Tx, key: str, version: int, action: str,
                     before: dict | None, after: dict) -> None:
    claim_salts(tx, "flag", key, flag_salts(before), flag_salts(after))
    tx.session.add(FlagRevisionRecord(
        flag_key=key, version=version, action=action, actor=tx.actor, created_at=tx.now,
        document=after, diff=json_diff(before or {}, after)))
    tx.audit(f"flag.{action}", "flag", key, before, after)
    bump_snapshot_revision(tx.session)


def _flag_values(canonical: dict[str, Any], tx: Tx) -> dict[str, Any]:
    tags = canonical.get("tags") or []
    return {"document": canonical, "enabled": canonical["enabled"],
            "tags": f",{','.join(tags)}," if tags else "",
            "description": canonical.get("description", ""),
            "updated_at": tx.now, "updated_by": tx.actor}


# -- flags -------------------------------------------------------------------------

def list_flags(runtime: Runtime, *, tag: str | None = None, search: str | None = None,
               page: int = 1, per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    """One page of flags (by key) and the total count."""
    with runtime.db.session() as session:
        rows, total = store.query_flags(session, tag=tag, search=search,
                                        offset=(page - 1) * per_page, limit=per_page)
        return [flag_view(row) for row in rows], total


def get_flag(runtime: Runtime, key: str) -> dict[str, Any]:
    """One flag, or NotFoundError."""
    with runtime.db.session() as session:
        return flag_view(_require_flag(session, key))


def insert_flag(tx: Tx, runtime: Runtime, doc: dict[str, Any], managed: bool = False) -> FlagRecord:
    """Validate and add a flag inside the caller's transaction."""
    canonical = _canonical_flag(runtime, tx.session, doc)
    if not managed:
        _guard_managed(None, canonical)
    key = canonical["key"]
    if store.get_flag(tx.session, key) is not None:
        raise ConflictError(f"flag {key!r} already exists", {"key": ["already exists"]})
    version = store.last_revision_version(tx.session, key) + 1
    record = FlagRecord(key=key, version=version, created_at=tx.now, created_by=tx.actor,
                        **_flag_values(canonical, tx))
    tx.session.add(record)
    _record_revision(tx, key, version, "create", None, canonical)
    tx.session.flush()
    return record


def rewrite_flag(tx: Tx, runtime: Runtime, key: str,
                 change: Callable[[dict[str, Any]], dict[str, Any]], action: str) -> FlagRecord:
    """Apply `change` to a flag's document inside the caller's transaction (a new revision)."""
    record = _require_flag(tx.session, key)
    return _update_flag(tx, runtime, record, change(copy.deepcopy(record.document)), None,
                        action, managed=True)


def create_flag(runtime: Runtime, actor: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Validate and store a new flag at the next version of its key's history."""
    try:
        with runtime.change(actor) as tx:
            record = insert_flag(tx, runtime, doc)
    except IntegrityError:  # a concurrent create of the same key won the race
        raise ConflictError(f"flag {doc.get('key')!r} already exists",
                            {"key": ["already exists"]}) from None
    return flag_view(record)


MANAGED_KINDS = ("experiment",)  # rules the experiments service owns


def _managed_rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((r for r in doc.get("rules", []) if r.get("kind") in MANAGED_KINDS),
                  key=lambda r: r["id"])


def _guard_managed(before: dict[str, Any] | None, after: dict[str, Any]) -> None:
    """Experiment rules change only through /experiments (they may be moved, not edited)."""
    if _managed_rules(before or {}) != _managed_rules(after):
        index = next((i for i, r in enumerate(after.get("rules", []))
                      if r.get("kind") in MANAGED_KINDS), None)
        field = f"rules.{index}" if index is not None else "rules"
        raise ValidationError("experiment rules are managed through /api/v1/experiments; "
                              "they can be reordered here but not added, edited or removed",
                              field=field)


def _update_flag(tx: Tx, runtime: Runtime, record: FlagRecord, doc: dict[str, Any],
                 expected: int | None, action: str, managed: bool = False) -> FlagRecord:
    check_version(record.version, expected, "flag", record.key)
    if doc.get("key", record.key) != record.key:
        raise ValidationError("a flag's key cannot change (create a new flag instead)", field="key")
    canonical = _canonical_flag(runtime, tx.session, {**doc, "key": record.key})
    if not managed:
        _guard_managed(record.document, canonical)
    before, version = record.document, record.version + 1
    if not store.compare_and_set(tx.session, FlagRecord, record.key, record.version,
                                 _flag_values(canonical, tx)):
        raise ConflictError(f"flag {record.key!r} was changed by someone else: reload it")
    _record_revision(tx, record.key, version, action, before, canonical)
    tx.session.expire(record)
    return record


def replace_flag(runtime: Runtime, actor: str, key: str, doc: dict[str, Any],
                 expected: int | None) -> dict[str, Any]:
    """PUT: the document replaces the flag (fields left out take their defaults)."""
    with runtime.change(actor) as tx:
        record = _update_flag(tx, runtime, _require_flag(tx.session, key), doc, expected, "update")
        return flag_view(record)


def patch_flag(runtime: Runtime, actor: str, key: str, patch: dict[str, Any],
               expected: int | None) -> dict[str, Any]:
    """PATCH: top-level fields in `patch` replace the flag's; the rest stay."""
    with runtime.change(actor) as tx:
        record = _require_flag(tx.session, key)
        merged = {**record.document, **patch}
        return flag_view(_update_flag(tx, runtime, record, merged, expected, "update"))


def set_enabled(runtime: Runtime, actor: str, key: str, enabled: bool,
                expected: int | None = None) -> dict[str, Any]:
    """The kill switch. Needs no version: in an incident it must just work."""
    with runtime.change(actor) as tx:
        record = _require_flag(tx.session, key)
        if record.document.get("enabled") == enabled:
            check_version(record.version, expected, "flag", key)
            return flag_view(record)
        doc = {**record.document, "enabled": enabled}
        action = "enable" if enabled else "disable"
        return flag_view(_update_flag(tx, runtime, record, doc, expected, action))


def delete_flag(runtime: Runtime, actor: str, key: str, expected: int | None = None) -> None:
    """Delete a flag; its revisions stay, and a re-created key continues the numbering."""
    with runtime.change(actor) as tx:
        record = _require_flag(tx.session, key)
        check_version(record.version, expected, "flag", key)
        managed = [r["params"]["experiment"] for r in _managed_rules(record.document)]
        if managed:
            raise ConflictError(f"flag {key!r} is used by experiments: {', '.join(managed)}; "
                                "delete them first", {"experiments": managed})
        before = record.document
        tx.session.delete(record)
        claim_salts(tx, "flag", key, flag_salts(before), set())
        tx.session.add(FlagRevisionRecord(
            flag_key=key, version=record.version + 1, action="delete", actor=actor,
            created_at=tx.now, document=before, diff=json_diff(before, {})))
        tx.audit("flag.delete", "flag", key, before, None)
        bump_snapshot_revision(tx.session)


def list_revisions(runtime: Runtime, key: str, page: int = 1,
                   per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    """A flag's revisions, newest first (also for a deleted flag)."""
    with runtime.db.session() as session:
        rows, total = store.revisions(session, key, (page - 1) * per_page, per_page)
        if total == 0:
            raise NotFoundError(f"flag {key!r} has no revisions")
        return [revision_view(row) for row in rows], total


def restore_revision(runtime: Runtime, actor: str, key: str, version: int,
                     expected: int | None = None) -> dict[str, Any]:
    """Make revision `version` the current document (as a new revision)."""
    with runtime.change(actor) as tx:
        old = store.revision(tx.session, key, version)
        if old is None:
            raise NotFoundError(f"flag {key!r} has no revision {version}")
        record = store.get_flag(tx.session, key)
        if record is not None:
            return flag_view(_update_flag(tx, runtime, record, old.document, expected, "restore"))
        canonical = _canonical_flag(runtime, tx.session, old.document)
        new_version = store.last_revision_version(tx.session, key) + 1
        record = FlagRecord(key=key, version=new_version, created_at=tx.now, created_by=actor,
                            **_flag_values(canonical, tx))
        tx.session.add(record)
        _record_revision(tx, key, new_version, "restore", None, canonical)
        tx.session.flush()
        return flag_view(record)


# -- segments ----------------------------------------------------------------------

def _require_segment(session: Session, key: str) -> SegmentRecord:
    record = store.get_segment(session, key)
    if record is None:
        raise NotFoundError(f"segment {key!r} not found")
    return record


def _canonical_segment(runtime: Runtime, doc: dict[str, Any]) -> dict[str, Any]:
    return segment_to_dict(segment_from_dict(doc, runtime.operators))


def list_segments(runtime: Runtime) -> list[dict[str, Any]]:
    """Every segment, by key."""
    with runtime.db.session() as session:
        _, segments = store.all_documents(session)
        records = [store.get_segment(session, doc["key"]) for doc in segments]
        return [segment_view(record) for record in records if record is not None]


def get_segment(runtime: Runtime, key: str) -> dict[str, Any]:
    """One segment, or NotFoundError."""
    with runtime.db.session() as session:
        return segment_view(_require_segment(session, key))


def create_segment(runtime: Runtime, actor: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Validate and store a new segment."""
    try:
        with runtime.change(actor) as tx:
            canonical = _canonical_segment(runtime, doc)
            key = canonical["key"]
            if store.get_segment(tx.session, key) is not None:
                raise ConflictError(f"segment {key!r} already exists", {"key": ["already exists"]})
            record = SegmentRecord(key=key, version=1, document=canonical, created_at=tx.now,
                                   updated_at=tx.now, updated_by=actor)
            tx.session.add(record)
            tx.audit("segment.create", "segment", key, None, canonical)
            bump_snapshot_revision(tx.session)
            tx.session.flush()
    except IntegrityError:
        raise ConflictError(f"segment {doc.get('key')!r} already exists",
                            {"key": ["already exists"]}) from None
    return segment_view(record)


def replace_segment(runtime: Runtime, actor: str, key: str, doc: dict[str, Any],
                    expected: int | None) -> dict[str, Any]:
    """Replace a segment's document; every flag using it sees the change."""
    with runtime.change(actor) as tx:
        record = _require_segment(tx.session, key)
        check_version(record.version, expected, "segment", key)
        if doc.get("key", key) != key:
            raise ValidationError("a segment's key cannot change", field="key")
        canonical = _canonical_segment(runtime, {**doc, "key": key})
        before = record.document
        if not store.compare_and_set(tx.session, SegmentRecord, key, record.version,
                                     {"document": canonical, "updated_at": tx.now,
                                      "updated_by": actor}):
            raise ConflictError(f"segment {key!r} was changed by someone else: reload it")
        tx.audit("segment.update", "segment", key, before, canonical)
        bump_snapshot_revision(tx.session)
        tx.session.expire(record)
        return segment_view(record)


def flags_using_segment(session: Session, key: str) -> list[str]:
    """Keys of the flags whose rules reference segment `key`."""
    flags, _ = store.all_documents(session)
    return [doc["key"] for doc in flags if key in referenced_segments(doc)]


def referenced_segments(doc: dict[str, Any]) -> set[str]:
    """Segment keys a flag document's rules refer to."""
    found: set[str] = set()
    for rule in doc.get("rules", []):
        found.update(c["segment"] for c in _conditions(rule) if "segment" in c)
    return found


def _conditions(rule: dict[str, Any]) -> Iterable[dict[str, Any]]:
    return [c for c in rule.get("conditions", []) if isinstance(c, dict)]


def delete_segment(runtime: Runtime, actor: str, key: str, expected: int | None = None) -> None:
    """Delete a segment no flag uses (else 409 naming the flags)."""
    with runtime.change(actor) as tx:
        record = _require_segment(tx.session, key)
        check_version(record.version, expected, "segment", key)
        users = flags_using_segment(tx.session, key)
        if users:
            raise ConflictError(f"segment {key!r} is used by flags: {', '.join(users)}",
                                {"flags": users})
        tx.audit("segment.delete", "segment", key, record.document, None)
        tx.session.delete(record)
        bump_snapshot_revision(tx.session)
