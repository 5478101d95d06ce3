"""Promotion: copy a flag's targeting from one environment to another, with a diff first.

Only targeting moves (the definition is already the same everywhere). Rules the
experiments domain manages belong to their environment and stay where they are; the
target keeps its own, in place. Segments the promoted rules reference must exist in the
target (409 naming them), or are copied when asked. Everything is applied in one
transaction under version checks: a concurrent change of a target aborts it all.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from sqlalchemy.orm import Session

from flagship.db import bump_snapshot_revision
from flagship.diff import json_diff
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.flags import segments, store
from flagship.flags.segments import referenced_segments
from flagship.flags.service import (MANAGED_KINDS, TARGETING, check_version, flag_view,
                                    require_environment, targeting, update_flag)
from flagship.flags.store import FlagRecord
from flagship.runtime import Runtime, Tx


def _is_managed(rule: dict[str, Any]) -> bool:
    """Experiment rules and rules under a rollout belong to their environment."""
    return rule.get("kind") in MANAGED_KINDS or (rule.get("params") or {}).get("rollout") is not None


def promoted_document(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The target's document after promotion: the source's targeting, but the target's own
    managed (experiment) rules, kept at their places."""
    rules = [copy.deepcopy(r) for r in source.get("rules", []) if not _is_managed(r)]
    for index, rule in enumerate(target.get("rules", [])):
        if _is_managed(rule):
            rules.insert(min(index, len(rules)), rule)
    return {**target, **{k: copy.deepcopy(v) for k, v in targeting(source).items()}, "rules": rules}


def _plan(session: Session, key: str, source_env: str, target_env: str) -> dict[str, Any]:
    source = store.get_flag(session, key, source_env)
    target = store.get_flag(session, key, target_env)
    if source is None or target is None:
        raise NotFoundError(f"flag {key!r} not found in environment "
                            f"{source_env if source is None else target_env!r}")
    after = promoted_document(source.document, target.document)
    needed = sorted(referenced_segments(after))
    present = store.segment_keys(session, target_env)
    differing = sorted(k for k in needed if k in present and _segment_doc(session, k, source_env)
                       != _segment_doc(session, k, target_env))
    return {"flag": key, "target_version": target.version, "source_version": source.version,
            "changes": json_diff(targeting(target.document), targeting(after)),
            "missing_segments": [k for k in needed if k not in present],
            "differing_segments": differing, "after": after}


def _segment_doc(session: Session, key: str, environment: str) -> dict[str, Any] | None:
    record = store.get_segment(session, key, environment)
    return record.document if record is not None else None


def _check(session: Session, source_env: str, target_env: str) -> None:
    require_environment(session, source_env)
    require_environment(session, target_env)
    if source_env == target_env:
        raise ValidationError("promote to a different environment", field="to")


def _copy_segment(tx: Tx, runtime: Runtime, key: str, source_env: str, target_env: str) -> None:
    source = store.get_segment(tx.session, key, source_env)
    if source is None:
        raise ConflictError(f"segment {key!r} is missing in {source_env!r} too", {"segments": [key]})
    segments.insert_segment(tx, runtime, source.document, target_env)


def _apply(tx: Tx, runtime: Runtime, plan: dict[str, Any], target_env: str,
           expected: int | None) -> FlagRecord:
    record = store.get_flag(tx.session, plan["flag"], target_env, lock=True)
    if record is None:
        raise ConflictError(f"flag {plan['flag']!r} was deleted meanwhile: nothing was promoted")
    check_version(record.version, expected, "flag", plan["flag"])
    if record.version != plan["target_version"]:  # changed since the plan was read
        raise ConflictError(f"flag {plan['flag']!r} changed in {target_env!r} meanwhile: nothing "
                            "was promoted; look at the diff again", {"flags": [plan["flag"]]})
    return update_flag(tx, runtime, record, plan["after"], None, "promote", managed=True)


def _plans(session: Session, keys: Sequence[str] | None, source_env: str, target_env: str,
           tag: str | None) -> list[dict[str, Any]]:
    _check(session, source_env, target_env)
    if keys is None:
        keys = [r.key for r in store.flags_in(session, source_env, tag=tag)]
    return [_plan(session, key, source_env, target_env) for key in keys]


def promote(runtime: Runtime, actor: str, keys: Sequence[str] | None, source_env: str,
            target_env: str, *, tag: str | None = None, dry_run: bool = False,
            copy_segments: bool = False, versions: dict[str, int] | None = None) -> dict[str, Any]:
    """Promote `keys` (or every flag tagged `tag` in the source) from `source_env` to
    `target_env`: the diff when `dry_run`, else apply it all in one transaction."""
    versions = versions or {}
    result: dict[str, Any] = {"from": source_env, "to": target_env, "dry_run": dry_run, "tag": tag}
    if dry_run:
        with runtime.db.session() as session:
            plans = _plans(session, keys, source_env, target_env, tag)
        result["flags"] = [{k: v for k, v in p.items() if k != "after"} for p in plans]
        return result
    with runtime.change(actor) as tx:
        plans = _plans(tx.session, keys, source_env, target_env, tag)
        result["flags"] = [{k: v for k, v in p.items() if k != "after"} for p in plans]
        missing = sorted({k for p in plans for k in p["missing_segments"]})
        if missing and not copy_segments:
            raise ConflictError(f"segments missing in {target_env!r}: {', '.join(missing)}; create "
                                "them there or send copy_segments: true", {"segments": missing})
        for key in missing:
            _copy_segment(tx, runtime, key, source_env, target_env)
        applied = [_apply(tx, runtime, p, target_env, versions.get(p["flag"])) for p in plans]
        tx.audit("flags.promote", "environment", target_env, {"from": source_env},
                 {"flags": [p["flag"] for p in plans], "copied_segments": missing},
                 environment=target_env)
        bump_snapshot_revision(tx.session)
        result["applied"] = [flag_view(r) for r in applied]
        return result


def compare(runtime: Runtime, key: str, environments: Sequence[str]) -> dict[str, Any]:
    """A flag's targeting side by side in `environments`, and the fields that differ."""
    with runtime.db.session() as session:
        for env in environments:
            require_environment(session, env)
        rows = store.flag_rows(session, key)
        absent = [env for env in environments if env not in rows]
        if absent:
            raise NotFoundError(f"flag {key!r} not found in environment {absent[0]!r}")
        fields = {name: {env: rows[env].document.get(name) for env in environments} for name in TARGETING}
        differs = [name for name, values in fields.items()
                   if any(v != next(iter(values.values())) for v in values.values())]
        return {"flag": key, "environments": list(environments), "fields": fields, "differs": differs,
                "versions": {env: rows[env].version for env in environments}}
