"""Serving use cases: evaluate, assign, explain and the SDK snapshot, for every front door."""
from __future__ import annotations

from typing import Any, Iterable

from flagship.errors import NotFoundError
from flagship.flags.evaluate import Evaluation
from flagship.runtime import Runtime
from flagship.serving.cache import CompiledSnapshot
from flagship.serving.evaluator import Outcome


def evaluation_body(result: Evaluation) -> dict[str, Any]:
    """The JSON form of one evaluation in API responses."""
    out = {"value": result.value, "variant": result.variant, "reason": result.reason,
           "rule_id": result.rule_id}
    if result.experiment:
        out["experiment"] = result.experiment
    if result.error_code:
        out["error_code"], out["error_message"] = result.error_code, result.error_message
    return out


def evaluate(runtime: Runtime, context: Any, flags: Iterable[str] | None = None) -> Outcome:
    """Evaluate the named flags (or all) for one context, recording first assignments."""
    return runtime.evaluator.evaluate(context, flags)


def snapshot(runtime: Runtime) -> CompiledSnapshot:
    """The compiled snapshot at the store's current revision."""
    return runtime.snapshots.get()


def explain(runtime: Runtime, flag: str, context: Any) -> dict[str, Any]:
    """Every step of one evaluation, with the unit's sticky records as evaluation sees them."""
    compiled = runtime.snapshots.get()
    state, _ = runtime.evaluator.state_for(compiled.snapshot, context)
    return {"revision": compiled.revision, **compiled.snapshot.explain(flag, context, state)}


def assign(runtime: Runtime, experiment: str, context: Any) -> dict[str, Any]:
    """Assign a unit to `experiment` (sticky); the first assignment records an exposure."""
    spec = runtime.snapshots.get().snapshot.experiments.get(experiment)
    if spec is None:
        raise NotFoundError(f"experiment {experiment!r} not found")
    outcome = runtime.evaluator.evaluate(context, [spec.flag])
    result = outcome.results[spec.flag]
    inside = result.experiment == experiment
    return {"experiment": experiment, "variant": result.variant if inside else None,
            "value": result.value if inside else None, "in_experiment": inside,
            "reason": result.reason, "sticky": inside and experiment in outcome.sticky}


def unit_assignments(runtime: Runtime, unit: str) -> dict[str, Any]:
    """A unit's sticky assignments, oldest first."""
    found = runtime.assignments.for_unit(unit)
    return {"unit": unit, "assignments": [a.to_dict() for a in sorted(
        found.values(), key=lambda a: a.assigned_at)]}
