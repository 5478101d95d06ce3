"""Server-side evaluation: sticky-aware evaluation over the compiled snapshot.

This sits above the flag and experiment domains: it reads the unit's sticky assignments
and persists first assignments (exposures) through the assignment store.

A unit's sticky records are remembered per process (`StickyMemo`): a record never
changes nor goes away once written (exposures are append-only, and a concurrent second
assignment keeps the first), so a remembered record is never wrong; one made meanwhile by
another process is simply not known yet, and the first-assignment write, which keeps the
stored one, finds it. A returning unit then costs no store read at all.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from flagship import telemetry
from flagship.experiments.assignment import Assignment, AssignmentStore
from flagship.flags.evaluate import SPLIT, EvalState, Evaluation, unit_key
from flagship.flags.snapshot import Snapshot
from flagship.serving.cache import SnapshotCache


@dataclass(frozen=True)
class Outcome:
    """Evaluations of one request, with the unit's sticky records as used."""

    revision: int
    results: dict[str, Evaluation]
    sticky: dict[str, str]
    new_assignments: tuple[str, ...]


class StickyMemo:
    """Units' sticky records (experiment -> variant) as this process has seen them; bounded
    (forgets everything past `limit` units: it only costs store reads again)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._units: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, unit: str) -> dict[str, str] | None:
        known = self._units.get(unit)
        return dict(known) if known is not None else None

    def remember(self, unit: str, records: dict[str, str]) -> None:
        if not records:
            return  # nothing known: another process may assign this unit any time
        with self._lock:
            if len(self._units) >= self.limit and unit not in self._units:
                self._units.clear()
            self._units.setdefault(unit, {}).update(records)


class Evaluator:
    """Evaluate with sticky assignments; persist first assignments as exposures."""

    def __init__(self, snapshots: SnapshotCache, assignments: AssignmentStore,
                 clock: Callable[[], Any]) -> None:
        self.snapshots = snapshots
        self.assignments = assignments
        self.clock = clock
        self.sticky = StickyMemo()

    def state_for(self, snapshot: Snapshot, context: Any,
                  flag_keys: Iterable[str] | None = None) -> tuple[EvalState, str | None]:
        """The clock and this unit's sticky records, looked up only when one of the flags
        evaluated (`flag_keys`, None: all) runs an experiment: evaluating any other flag
        never touches the assignment store (nor Redis)."""
        now = self.clock()
        unit = _unit(context)
        sticky: dict[str, str] = {}
        if unit is not None and _uses_sticky(snapshot, flag_keys):
            known = self.sticky.get(unit)
            if known is None or not _covers(snapshot, flag_keys, known):
                known = {k: a.variant for k, a in self.assignments.for_unit(unit).items()}
                self.sticky.remember(unit, known)
            sticky = known
        return EvalState(now=now.timestamp(), sticky=sticky), unit

    def evaluate(self, context: Any, flag_keys: Iterable[str] | None = None,
                 environment: str = "production") -> Outcome:
        """Evaluate the named flags (or all) of `environment`; record first assignments."""
        compiled = self.snapshots.get(environment)
        snapshot = compiled.snapshot
        keys = list(snapshot.flags) if flag_keys is None else list(flag_keys)
        state, unit = self.state_for(snapshot, context, keys)
        results = {key: snapshot.evaluate(key, context, state) for key in keys}
        created = []
        for key, result in results.items():
            if unit is None or result.experiment is None:
                continue
            if result.arm is None and result.reason != SPLIT:
                continue  # allowlisted (forced) units are not randomised: no exposure
            if result.experiment in state.sticky:
                continue
            results[key], new = self._persist(snapshot, result, unit)
            if new:
                created.append(result.experiment)
        telemetry.count_evaluations((key, r.reason) for key, r in results.items())
        return Outcome(compiled.revision, results, dict(state.sticky), tuple(created))

    def _persist(self, snapshot: Snapshot, result: Evaluation, unit: str) -> tuple[Evaluation, bool]:
        if result.arm is not None:  # a guarded rollout: the arm is recorded, nothing is sticky
            kept, new = self.assignments.assign(Assignment(
                result.experiment, unit, result.arm, "", self.clock()))
            self.sticky.remember(unit, {kept.experiment: kept.variant})
            return result, new
        spec = snapshot.experiments[result.experiment]
        kept, new = self.assignments.assign(Assignment(
            result.experiment, unit, result.variant, spec.layer, self.clock(), spec.epoch))
        self.sticky.remember(unit, {kept.experiment: kept.variant})
        if kept.variant != result.variant:  # a concurrent request assigned first: theirs holds
            flag = snapshot.flags[result.flag_key]
            result = replace(result, variant=kept.variant, value=flag.variants[kept.variant])
        return result, new


def _uses_sticky(snapshot: Snapshot, flag_keys: Iterable[str] | None) -> bool:
    """Whether one of the flags runs an experiment or a guarded rollout (whose arm record
    says whether the unit's exposure is already counted)."""
    if not snapshot.experiments and not snapshot.subjects:
        return False
    if flag_keys is None:
        return True
    wanted = set(flag_keys)
    return (any(spec.flag in wanted for spec in snapshot.experiments.values())
            or any(flag in wanted for flag, _ in snapshot.subjects.values()))


def _covers(snapshot: Snapshot, flag_keys: Iterable[str] | None, known: dict[str, str]) -> bool:
    """Whether the remembered records answer for every experiment and guarded rollout of the
    flags evaluated: else the store is read (it may know one made by another process)."""
    wanted = None if flag_keys is None else set(flag_keys)
    for key, spec in snapshot.experiments.items():
        if (wanted is None or spec.flag in wanted) and key not in known:
            return False
    for subject, (flag, _) in snapshot.subjects.items():
        if (wanted is None or flag in wanted) and subject not in known:
            return False
    return True


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
