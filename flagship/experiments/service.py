"""Experiment use cases: configuration, lifecycle, bucket claims, release, restore.

Layers are in `layers.py`, metric definitions in `metrics.py`.
"""
from __future__ import annotations

import copy
import logging
from datetime import datetime
from typing import Any, Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flagship.db import as_utc, bump_snapshot_revision
from flagship.diff import json_diff
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.experiments import allocation
from flagship.experiments.model import (ACTIVE, FINISHED, Experiment, experiment_from_dict,
                                        experiment_to_dict, flag_from_variants, load_experiment)
from flagship.experiments.store import config as store
from flagship.experiments.store.tables import ExperimentRecord, ExperimentRevisionRecord
from flagship.flags import service as flags
from flagship.flags import store as flag_store
from flagship.flags.bucketing import check_percentage
from flagship.runtime import Runtime, Tx

log = logging.getLogger(__name__)

TRANSITIONS = {"start": ("draft",), "pause": ("running",), "resume": ("paused",),
               "stop": ACTIVE, "release": ACTIVE, "complete": ACTIVE}
RESTORABLE = ("draft", "paused")
DESCRIPTIVE = {"name", "description", "hypothesis", "owner", "metadata", "success_metrics",
               "guardrail_metrics", "minimum_sample_size", "significance_level", "power",
               "multiple_testing"}


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


# -- views and revisions ------------------------------------------------------------------------

def experiment_view(record: ExperimentRecord) -> dict[str, Any]:
    """The API form: configuration plus state, allocation and version."""
    return {**record.document, "environment": record.environment, "status": record.status,
            "ranges": record.ranges,
            "allocated_percentage": allocation.size(record.ranges) / 100,
            "rule_id": load_experiment(record.document).rule_id, "version": record.version,
            "weight_epochs": record.epochs or [],
            "started_at": _iso(record.started_at), "ended_at": _iso(record.ended_at),
            "created_at": _iso(record.created_at), "created_by": record.created_by,
            "updated_at": _iso(record.updated_at), "updated_by": record.updated_by}


def _state_doc(record: ExperimentRecord) -> dict[str, Any]:
    return {**record.document, "status": record.status, "ranges": record.ranges}


def _revise(tx: Tx, record: ExperimentRecord, action: str, before: dict[str, Any] | None) -> None:
    """Bump the version, store the revision and audit record, move the snapshot revision."""
    record.version = (record.version or 0) + 1
    record.updated_at, record.updated_by = tx.now, tx.actor
    after = _state_doc(record)
    tx.session.add(ExperimentRevisionRecord(
        experiment_key=record.key, version=record.version, action=action, actor=tx.actor,
        created_at=tx.now, document=after, diff=json_diff(before or {}, after)))
    tx.audit(f"experiment.{action}", "experiment", record.key, before, after,
             environment=record.environment)
    bump_snapshot_revision(tx.session)


def _require(session: Session, key: str, lock: bool = False) -> ExperimentRecord:
    record = store.get_experiment(session, key, lock=lock)
    if record is None:
        raise NotFoundError(f"experiment {key!r} not found")
    return record


def list_experiments(runtime: Runtime, *, environment: str | None = None, status: str | None = None,
                     layer: str | None = None, flag: str | None = None, page: int = 1,
                     per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    with runtime.db.session() as session:
        rows, total = store.query_experiments(session, environment=environment, status=status,
                                              layer=layer, flag=flag,
                                              offset=(page - 1) * per_page, limit=per_page)
        return [experiment_view(r) for r in rows], total


def get_experiment(runtime: Runtime, key: str) -> dict[str, Any]:
    with runtime.db.session() as session:
        return experiment_view(_require(session, key))


def load(runtime: Runtime, key: str) -> tuple[Experiment, ExperimentRecord]:
    """The experiment's model and its record (detached), or NotFoundError."""
    with runtime.db.session() as session:
        record = _require(session, key)
        session.expunge(record)
    return load_experiment(record.document), record


def list_experiment_revisions(runtime: Runtime, key: str, page: int = 1,
                              per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    with runtime.db.session() as session:
        _require(session, key)
        rows, total = store.experiment_revisions(session, key, (page - 1) * per_page, per_page)
        return [{"version": r.version, "action": r.action, "actor": r.actor,
                 "created_at": _iso(r.created_at), "document": r.document, "diff": r.diff}
                for r in rows], total


# -- the flag rule --------------------------------------------------------------------------------

def _rule(experiment: Experiment) -> dict[str, Any]:
    return {"id": experiment.rule_id, "kind": "experiment",
            "conditions": experiment_to_dict(experiment)["targeting"],
            "params": {"experiment": experiment.key}}


FlagChange = Callable[[dict[str, Any]], dict[str, Any]]


def _place(rule: dict[str, Any], position: int | None) -> FlagChange:
    """A flag-document change that puts `rule` at `position` (or keeps its place)."""
    def change(flag_doc: dict[str, Any]) -> dict[str, Any]:
        rules = flag_doc.get("rules", [])
        current = next((i for i, r in enumerate(rules) if r["id"] == rule["id"]), None)
        rules = [r for r in rules if r["id"] != rule["id"]]
        where = current if position is None and current is not None else (position or 0)
        rules.insert(min(where, len(rules)), rule)
        return {**flag_doc, "rules": rules}
    return change


def _drop(rule_id: str) -> FlagChange:
    def change(flag_doc: dict[str, Any]) -> dict[str, Any]:
        return {**flag_doc, "rules": [r for r in flag_doc.get("rules", []) if r["id"] != rule_id]}
    return change


def check_flag_definition(session: Session, flag: str, before: dict[str, Any],
                          after: dict[str, Any]) -> None:
    """A flag's definition change that would corrupt an experiment on it is a 409: the
    variants an unfinished experiment splits on must stay (removing one sent every unit to
    the remaining variant, still reported as the split), and while one runs the flag's
    type must stay (the treatment would change under it)."""
    for record in store.experiments_of_flag(session, flag):
        if record.status in FINISHED:
            continue
        gone = [v["variant"] for v in record.document["variants"] if v["variant"] not in after["variants"]]
        if gone:
            raise ConflictError(
                f"experiment {record.key!r} ({record.status}) splits on variant(s) {', '.join(map(repr, gone))} "
                "of this flag: they cannot be removed until it is completed or deleted",
                {"variants": [f"{name!r} is used by experiment {record.key!r}" for name in gone]})
        if record.status in ACTIVE and after["type"] != before["type"]:
            raise ConflictError(
                f"experiment {record.key!r} is {record.status} on this flag: its type cannot change "
                "until the experiment is completed", {"type": [f"used by experiment {record.key!r}"]})


def _flag_variants(session: Session, key: str, environment: str) -> dict[str, Any] | None:
    record = flag_store.get_flag(session, key, environment)
    return None if record is None else record.document["variants"]


def _validated(runtime: Runtime, session: Session, doc: dict[str, Any], environment: str) -> Experiment:
    layer = store.get_layer(session, doc["layer"])
    if layer is None or layer.environment != environment:
        raise ValidationError(f"layer {doc['layer']!r} not found in environment {environment!r}",
                              field="layer")
    experiment = experiment_from_dict(doc, operators=runtime.operators,
                                      segment_keys=flag_store.segment_keys(session, environment),
                                      flag_variants=_flag_variants(session, doc["flag"], environment))
    _check_metrics(session, experiment)
    return experiment


def _check_metrics(session: Session, experiment: Experiment) -> None:
    """Referenced metrics must exist (share-locked against a concurrent delete)."""
    named = [(f"success_metrics.{i}", key) for i, key in enumerate(experiment.success_metrics)]
    named += [(f"guardrail_metrics.{i}.metric", g.metric)
              for i, g in enumerate(experiment.guardrail_metrics)]
    if not named:
        return
    found = store.existing_metric_keys(session, {key for _, key in named})
    for field, key in named:
        if key not in found:
            raise ValidationError(f"no metric {key!r}: create it under /api/v1/metrics first", field=field)


# -- configuration --------------------------------------------------------------------------------

def create_experiment(runtime: Runtime, actor: str, doc: dict[str, Any],
                      environment: str | None = None) -> dict[str, Any]:
    """A draft experiment in `environment`; its rule is placed on the flag's targeting there
    (the flag is created from the variant values if new). Experiment keys are unique
    across environments: assignments and events refer to an experiment by key alone."""
    environment = environment or runtime.config["DEFAULT_ENVIRONMENT"]
    try:
        with runtime.change(actor) as tx:
            flags.require_environment(tx.session, environment)
            if store.get_experiment(tx.session, doc["key"]) is not None:
                raise ConflictError(f"experiment {doc['key']!r} already exists", {"key": ["already exists"]})
            experiment = _validated(runtime, tx.session, doc, environment)
            _check_end_ahead(experiment, tx.now)
            flags.claim_salts(tx, "experiment", experiment.key, set(), {experiment.salt})
            if _flag_variants(tx.session, experiment.flag, environment) is None:
                flags.insert_flag(tx, runtime, flag_from_variants(
                    experiment.flag, doc["variants"], experiment.key), environment, managed=True)
            flags.rewrite_flag(tx, runtime, experiment.flag, environment,
                               _place(_rule(experiment), experiment.rule_position), "experiment")
            record = ExperimentRecord(
                key=experiment.key, environment=environment, flag_key=experiment.flag,
                layer_key=experiment.layer,
                status="draft", version=store.last_experiment_version(tx.session, experiment.key),
                document=experiment_to_dict(experiment), ranges=[], epochs=[], created_at=tx.now,
                created_by=actor, updated_at=tx.now, updated_by=actor)
            tx.session.add(record)
            _revise(tx, record, "create", None)
            tx.session.flush()
    except IntegrityError:
        raise ConflictError(f"experiment {doc['key']!r} already exists", {"key": ["already exists"]}) from None
    return experiment_view(record)


def _check_change(record: ExperimentRecord, new: dict[str, Any]) -> set[str]:
    old = record.document
    changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    if record.status in FINISHED and changed - DESCRIPTIVE:
        raise ConflictError(f"experiment {record.key!r} is {record.status}: only descriptive fields "
                            f"can change, not {', '.join(sorted(changed - DESCRIPTIVE))}",
                            {"status": [record.status]})
    if record.status != "draft":
        for name in ("flag", "layer", "salt"):
            if name in changed:
                raise ConflictError(f"the {name} of a started experiment cannot change",
                                    {name: [f"experiment is {record.status}"]})
        if [v["variant"] for v in old["variants"]] != [v["variant"] for v in new["variants"]]:
            raise ConflictError("variants of a started experiment cannot be added, removed or "
                                "renamed (weights may change)", {"variants": ["started"]})
    return changed


def _weights(experiment: Experiment) -> dict[str, float]:
    return experiment.weights


def _new_epoch(record: ExperimentRecord, experiment: Experiment, now: datetime) -> None:
    """Record the weights now in effect (a new epoch) when they changed after the start."""
    epochs = list(record.epochs or [])
    if epochs and epochs[-1]["weights"] == _weights(experiment):
        return
    epochs.append({"epoch": len(epochs) + 1, "since": now.isoformat(), "weights": _weights(experiment)})
    record.epochs = epochs


def _check_end_ahead(experiment: Experiment, now: datetime) -> None:
    """A draft must be able to run: an end already past made a draft that no start could
    ever open (the 409 came only then)."""
    if experiment.end_at is not None and experiment.end_at <= now:
        raise ValidationError(f"is in the past ({experiment.end_at.isoformat()}): the experiment "
                              "could never run", field="end_at")


def _apply_config(tx: Tx, runtime: Runtime, record: ExperimentRecord, merged: dict[str, Any],
                  action: str) -> dict[str, Any]:
    """Validate and store a new configuration of `record` (update or restore)."""
    experiment = _validated(runtime, tx.session, merged, record.environment)
    if record.status == "draft":
        _check_end_ahead(experiment, tx.now)
    canonical = experiment_to_dict(experiment)
    changed = _check_change(record, canonical)
    before = _state_doc(record)
    old = load_experiment(record.document)
    if "salt" in changed:
        flags.claim_salts(tx, "experiment", record.key, {old.salt}, {experiment.salt})
    if record.status in ACTIVE and experiment.traffic_percentage != old.traffic_percentage:
        record.ranges = _claim(tx.session, record, experiment.traffic_percentage, keep=record.ranges)
    if record.status in ACTIVE:
        _new_epoch(record, experiment, tx.now)
    if experiment.flag != record.flag_key:
        flags.rewrite_flag(tx, runtime, record.flag_key, record.environment, _drop(old.rule_id),
                           "experiment")
        record.flag_key = experiment.flag
    record.layer_key = experiment.layer
    if record.status not in FINISHED:
        position = experiment.rule_position if "rule_position" in changed else None
        flags.rewrite_flag(tx, runtime, experiment.flag, record.environment,
                           _place(_rule(experiment), position), "experiment")
    record.document = canonical
    _revise(tx, record, action, before)
    return experiment_view(record)


def update_experiment(runtime: Runtime, actor: str, key: str, doc: dict[str, Any],
                      expected: int | None, partial: bool) -> dict[str, Any]:
    """PUT (partial=False) or PATCH an experiment's configuration."""
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        flags.check_version(record.version, expected, "experiment", key)
        if doc.get("key", key) != key:
            raise ValidationError("an experiment's key cannot change", field="key")
        merged = {**record.document, **doc} if partial else {**doc, "key": key}
        return _apply_config(tx, runtime, record, merged, "update")


def restore_revision(runtime: Runtime, actor: str, key: str, version: int,
                     expected: int | None = None) -> dict[str, Any]:
    """Make the configuration of revision `version` current again (draft or paused only)."""
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        flags.check_version(record.version, expected, "experiment", key)
        if record.status not in RESTORABLE:
            raise ConflictError(f"experiment {key!r} is {record.status}: only the configuration of a "
                                "draft or paused experiment can be restored", {"status": [record.status]})
        old = store.experiment_revision(tx.session, key, version)
        if old is None:
            raise NotFoundError(f"experiment {key!r} has no revision {version}")
        config = {k: v for k, v in copy.deepcopy(old.document).items() if k not in ("status", "ranges")}
        config.setdefault("salt", record.document.get("salt"))
        return _apply_config(tx, runtime, record, config, "restore")


def delete_experiment(runtime: Runtime, actor: str, key: str) -> None:
    """Only drafts are deleted; finished experiments are kept for their results."""
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        if record.status != "draft":
            raise ConflictError(f"experiment {key!r} is {record.status}: only drafts can be deleted "
                                "(stop it; finished experiments are kept for their results)",
                                {"status": [record.status]})
        experiment = load_experiment(record.document)
        if flag_store.get_flag(tx.session, record.flag_key, record.environment) is not None:
            flags.rewrite_flag(tx, runtime, record.flag_key, record.environment,
                               _drop(experiment.rule_id), "experiment")
        flags.claim_salts(tx, "experiment", key, {experiment.salt}, set())
        tx.audit("experiment.delete", "experiment", key, _state_doc(record), None,
                 environment=record.environment)
        tx.session.delete(record)
        bump_snapshot_revision(tx.session)


# -- lifecycle ------------------------------------------------------------------------------------

def _claim(session: Session, record: ExperimentRecord, percentage: float,
           keep: list | None = None) -> list:
    """Buckets for `record` in its layer, keeping `keep` (row lock: no double claims)."""
    store.lock_layer(session, record.layer_key)
    others = [e.ranges for e in store.experiments_in_layer(session, record.layer_key)
              if e.status in ACTIVE and e.key != record.key]
    count = allocation.buckets_for(percentage)
    ranges = [tuple(r) for r in keep or []]
    return [list(r) for r in allocation.resize(ranges, others, count)]


def _start(tx: Tx, runtime: Runtime, record: ExperimentRecord) -> None:
    experiment = load_experiment(record.document)
    if flag_store.get_flag(tx.session, record.flag_key, record.environment) is None:
        raise ConflictError(f"flag {record.flag_key!r} of this experiment no longer exists")
    rivals = [e.key for e in store.experiments_of_flag(tx.session, record.flag_key)
              if e.status in ACTIVE and e.key != record.key]
    if rivals:
        raise ConflictError(f"flag {record.flag_key!r} already has an active experiment: {rivals[0]}",
                            {"flag": [f"active experiment {rivals[0]}"]})
    if experiment.end_at and experiment.end_at <= tx.now:
        raise ConflictError("the experiment's window has already ended",
                            {"end_at": [experiment.end_at.isoformat()]})
    record.ranges = _claim(tx.session, record, experiment.traffic_percentage)
    record.status, record.started_at = "running", tx.now
    _new_epoch(record, experiment, tx.now)
    flags.rewrite_flag(tx, runtime, record.flag_key, record.environment,
                       _place(_rule(experiment), None), "experiment")


def _finish(record: ExperimentRecord, outcome: str, now: datetime) -> None:
    record.status, record.ranges, record.ended_at = outcome, [], now


def _end(tx: Tx, runtime: Runtime, record: ExperimentRecord, outcome: str, now: datetime) -> None:
    """Finish without a release: the experiment's rule leaves its flag (a revision of the
    flag, like any change), so a finished experiment never pins the flag; its data and
    results stay with the experiment."""
    _finish(record, outcome, now)
    if flag_store.get_flag(tx.session, record.flag_key, record.environment) is not None:
        flags.rewrite_flag(tx, runtime, record.flag_key, record.environment,
                           _drop(load_experiment(record.document).rule_id), "experiment")


def transition(runtime: Runtime, actor: str, key: str, action: str,
               outcome: str = "completed") -> dict[str, Any]:
    """start | pause | resume | stop; an illegal move is a 409 naming the current state."""
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        if record.status not in TRANSITIONS[action]:
            raise ConflictError(f"cannot {action} experiment {key!r}: it is {record.status}",
                                {"status": [record.status]})
        before = _state_doc(record)
        if action == "start":
            _start(tx, runtime, record)
        elif action in ("pause", "resume"):
            record.status = "paused" if action == "pause" else "running"
        else:
            if outcome not in FINISHED:
                raise ValidationError("must be completed or terminated", field="outcome")
            _end(tx, runtime, record, outcome, tx.now)
        _revise(tx, record, action, before)
        return experiment_view(record)


def complete_ended(runtime: Runtime, now: datetime) -> list[str]:
    """Complete every active experiment whose `end_at` has passed (a periodic job), freeing
    its buckets; evaluation already stopped enrolling at `end_at`."""
    with runtime.db.session() as session:
        due = [r.key for r in store.experiments(session, ACTIVE)
               if (end := load_experiment(r.document).end_at) is not None and end <= now]
    done = []
    for key in due:
        try:
            with runtime.change("system:schedule") as tx:
                record = _require(tx.session, key, lock=True)
                if record.status not in ACTIVE:
                    continue  # someone else finished it meanwhile
                before = _state_doc(record)
                _end(tx, runtime, record, "completed", now)
                _revise(tx, record, "complete", before)
                done.append(key)
        except Exception:  # noqa: BLE001 - one experiment (say, its flag no longer validates)
            # must not stop the others; it is tried again on the next round
            log.exception("completing experiment %s at its end_at failed", key)
    return done


def release(runtime: Runtime, actor: str, key: str, variant: str, percentage: float) -> dict[str, Any]:
    """Complete the experiment and serve `variant` to `percentage` of its targeted units.

    On a completed experiment that was released before, this ramps the release.
    """
    with runtime.change(actor) as tx:
        record = _require(tx.session, key, lock=True)
        experiment = load_experiment(record.document)
        rule_id = experiment.release_rule_id
        released = flag_store.get_flag(tx.session, record.flag_key, record.environment)
        has_release = released is not None and any(r["id"] == rule_id for r in released.document["rules"])
        if record.status not in ACTIVE and not (record.status == "completed" and has_release):
            raise ConflictError(f"cannot release experiment {key!r}: it is {record.status}",
                                {"status": [record.status]})
        if variant not in experiment.variant_names:
            raise ValidationError(f"{variant!r} is not a variant of experiment {key!r}", field="variant")
        try:
            percentage = check_percentage(percentage)
        except ValueError as err:
            raise ValidationError(str(err), field="percentage") from None
        rule = {"id": rule_id, "kind": "release", "variant": variant, "percentage": percentage,
                "conditions": record.document["targeting"], "params": {"experiment": key}}
        before = _state_doc(record)
        flags.rewrite_flag(tx, runtime, record.flag_key, record.environment,
                           _swap_in_release(rule, experiment), "release")
        if record.status in ACTIVE:
            _finish(record, "completed", tx.now)
        _revise(tx, record, "release", before)
        return experiment_view(record)


def _swap_in_release(rule: dict[str, Any], experiment: Experiment) -> FlagChange:
    ids = (experiment.rule_id, experiment.release_rule_id)

    def swap(flag_doc: dict[str, Any]) -> dict[str, Any]:
        rules = flag_doc.get("rules", [])
        at = next((i for i, r in enumerate(rules) if r["id"] in ids),
                  min(experiment.rule_position, len(rules)))
        rules = [r for r in rules if r["id"] not in ids]
        rules.insert(at, rule)
        return {**flag_doc, "rules": rules}
    return swap
