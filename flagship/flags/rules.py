"""Rule kinds: how each kind of targeting rule is validated and compiled, in one table.

`RULE_KINDS` is the only registry: `flag_from_dict` validates a rule's kind-specific
fields with `RuleKind.fields` and `compile_flag` compiles it with `RuleKind.compile`.
Both look the table up when they run (not at import), so nothing registers itself by
mutating another module. The ``experiment`` and ``release`` kinds belong to the core,
not to `flagship.experiments`: every SDK must evaluate them (seed 004).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import mmh3

from flagship.errors import ValidationError
from flagship.flags import model
from flagship.flags.bucketing import BUCKETS, check_percentage, threshold
from flagship.flags.evaluate import (SPLIT, TARGETING_MATCH, Context, ControlMark, EvalState,
                                     Evaluation, RuleCompiler, RuleEnv, RuleFn)
from flagship.flags.model import Rule
from flagship.flags.traffic import ACTIVE, CompiledExperiment, in_window, pick_variant, variant_cutoffs


@dataclass(frozen=True)
class RuleKind:
    """One kind of rule: its field validator (write time) and its compiler (snapshot build)."""

    name: str
    fields: model.KindValidator
    compile: RuleCompiler


# -- force and rollout -------------------------------------------------------------------

def _no_params(doc: Mapping[str, Any], path: str, kind: str) -> None:
    if doc.get("params"):
        model._fail(model._at(path, "params"), f"{kind} rules take no params")


def _force_fields(doc: Mapping[str, Any], variants: Mapping[str, Any], path: str) -> model.KindFields:
    if doc.get("percentage") is not None:
        model._fail(model._at(path, "percentage"), "force rules take no percentage; use a rollout rule")
    _no_params(doc, path, "force")
    return model._variant_ref(model._get(doc, "variant", path), variants, model._at(path, "variant")), None, {}


GUARD_PARAMS = ("rollout", "subject", "control")


def _guard(params: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The params a rollout may set on the rule it ramps: its id, the analysis subject the
    arms are recorded under, and whether the mirrored control arm is tracked."""
    if not params:
        return {}
    if not isinstance(params, Mapping):
        model._fail(model._at(path, "params"), "must be an object")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        model._fail(model._at(path, f"params.{unknown[0]}"), f"unknown param {unknown[0]!r}")
    if "subject" in params and not isinstance(params["subject"], str):
        model._fail(model._at(path, "params.subject"), "must be a string")
    if "control" in params and not isinstance(params["control"], bool):
        model._fail(model._at(path, "params.control"), "must be true or false")
    return dict(params)


def _rollout_fields(doc: Mapping[str, Any], variants: Mapping[str, Any], path: str) -> model.KindFields:
    params = _guard(doc.get("params"), path, GUARD_PARAMS)
    variant = model._variant_ref(model._get(doc, "variant", path), variants, model._at(path, "variant"))
    try:
        percentage = check_percentage(model._get(doc, "percentage", path))
    except ValueError as err:
        model._fail(model._at(path, "percentage"), str(err))
    return variant, percentage, params


def _arms(rule: Rule, env: RuleEnv, hit: Evaluation) -> tuple[Evaluation, ControlMark | None, int]:
    """A guarded rule's treatment result, control mark and the control arm's first bucket.

    Treatment = buckets [0, p); the mirrored control = [10000 - p, 10000) of the same hash,
    tracked only while p <= 50 %: raising p up to half never moves a unit between arms."""
    subject = rule.params.get("subject")
    if not subject:
        return hit, None, BUCKETS
    treated = replace(hit, experiment=subject, arm="treatment")
    cutoff = threshold(rule.percentage or 0)
    if not rule.params.get("control") or cutoff > BUCKETS // 2:
        return treated, None, BUCKETS
    return treated, ControlMark(subject, rule.id), BUCKETS - cutoff


def _compile_force(rule: Rule, env: RuleEnv) -> RuleFn:
    conditions, hit = env.conditions, env.result(rule.variant or "", TARGETING_MATCH, rule.id)

    def force(ctx: Context, unit: str | None, state: EvalState | None) -> Evaluation | None:
        for condition in conditions:
            if not condition(ctx, unit):
                return None
        return hit

    return force


def _compile_rollout(rule: Rule, env: RuleEnv) -> RuleFn:
    conditions = env.conditions
    hit, mark, control_from = _arms(rule, env, env.result(rule.variant or "", SPLIT, rule.id))
    return _ramp(f"{env.flag.salt}:", threshold(rule.percentage or 0), conditions, hit, mark, control_from)


def _ramp(prefix: str, cutoff: int, conditions: tuple[Any, ...], hit: Evaluation,
          mark: ControlMark | None, control_from: int) -> RuleFn:
    hash32 = mmh3.hash

    def ramp(ctx: Context, unit: str | None, state: EvalState | None) -> Evaluation | ControlMark | None:
        if unit is None:  # nothing stable to hash: rollouts cannot place this context
            return None
        for condition in conditions:
            if not condition(ctx, unit):
                return None
        # bucketing.bucket() inlined: this is the hottest line of a rollout.
        number = hash32(prefix + unit, 0, False) % BUCKETS
        if number < cutoff:
            return hit
        if number >= control_from:
            return mark  # the mirrored control arm: served as if the rule were not there
        return None  # conditions matched but the bucket missed: fall through

    return ramp



# -- experiment and release (seed 004) ---------------------------------------------------

def _experiment_param(doc: Mapping[str, Any], path: str) -> dict[str, Any]:
    params = doc.get("params")
    if not isinstance(params, Mapping) or not isinstance(params.get("experiment"), str):
        raise ValidationError("needs params.experiment, the experiment key",
                              field=f"{path}.params.experiment")
    return dict(params)


def _experiment_fields(doc: Mapping[str, Any], variants: Mapping[str, Any], path: str) -> model.KindFields:
    for name in ("variant", "percentage"):
        if doc.get(name) is not None:
            raise ValidationError("experiment rules take their split from the experiment",
                                  field=f"{path}.{name}")
    params = _experiment_param(doc, path)
    unknown = sorted(set(params) - {"experiment"})
    if unknown:
        raise ValidationError(f"unknown param {unknown[0]!r}", field=f"{path}.params.{unknown[0]}")
    return None, None, params


def _release_fields(doc: Mapping[str, Any], variants: Mapping[str, Any], path: str) -> model.KindFields:
    params = _experiment_param(doc, path)
    _guard({k: v for k, v in params.items() if k not in ("experiment", "salt")}, path, GUARD_PARAMS)
    variant = model._variant_ref(doc.get("variant"), variants, f"{path}.variant")
    try:
        percentage = check_percentage(doc.get("percentage"))
    except ValueError as err:
        raise ValidationError(str(err), field=f"{path}.percentage") from None
    return variant, percentage, params


def _compile_experiment(rule: Rule, env: RuleEnv) -> RuleFn:
    compiled: CompiledExperiment | None = env.extras.get("experiments", {}).get(rule.params["experiment"])
    if compiled is None or compiled.spec.status not in ACTIVE or compiled.spec.flag != env.flag.key:
        return lambda ctx, unit, state: None  # inert: draft, finished or unknown experiment
    spec, hash32, owners = compiled.spec, mmh3.hash, compiled.owners
    names = [v.variant for v in spec.variants if v.variant in env.flag.variants]
    if not names:
        return lambda ctx, unit, state: None
    cutoffs = variant_cutoffs(tuple(v for v in spec.variants if v.variant in env.flag.variants))
    split = {n: env.result(n, SPLIT, rule.id, spec.key) for n in names}
    forced = {u: env.result(v, TARGETING_MATCH, rule.id, spec.key)
              for u, v in spec.allowlist.items() if v in env.flag.variants}
    blocked, targeting, rivals = frozenset(spec.blocklist), env.conditions, compiled.rivals
    layer_prefix, running = f"{compiled.layer_salt}:", spec.status == "running"

    def experiment(ctx: Context, unit: str | None, state: EvalState | None) -> Evaluation | None:
        if unit is None:
            return None
        sticky = state.sticky if state is not None else {}
        kept = sticky.get(spec.key)
        if kept is not None and kept in split:
            return split[kept]  # enrolled units keep their variant (running or paused)
        hit = forced.get(unit)
        if hit is not None:
            return hit
        if not running or unit in blocked or not in_window(spec, state):
            return None
        if rivals and any(other in sticky for other in rivals):
            return None  # held by another experiment of this layer
        if owners[hash32(layer_prefix + unit, 0, False) % BUCKETS] != spec.key:
            return None
        for condition in targeting:
            if not condition(ctx, unit):
                return None  # filtered after allocation: not handed to anyone else
        return split[pick_variant(spec.variant_salt, unit, names, cutoffs)[0]]

    return experiment


def _compile_release(rule: Rule, env: RuleEnv) -> RuleFn:
    # a released winner is served outside the experiment (no `experiment`, no exposure)
    # unless a rollout guards the ramp: then its arms are recorded under the rollout's subject
    hit, mark, control_from = _arms(rule, env, env.result(rule.variant or "", SPLIT, rule.id))
    # its own salt: the release ramp is independent of the flag's other rollouts
    prefix = f"{rule.params.get('salt') or env.flag.salt + ':release'}:"
    return _ramp(prefix, threshold(rule.percentage or 0), env.conditions, hit, mark, control_from)




RULE_KINDS: dict[str, RuleKind] = {kind.name: kind for kind in (
    RuleKind("force", _force_fields, _compile_force),
    RuleKind("rollout", _rollout_fields, _compile_rollout),
    RuleKind("experiment", _experiment_fields, _compile_experiment),
    RuleKind("release", _release_fields, _compile_release),
)}
