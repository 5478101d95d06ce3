"""Flag use cases: validation, versioned writes, revisions, audit, per environment.

A flag's definition (key, type, variants, description, tags, salt) is global; its
targeting (enabled, rules, default and off variant, allow and block lists) is per
environment. Each environment keeps the flag as one document with its own version and
revisions; a change of the definition is applied to every environment, as a revision
there too, and refused (naming the environment) if it would break that environment's
targeting. Segments are in `segments.py`, environments in `environments.py`, promotion in
`promotion.py`.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flagship.db import as_utc, bump_snapshot_revision
from flagship.diff import json_diff
from flagship.errors import (ConflictError, NotFoundError, PermissionDeniedError, ValidationError,
                             VersionRequiredError)
from flagship.flags import store
from flagship.flags.model import flag_from_dict, flag_to_dict
from flagship.flags.store import FlagRecord, FlagRevisionRecord, SegmentRecord
from flagship.runtime import Runtime, Tx

DEFINITION = ("key", "type", "variants", "description", "tags", "salt")
TARGETING = ("enabled", "rules", "default_variant", "off_variant", "allowlist", "blocklist")
MANAGED_KINDS = ("experiment",)  # rules the experiments service owns


def _iso(value: Any) -> str:
    return as_utc(value).isoformat()


def definition(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in DEFINITION if k in doc}


def targeting(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in TARGETING if k in doc}


def summary(record: FlagRecord) -> dict[str, Any]:
    """One environment's targeting at a glance (what `GET /flags/{key}` lists per environment)."""
    doc = record.document
    return {"enabled": doc["enabled"], "rules": len(doc.get("rules", [])),
            "default_variant": doc["default_variant"], "off_variant": doc["off_variant"],
            "version": record.version, "updated_at": _iso(record.updated_at),
            "updated_by": record.updated_by}


def flag_view(record: FlagRecord, others: dict[str, FlagRecord] | None = None) -> dict[str, Any]:
    """The API form of a flag in one environment: its document plus version and timestamps
    (and, when given, a summary of every environment)."""
    view = {**record.document, "environment": record.environment, "version": record.version,
            "created_at": _iso(record.created_at), "created_by": record.created_by,
            "updated_at": _iso(record.updated_at), "updated_by": record.updated_by}
    if others is not None:
        view["environments"] = {env: summary(row) for env, row in others.items()}
    return view


def segment_view(record: SegmentRecord) -> dict[str, Any]:
    """The API form of a segment."""
    return {**record.document, "environment": record.environment, "version": record.version,
            "created_at": _iso(record.created_at), "updated_at": _iso(record.updated_at),
            "updated_by": record.updated_by}


def revision_view(record: FlagRevisionRecord) -> dict[str, Any]:
    """The API form of a flag revision."""
    return {"version": record.version, "environment": record.environment, "action": record.action,
            "actor": record.actor, "created_at": _iso(record.created_at),
            "document": record.document, "diff": record.diff}


def require_environment(session: Session, key: str) -> str:
    """`key` if such an environment exists, else NotFoundError."""
    if store.get_environment(session, key) is None:
        raise NotFoundError(f"environment {key!r} not found")
    return key


class _VersionRequired:
    """What the HTTP layer passes as the expected version when the request named none and
    the write requires one: `check_version` refuses it once the object is known to exist,
    so an unknown object is a 404 before a missing version is a 428."""

    def __repr__(self) -> str:
        return "VERSION_REQUIRED"


VERSION_REQUIRED: Any = _VersionRequired()


def check_version(current: int, expected: int | None, kind: str, key: str) -> None:
    if expected is VERSION_REQUIRED:
        raise VersionRequiredError("send the version you edit: an If-Match header or a 'version' field "
                                   "(GET the object to learn it)", {"version": ["required"]})
    if expected is not None and expected != current:
        raise ConflictError(
            f"{kind} {key!r} is at version {current}, not {expected}: reload it and apply "
            "your change again", {"version": [f"current version is {current}"]})


def _canonical_flag(runtime: Runtime, session: Session, doc: dict[str, Any], environment: str) -> dict[str, Any]:
    flag = flag_from_dict(doc, runtime.operators, store.segment_keys(session, environment))
    return flag_to_dict(flag)


def _require_flag(session: Session, key: str, environment: str) -> FlagRecord:
    record = store.get_flag(session, key, environment)
    if record is None:
        raise NotFoundError(f"flag {key!r} not found in environment {environment!r}")
    return record


def flag_salts(doc: dict[str, Any] | None) -> set[str]:
    """The salts a flag document hashes with: its rollouts', and its release rules' (the
    default one, `<salt>:release`, is reserved from the start: a flag that took it as its
    own salt blocked the release of this one's experiments with a 409)."""
    if not doc:
        return set()
    salt = doc.get("salt") or doc["key"]
    salts = {salt, f"{salt}:release"}
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


def _record_revision(tx: Tx, key: str, environment: str, version: int, action: str,
                     before: dict | None, after: dict) -> None:
    # a flag's salts are the same in every environment: claimed once, released on delete
    claim_salts(tx, "flag", key, set(), flag_salts(after))
    tx.session.add(FlagRevisionRecord(
        flag_key=key, environment=environment, version=version, action=action, actor=tx.actor,
        created_at=tx.now, document=after, diff=json_diff(before or {}, after)))
    tx.audit(f"flag.{action}", "flag", key, before, after, environment=environment)
    bump_snapshot_revision(tx.session)


def _flag_values(canonical: dict[str, Any], tx: Tx) -> dict[str, Any]:
    tags = canonical.get("tags") or []
    return {"document": canonical, "enabled": canonical["enabled"],
            "tags": f",{','.join(tags)}," if tags else "",
            "description": canonical.get("description", ""),
            "updated_at": tx.now, "updated_by": tx.actor}


# -- reads ---------------------------------------------------------------------------------------

def list_flags(runtime: Runtime, environment: str, *, tag: str | None = None, search: str | None = None,
               page: int = 1, per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    """One page of an environment's flags (by key) and the total count."""
    with runtime.db.session() as session:
        require_environment(session, environment)
        rows, total = store.query_flags(session, environment=environment, tag=tag, search=search,
                                        offset=(page - 1) * per_page, limit=per_page)
        return [flag_view(row) for row in rows], total


def get_flag(runtime: Runtime, key: str, environment: str) -> dict[str, Any]:
    """The flag in `environment`, with a summary of its targeting in every environment."""
    with runtime.db.session() as session:
        require_environment(session, environment)
        record = _require_flag(session, key, environment)
        rows = store.flag_rows(session, key)
        order = store.environment_keys(session)
        return flag_view(record, {env: rows[env] for env in order if env in rows})


# -- writes --------------------------------------------------------------------------------------

def _other_environment(doc: dict[str, Any]) -> dict[str, Any]:
    """A new flag in an environment it was not created in: off, no rules, no lists."""
    return {**definition(doc), "enabled": False, "rules": [], "allowlist": {}, "blocklist": [],
            "default_variant": doc["default_variant"], "off_variant": doc["off_variant"]}


def insert_flag(tx: Tx, runtime: Runtime, doc: dict[str, Any], environment: str,
                managed: bool = False) -> FlagRecord:
    """Validate and add a flag inside the caller's transaction: `doc` in `environment`;
    every other environment gets the definition, switched off, without rules."""
    canonical = _canonical_flag(runtime, tx.session, doc, environment)
    if not managed:
        _guard_managed(None, canonical)
    key = canonical["key"]
    if store.flag_rows(tx.session, key):
        raise ConflictError(f"flag {key!r} already exists", {"key": ["already exists"]})
    created = None
    for env in store.environment_keys(tx.session):
        document = canonical if env == environment else _canonical_flag(
            runtime, tx.session, _other_environment(canonical), env)
        version = store.last_revision_version(tx.session, key, env) + 1
        record = FlagRecord(key=key, environment=env, version=version, created_at=tx.now,
                            created_by=tx.actor, **_flag_values(document, tx))
        tx.session.add(record)
        _record_revision(tx, key, env, version, "create", None, document)
        created = record if env == environment else created
    tx.session.flush()
    if created is None:
        raise NotFoundError(f"environment {environment!r} not found")
    return created


def insert_other_environment(tx: Tx, runtime: Runtime, doc: dict[str, Any], environment: str,
                             copy: bool) -> FlagRecord:
    """Add an existing flag to a new environment: `doc`'s targeting when `copy` (managed
    experiment rules stay behind), else switched off without rules."""
    source = {**doc, "rules": [r for r in doc.get("rules", []) if r.get("kind") not in MANAGED_KINDS]} \
        if copy else _other_environment(doc)
    document = _canonical_flag(runtime, tx.session, source, environment)
    version = store.last_revision_version(tx.session, doc["key"], environment) + 1
    record = FlagRecord(key=doc["key"], environment=environment, version=version, created_at=tx.now,
                        created_by=tx.actor, **_flag_values(document, tx))
    tx.session.add(record)
    _record_revision(tx, doc["key"], environment, version, "create", None, document)
    return record


def rewrite_flag(tx: Tx, runtime: Runtime, key: str, environment: str,
                 change: Callable[[dict[str, Any]], dict[str, Any]], action: str) -> FlagRecord:
    """Apply `change` to a flag's document in one environment (a new revision)."""
    record = _require_flag(tx.session, key, environment)
    return update_flag(tx, runtime, record, change(copy.deepcopy(record.document)), None,
                        action, managed=True)


def create_flag(runtime: Runtime, actor: str, doc: dict[str, Any], environment: str) -> dict[str, Any]:
    """Validate and store a new flag (on in `environment`, off elsewhere)."""
    try:
        with runtime.change(actor) as tx:
            require_environment(tx.session, environment)
            record = insert_flag(tx, runtime, doc, environment)
    except IntegrityError:  # a concurrent create of the same key won the race
        raise ConflictError(f"flag {doc.get('key')!r} already exists",
                            {"key": ["already exists"]}) from None
    return flag_view(record)


def _managed_rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Experiment rules, and rules a rollout is ramping (their percentage is the rollout's)."""
    return sorted((r for r in doc.get("rules", []) if r.get("kind") in MANAGED_KINDS
                   or (r.get("params") or {}).get("rollout") is not None), key=lambda r: r["id"])


def _guard_managed(before: dict[str, Any] | None, after: dict[str, Any]) -> None:
    """Experiment rules change only through /experiments (they may be moved, not edited)."""
    if _managed_rules(before or {}) != _managed_rules(after):
        managed = {r["id"] for r in _managed_rules(before or {}) + _managed_rules(after)}
        index = next((i for i, r in enumerate(after.get("rules", [])) if r["id"] in managed), None)
        field = f"rules.{index}" if index is not None else "rules"
        raise ValidationError("experiment rules and rules under a rollout are managed through "
                              "/api/v1/experiments and /api/v1/rollouts; they can be reordered here "
                              "but not added, edited or removed", field=field)


def _write(tx: Tx, record: FlagRecord, canonical: dict[str, Any], action: str) -> None:
    before, version = record.document, record.version + 1
    if not store.compare_and_set(tx.session, record, record.version, _flag_values(canonical, tx)):
        raise ConflictError(f"flag {record.key!r} was changed by someone else: reload it")
    _record_revision(tx, record.key, record.environment, version, action, before, canonical)
    tx.session.expire(record)


def _propagate(tx: Tx, runtime: Runtime, record: FlagRecord, canonical: dict[str, Any]) -> None:
    """Carry a changed definition to the flag's other environments (each a new revision)."""
    for env, other in store.flag_rows(tx.session, record.key).items():
        if env == record.environment or definition(other.document) == definition(canonical):
            continue
        try:
            updated = _canonical_flag(runtime, tx.session, {**other.document, **definition(canonical)}, env)
        except ValidationError as err:
            raise ConflictError(f"this definition change breaks the flag's targeting in environment "
                                f"{env!r}: {err.message}", {"environments": [env]}) from None
        _write(tx, other, updated, "definition")


def update_flag(tx: Tx, runtime: Runtime, record: FlagRecord, doc: dict[str, Any],
                 expected: int | None, action: str, managed: bool = False,
                 everywhere: bool = True) -> FlagRecord:
    check_version(record.version, expected, "flag", record.key)
    if doc.get("key", record.key) != record.key:
        raise ValidationError("a flag's key cannot change (create a new flag instead)", field="key")
    canonical = _canonical_flag(runtime, tx.session, {**doc, "key": record.key}, record.environment)
    if not managed:
        _guard_managed(record.document, canonical)
    changed_definition = definition(canonical) != definition(record.document)
    if changed_definition:
        for check in runtime.flag_checks:
            check(tx.session, record.key, record.document, canonical)
    if changed_definition and not everywhere:
        raise PermissionDeniedError("this changes the flag's definition, which every environment "
                                    "shares: use a key that is not bound to one environment")
    _write(tx, record, canonical, action)
    if changed_definition:
        _propagate(tx, runtime, record, canonical)
    return record


def replace_flag(runtime: Runtime, actor: str, key: str, doc: dict[str, Any],
                 expected: int | None, environment: str, everywhere: bool = True) -> dict[str, Any]:
    """PUT: the document replaces the flag in `environment` (fields left out take their
    defaults); a changed definition is applied to every environment."""
    with runtime.change(actor) as tx:
        record = update_flag(tx, runtime, _require_flag(tx.session, key, environment), doc,
                             expected, "update", everywhere=everywhere)
        return flag_view(record)


def patch_flag(runtime: Runtime, actor: str, key: str, patch: dict[str, Any],
               expected: int | None, environment: str, everywhere: bool = True) -> dict[str, Any]:
    """PATCH: top-level fields in `patch` replace the flag's in `environment`; the rest stay."""
    with runtime.change(actor) as tx:
        record = _require_flag(tx.session, key, environment)
        merged = {**record.document, **patch}
        return flag_view(update_flag(tx, runtime, record, merged, expected, "update",
                                     everywhere=everywhere))


def set_enabled(runtime: Runtime, actor: str, key: str, enabled: bool,
                expected: int | None = None, environment: str = "production") -> dict[str, Any]:
    """The kill switch of one environment. Needs no version: in an incident it must just work."""
    with runtime.change(actor) as tx:
        record = _require_flag(tx.session, key, environment)
        if record.document.get("enabled") == enabled:
            check_version(record.version, expected, "flag", key)
            return flag_view(record)
        doc = {**record.document, "enabled": enabled}
        action = "enable" if enabled else "disable"
        return flag_view(update_flag(tx, runtime, record, doc, expected, action))


def delete_flag(runtime: Runtime, actor: str, key: str, expected: int | None = None,
                environment: str = "production") -> None:
    """Delete a flag from every environment (its definition is global); its revisions stay,
    and a re-created key continues the numbering. `expected` checks `environment`'s version."""
    with runtime.change(actor) as tx:
        rows = store.flag_rows(tx.session, key)
        if environment not in rows:
            raise NotFoundError(f"flag {key!r} not found in environment {environment!r}")
        check_version(rows[environment].version, expected, "flag", key)
        managed = sorted({r["params"]["experiment"] for row in rows.values()
                          for r in _managed_rules(row.document) if r.get("kind") in MANAGED_KINDS})
        if managed:
            raise ConflictError(f"flag {key!r} is used by experiments: {', '.join(managed)}; "
                                "delete them first", {"experiments": managed})
        ramping = sorted({str(r["params"]["rollout"]) for row in rows.values()
                          for r in _managed_rules(row.document) if r.get("kind") not in MANAGED_KINDS})
        if ramping:
            raise ConflictError(f"flag {key!r} is being rolled out (rollouts {', '.join(ramping)}); "
                                "finish or abort them first", {"rollouts": ramping})
        salts: set[str] = set()
        for env, record in rows.items():
            before = record.document
            salts |= flag_salts(before)
            tx.session.delete(record)
            tx.session.add(FlagRevisionRecord(
                flag_key=key, environment=env, version=record.version + 1, action="delete",
                actor=actor, created_at=tx.now, document=before, diff=json_diff(before, {})))
            tx.audit("flag.delete", "flag", key, before, None, environment=env)
        claim_salts(tx, "flag", key, salts, set())
        bump_snapshot_revision(tx.session)


def list_revisions(runtime: Runtime, key: str, environment: str, page: int = 1,
                   per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    """A flag's revisions in one environment, newest first (also for a deleted flag)."""
    with runtime.db.session() as session:
        require_environment(session, environment)
        rows, total = store.revisions(session, key, environment, (page - 1) * per_page, per_page)
        if total == 0:
            raise NotFoundError(f"flag {key!r} has no revisions in environment {environment!r}")
        return [revision_view(row) for row in rows], total


def restore_revision(runtime: Runtime, actor: str, key: str, version: int,
                     expected: int | None = None, environment: str = "production") -> dict[str, Any]:
    """Make revision `version` of `environment` its current document (as a new revision).

    After a delete, restoring re-creates the flag: in this environment from the revision,
    in the others from their own last revision (or off, without rules)."""
    with runtime.change(actor) as tx:
        old = store.revision(tx.session, key, environment, version)
        if old is None:
            raise NotFoundError(f"flag {key!r} has no revision {version} in environment {environment!r}")
        record = store.get_flag(tx.session, key, environment)
        if record is not None:
            restored = _with_managed_of(old.document, record.document)
            return flag_view(update_flag(tx, runtime, record, restored, expected, "restore"))
        return flag_view(_recreate(tx, runtime, key, environment, _with_managed_of(old.document, None)))


def _with_managed_of(doc: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """`doc` with the managed (experiment) rules of `current` instead of its own: history
    never brings an experiment's rule back (the experiments service places and removes
    them; a finished experiment's rule left the flag for good), nor drops a running one."""
    rules = [r for r in doc.get("rules", []) if not (isinstance(r, dict) and r.get("kind") in MANAGED_KINDS)]
    for index, rule in enumerate((current or {}).get("rules", [])):
        if isinstance(rule, dict) and rule.get("kind") in MANAGED_KINDS:
            rules.insert(min(index, len(rules)), rule)
    return {**doc, "rules": rules}


def _recreate(tx: Tx, runtime: Runtime, key: str, environment: str, doc: dict[str, Any]) -> FlagRecord:
    canonical = _canonical_flag(runtime, tx.session, doc, environment)
    restored = None
    for env in store.environment_keys(tx.session):
        last = store.revision(tx.session, key, env, store.last_revision_version(tx.session, key, env))
        source = canonical if env == environment else (
            _with_managed_of({**last.document, **definition(canonical)}, None) if last is not None
            else _other_environment(canonical))
        document = _canonical_flag(runtime, tx.session, source, env) if env != environment else canonical
        version = store.last_revision_version(tx.session, key, env) + 1
        record = FlagRecord(key=key, environment=env, version=version, created_at=tx.now,
                            created_by=tx.actor, **_flag_values(document, tx))
        tx.session.add(record)
        _record_revision(tx, key, env, version, "restore", None, document)
        restored = record if env == environment else restored
    tx.session.flush()
    assert restored is not None
    return restored
