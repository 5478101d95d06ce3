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


def evaluate(runtime: Runtime, context: Any, flags: Iterable[str] | None = None,
             environment: str | None = None) -> Outcome:
    """Evaluate the named flags (or all) for one context, recording first assignments."""
    return runtime.evaluator.evaluate(context, flags, environment or _default(runtime))


def snapshot(runtime: Runtime, environment: str | None = None, at_least: int = 0) -> CompiledSnapshot:
    """An environment's compiled snapshot at the store's current revision (and not older
    than `at_least`, a revision the caller saw committed)."""
    return runtime.snapshots.get(environment or _default(runtime), at_least)


def explain(runtime: Runtime, flag: str, context: Any, environment: str | None = None) -> dict[str, Any]:
    """Every step of one evaluation, with the unit's sticky records as evaluation sees them."""
    compiled = runtime.snapshots.get(environment or _default(runtime))
    state, _ = runtime.evaluator.state_for(compiled.snapshot, context, [flag])
    return {"revision": compiled.revision, **compiled.snapshot.explain(flag, context, state)}


def assign(runtime: Runtime, experiment: str, context: Any,
           environment: str | None = None) -> dict[str, Any]:
    """Assign a unit to `experiment` (sticky); the first assignment records an exposure."""
    environment = environment or _default(runtime)
    spec = runtime.snapshots.get(environment).snapshot.experiments.get(experiment)
    if spec is None:
        raise NotFoundError(f"experiment {experiment!r} not found in environment {environment!r}")
    outcome = runtime.evaluator.evaluate(context, [spec.flag], environment)
    result = outcome.results[spec.flag]
    inside = result.experiment == experiment
    return {"experiment": experiment, "variant": result.variant if inside else None,
            "value": result.value if inside else None, "in_experiment": inside,
            "reason": result.reason, "sticky": inside and experiment in outcome.sticky}


def unit_assignments(runtime: Runtime, unit: str, environment: str | None = None) -> dict[str, Any]:
    """A unit's sticky assignments to the experiments of one environment, oldest first."""
    experiments = runtime.snapshots.get(environment or _default(runtime)).snapshot.experiments
    found = [a for key, a in runtime.assignments.for_unit(unit).items() if key in experiments]
    return {"unit": unit, "assignments": [a.to_dict() for a in sorted(found, key=lambda a: a.assigned_at)]}


def _default(runtime: Runtime) -> str:
    return runtime.config["DEFAULT_ENVIRONMENT"]
