"""Server-side evaluation: the compiled snapshot cache and sticky-aware evaluation.

This sits above the flag and experiment domains: it builds the snapshot from both
stores and persists first assignments (exposures) through the assignment store.
"""
from __future__ import annotations

import gc
import hashlib
import json
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import sqlalchemy as sa

from flagship.db import Database, MetaRecord
from flagship.experiments import store as experiment_store
from flagship.experiments.assign import Assignment, AssignmentStore
from flagship.flags import store as flag_store
from flagship.flags.evaluate import SPLIT, EvalState, Evaluation, unit_key
from flagship.flags.snapshot import Snapshot


@dataclass(frozen=True)
class CompiledSnapshot:
    """One revision of the store: evaluator, serialized body and its strong ETag."""

    revision: int
    snapshot: Snapshot
    body: bytes
    etag: str


class SnapshotCache:
    """Serves the compiled snapshot; one primary-key read per call checks freshness.

    The revision lives in the database, so a change made by another server process
    (or a CLI command) is seen on the very next request, with no message bus.
    """

    def __init__(self, db: Database, operators: dict[str, Any], settle_gc: bool = False) -> None:
        self._db = db
        self._operators = operators
        self._settle_gc = settle_gc
        self._lock = threading.Lock()
        self._current: CompiledSnapshot | None = None

    def get(self) -> CompiledSnapshot:
        """The snapshot at the store's current revision."""
        revision = self._db.read_snapshot_revision()
        current = self._current
        if current is not None and current.revision == revision:
            return current
        with self._lock:
            current = self._current
            if current is None or current.revision != revision:
                current = self._current = self._build()
                if self._settle_gc:
                    _settle_gc()
            return current

    def _build(self) -> CompiledSnapshot:
        with self._db.session() as session:
            revision = session.execute(
                sa.select(MetaRecord.snapshot_revision).where(MetaRecord.id == 1)).scalar() or 0
            flags, segments = flag_store.all_documents(session)
            layers, experiments = experiment_store.snapshot_documents(session)
        doc = {"revision": int(revision), "flags": flags, "segments": segments,
               "layers": layers, "experiments": experiments}
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
        return CompiledSnapshot(int(revision), Snapshot.from_dict(doc, self._operators), body, etag)


def _settle_gc() -> None:
    """Keep the cyclic GC from rescanning the compiled snapshot on every full collection.

    A snapshot of thousands of flags is hundreds of thousands of long-lived objects; a
    full collection walking them stalls every request for tens of milliseconds (it was
    the whole p99 of /evaluate). After a rebuild: unfreeze, collect (the old snapshot and
    any cycles go), and freeze what is left, so it is no longer scanned.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Outcome:
    """Evaluations of one request, with the unit's sticky records as used."""

    revision: int
    results: dict[str, Evaluation]
    sticky: dict[str, str]
    new_assignments: tuple[str, ...]


class Evaluator:
    """Evaluate with sticky assignments; persist first assignments as exposures."""

    def __init__(self, snapshots: SnapshotCache, assignments: AssignmentStore,
                 clock: Callable[[], Any]) -> None:
        self.snapshots = snapshots
        self.assignments = assignments
        self._clock = clock

    def state_for(self, snapshot: Snapshot, context: Any) -> tuple[EvalState, str | None]:
        """The clock and this unit's sticky records (looked up only if experiments exist)."""
        now = self._clock()
        unit = _unit(context)
        sticky: dict[str, str] = {}
        if unit is not None and snapshot.experiments:
            sticky = {k: a.variant for k, a in self.assignments.for_unit(unit).items()}
        return EvalState(now=now.timestamp(), sticky=sticky), unit

    def evaluate(self, context: Any, flag_keys: Iterable[str] | None = None) -> Outcome:
        """Evaluate the named flags (or all); record first assignments to experiments."""
        compiled = self.snapshots.get()
        snapshot = compiled.snapshot
        state, unit = self.state_for(snapshot, context)
        keys = list(snapshot.flags) if flag_keys is None else list(flag_keys)
        results = {key: snapshot.evaluate(key, context, state) for key in keys}
        created = []
        for key, result in results.items():
            if unit is None or result.experiment is None or result.reason != SPLIT:
                continue  # allowlisted (forced) units are not randomised: no exposure
            if result.experiment in state.sticky:
                continue
            results[key], new = self._persist(snapshot, result, unit)
            if new:
                created.append(result.experiment)
        return Outcome(compiled.revision, results, dict(state.sticky), tuple(created))

    def _persist(self, snapshot: Snapshot, result: Evaluation, unit: str) -> tuple[Evaluation, bool]:
        spec = snapshot.experiments[result.experiment]
        kept, new = self.assignments.assign(Assignment(
            result.experiment, unit, result.variant, spec.layer, self._clock()))
        if kept.variant != result.variant:  # a concurrent request assigned first: theirs holds
            flag = snapshot.flags[result.flag_key]
            result = replace(result, variant=kept.variant, value=flag.variants[kept.variant])
        return result, new


def _unit(context: Any) -> str | None:
    if not isinstance(context, dict):
        return None
    raw = context.get("key")
    if raw is None:
        raw = context.get("targetingKey")
    try:
        return unit_key(raw)
    except TypeError:
        return None
