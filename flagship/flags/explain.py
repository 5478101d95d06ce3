"""Explain one flag evaluation step by step, with the raw bucket numbers (the slow path).

`explain` walks the uncompiled models in the order ``compile_flag`` (evaluate.py) and
``_compile_experiment`` (rules.py) check things, and reuses their matching and hashing
pieces (``compile_condition``, ``unit_key``, ``bucket``, ``pick_variant``...), so only
the control flow is repeated here. That control flow must stay in lock-step with theirs:
``tests/test_explain.py`` compares ``explain`` with ``evaluate`` on generated contexts,
and `checked` reports any disagreement instead of hiding it.

Conditions that evaluation never reaches (after the first failure, or in a rule skipped
earlier) are still shown, marked ``"evaluated": false``; an error one of them raises is
reported on the condition, because evaluation would not have run it.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from flagship.flags.bucketing import bucket, threshold
from flagship.flags.bucketing import BUCKETS
from flagship.flags.evaluate import (
    DEFAULT, DISABLED, ERROR, GENERAL, SPLIT, TARGETING_MATCH, UNIT_ATTRIBUTES, ControlMark, in_control,
    ConditionFn, EvalState, Evaluation, RuleEnv, compile_condition, invalid_context, unit_key)
from flagship.flags.evaluate import rule_kinds
from flagship.flags.traffic import ACTIVE, in_window, pick_variant, variant_cutoffs
from flagship.flags.model import Condition, Flag, Rule, Segment, condition_to_dict
from flagship.flags.operators import Operator

Step = dict[str, Any]


@dataclass(frozen=True)
class _Env:
    """Everything a rule explainer reads: the flag, the context and the snapshot's tables."""

    flag: Flag
    context: Mapping[str, Any]
    unit: str | None
    state: EvalState | None
    operators: Mapping[str, Operator]
    segments: Mapping[str, Segment]
    members: Mapping[str, ConditionFn]
    extras: Mapping[str, Any]


def explain(flag: Flag, context: Any, state: EvalState | None = None, *,
            operators: Mapping[str, Operator], segments: Mapping[str, Segment],
            compiled_segments: Mapping[str, ConditionFn],
            extras: Mapping[str, Any]) -> dict[str, Any]:
    """Return every step of evaluating `flag` for `context`, and the result, as JSON-able data.

    Takes what ``compile_flag`` takes (`extras` is ``compile_extras()``'s output) plus
    the segment models; errors come back as reason ERROR, as from ``evaluate``.
    """
    steps: list[Step] = []
    doc: dict[str, Any] = {"flag": flag.key, "context_key": None, "steps": steps}
    tables = (operators, segments, compiled_segments, extras)
    try:
        outcome = _walk(flag, context, state, tables, doc)
    except Exception as err:  # noqa: BLE001 - Snapshot.evaluate turns the same failure into GENERAL
        message = f"{type(err).__name__}: {err}"
        steps.append({"step": "error", "error": message,
                      "why": "evaluation raised: serving the default with reason ERROR"})
        outcome = Evaluation(flag.key, flag.variants[flag.default_variant], flag.default_variant,
                             ERROR, None, GENERAL, message)
    doc["result"] = result_of(outcome)
    return doc


def result_of(evaluation: Evaluation) -> dict[str, Any]:
    """The ``result`` part of an explanation: the Evaluation's fields but its flag key."""
    doc = evaluation.to_dict()
    del doc["flag_key"]
    doc["value"] = copy.deepcopy(doc["value"])  # the flag's own value: callers may mutate ours
    return doc


def not_found(evaluation: Evaluation) -> dict[str, Any]:
    """The explanation of a flag key the snapshot does not hold (FLAG_NOT_FOUND)."""
    return {"flag": evaluation.flag_key, "context_key": None,
            "steps": [{"step": "flag", "why": evaluation.error_message}],
            "result": result_of(evaluation)}


def checked(doc: dict[str, Any], evaluation: Evaluation) -> dict[str, Any]:
    """Make `doc` report `evaluation`'s result, flagging a disagreement with the explainer."""
    expected = result_of(evaluation)
    if doc["result"] != expected:
        # A debugging aid that lies is worse than none: say so, and trust evaluate.
        doc["mismatch"] = {"explained": doc["result"],
                           "why": "the explainer disagrees with evaluate: the result is "
                                  "evaluate's, the steps may be wrong (a bug: please report)"}
        doc["result"] = expected
    return doc


# -- flag-level steps ----------------------------------------------------------------------

def _walk(flag: Flag, context: Any, state: EvalState | None, tables: tuple[Any, ...],
          doc: dict[str, Any]) -> Evaluation:
    steps: list[Step] = doc["steps"]
    steps.append({"step": "enabled", "enabled": flag.enabled,
                  "why": "flag is on" if flag.enabled else
                  f"kill switch: the flag is off, serving {flag.off_variant!r}"})
    if not flag.enabled:  # the kill switch wins over everything, even a malformed context
        return _serve(flag, flag.off_variant, DISABLED, None)
    default = _serve(flag, flag.default_variant, DEFAULT, None)
    unit, error = _unit(context, steps)
    if error is not None:
        return invalid_context(default, error)
    doc["context_key"] = unit
    listed = _lists(flag, unit, default, steps)
    if listed is not None:
        return listed
    env = _Env(flag, context, unit, state, *tables)
    mark: ControlMark | None = None
    for index, rule in enumerate(flag.rules):
        step: Step = {"step": "rule", "rule_id": rule.id, "kind": rule.kind, "index": index}
        steps.append(step)  # before explaining: an error step then follows the rule it hit
        outcome = _EXPLAINERS.get(rule.kind, _compiled_only)(rule, env, step)
        if isinstance(outcome, ControlMark):
            mark = mark or outcome
            continue
        if outcome is not None:
            return outcome if mark is None else in_control(outcome, mark)
    steps.append({"step": "default", "variant": flag.default_variant,
                  "why": f"no rule matched: serving the default {flag.default_variant!r}"})
    return default if mark is None else in_control(default, mark)


def _unit(context: Any, steps: list[Step]) -> tuple[str | None, str | None]:
    """The unit key of `context` and the INVALID_CONTEXT message, if any."""
    if not isinstance(context, Mapping):
        message = "context must be an object"
        steps.append({"step": "unit_key", "unit": None, "error": message,
                      "why": f"the context is a {type(context).__name__}: INVALID_CONTEXT"})
        return None, message
    source, raw = "key", context.get("key")
    if raw is None:
        source, raw = "targetingKey", context.get("targetingKey")
    step: Step = {"step": "unit_key", "unit": None, "source": source, "raw": _jsonable(raw)}
    steps.append(step)
    try:
        unit = unit_key(raw)
    except TypeError as err:
        step.update(error=str(err), why=f"{source} cannot be a unit key: INVALID_CONTEXT")
        return None, str(err)
    step["unit"] = unit
    step["why"] = (f"unit {unit!r} from {source}" if unit is not None else
                   "no key or targetingKey: allowlists and hashed rules skip this context")
    return unit, None


def _lists(flag: Flag, unit: str | None, default: Evaluation,
           steps: list[Step]) -> Evaluation | None:
    """The allowlist and blocklist steps; the outcome when either decides."""
    variant = flag.allowlist.get(unit) if unit is not None else None
    allow: Step = {"step": "allowlist", "hit": variant is not None}
    steps.append(allow)
    if variant is not None:
        allow.update(variant=variant, why=f"unit {unit!r} is allowlisted to {variant!r}")
        return _serve(flag, variant, TARGETING_MATCH, None)
    blocked = unit is not None and unit in frozenset(flag.blocklist)
    steps.append({"step": "blocklist", "hit": blocked})
    if blocked:
        steps[-1]["why"] = f"unit {unit!r} is blocklisted: serving the default"
        return default
    return None


def _serve(flag: Flag, variant: str, reason: str, rule_id: str | None,
           experiment: str | None = None) -> Evaluation:
    return Evaluation(flag.key, flag.variants[variant], variant, reason, rule_id,
                      experiment=experiment)


# -- conditions ----------------------------------------------------------------------------

def _conditions(conditions: tuple[Condition, ...], env: _Env, reached: bool,
                strict: bool = True) -> tuple[list[Step], bool]:
    """Explain ANDed conditions; `reached`: evaluation runs them, stopping at the first miss.

    Only a condition evaluation runs may raise (when `strict`): that is its error too.
    """
    docs: list[Step] = []
    matched_all = True
    for condition in conditions:
        live = reached and matched_all
        test = compile_condition(condition, env.operators, env.members)
        try:
            matched = bool(test(env.context, env.unit))
        except Exception as err:  # noqa: BLE001 - see the docstring
            if live and strict:
                raise
            docs.append({"condition": _jsonable(condition_to_dict(condition)), "matched": False,
                         "evaluated": live, "error": f"{type(err).__name__}: {err}"})
            matched_all = False
            continue
        docs.append(_condition_doc(condition, matched, live, env))
        matched_all = matched_all and matched
    return docs, matched_all


def _condition_doc(condition: Condition, matched: bool, live: bool, env: _Env) -> Step:
    doc: Step = {"condition": _jsonable(condition_to_dict(condition))}
    if condition.segment is not None:
        doc.update(attribute_value=env.unit, present=env.unit is not None, matched=matched,
                   evaluated=live, segment=_segment_doc(condition, matched, live, env))
        return doc
    if condition.attribute in UNIT_ATTRIBUTES:
        value = env.unit
    else:
        value = _safe(lambda: env.context.get(condition.attribute or ""))
    doc.update(attribute_value=_jsonable(value), present=value is not None, matched=matched,
               evaluated=live)
    if value is None and not matched:
        doc["why"] = "attribute missing (absent or null): never matches, negated or not"
    return doc


def _segment_doc(condition: Condition, matched: bool, live: bool, env: _Env) -> Step:
    member = matched != condition.negate  # a negated segment condition is "not a member"
    doc: Step = {"key": condition.segment, "member": member}
    segment = env.segments.get(condition.segment or "")
    if segment is None:
        return doc
    # compile_segment's order: included, then excluded, then the segment's own conditions
    if env.unit is not None and env.unit in segment.included:
        doc["via"] = "included"
    elif env.unit is not None and env.unit in segment.excluded:
        doc["via"] = "excluded"
    elif not segment.conditions:
        doc.update(via="conditions", conditions=[],
                   why="not included; a segment without conditions holds only those")
    else:
        doc["via"] = "conditions"
        doc["conditions"] = _conditions(segment.conditions, env, live, strict=False)[0]
    return doc


def _failed_why(docs: list[Step]) -> str:
    for number, doc in enumerate(docs, 1):
        if not doc["matched"]:
            return f"condition {number} did not match"
    return "conditions matched"


# -- rule kinds ----------------------------------------------------------------------------

def _force(rule: Rule, env: _Env, step: Step) -> Evaluation | None:
    docs, matched = _conditions(rule.conditions, env, reached=True)
    step.update(conditions=docs, conditions_matched=matched, matched=matched,
                variant=rule.variant)
    if not matched:
        step["why"] = _failed_why(docs)
        return None
    step["why"] = f"{'conditions matched' if docs else 'no conditions'}: forcing {rule.variant!r}"
    return _serve(env.flag, rule.variant or "", TARGETING_MATCH, rule.id)


def _rollout(rule: Rule, env: _Env, step: Step) -> Evaluation | None:
    return _ramp(rule, env, step, env.flag.salt)


def _release(rule: Rule, env: _Env, step: Step) -> Evaluation | None:
    # rules._compile_release: its own salt, so the ramp is independent of other rollouts;
    # a released winner is served outside the experiment (no `experiment` in the result)
    return _ramp(rule, env, step, f"{rule.params.get('salt') or env.flag.salt + ':release'}")


def _ramp(rule: Rule, env: _Env, step: Step, salt: str) -> Evaluation | ControlMark | None:
    """A rollout or release rule: no unit -> skip; conditions; bucket < threshold; for a
    guarded rule, the mirrored control arm from bucket 10000 - threshold."""
    unit, cutoff = env.unit, threshold(rule.percentage or 0)
    docs, matched = _conditions(rule.conditions, env, reached=unit is not None)
    number = bucket(salt, unit) if unit is not None else None
    inside = number is not None and number < cutoff
    hit = unit is not None and matched and inside
    subject = rule.params.get("subject")
    tracked = bool(subject) and bool(rule.params.get("control")) and cutoff <= BUCKETS // 2
    control = unit is not None and matched and not inside and tracked and number >= BUCKETS - cutoff
    step.update(conditions=docs, conditions_matched=matched, salt=salt, bucket=number,
                threshold=cutoff, in_rollout=inside, matched=hit, variant=rule.variant)
    if subject:
        step.update(rollout_subject=subject, arm="treatment" if hit else "control" if control else None,
                    control_from=BUCKETS - cutoff if tracked else None)
    share = f"{rule.percentage or 0:g}%"
    if unit is None:
        step["why"] = "no unit key: nothing stable to hash, the rule is skipped"
    elif not matched:
        step["why"] = _failed_why(docs)
    elif inside:
        step["why"] = f"bucket {number} < threshold {cutoff} ({share}): serving {rule.variant!r}"
    elif control:
        step["why"] = (f"bucket {number} >= {BUCKETS - cutoff}: in the rollout's mirrored control "
                       "arm (recorded as control, served what the next rules give)")
    else:
        step["why"] = f"bucket {number} >= threshold {cutoff} ({share}): not in the rollout"
    if hit:
        served = _serve(env.flag, rule.variant or "", SPLIT, rule.id)
        return replace(served, experiment=subject, arm="treatment") if subject else served
    return ControlMark(subject, rule.id) if control else None


def _compiled_only(rule: Rule, env: _Env, step: Step) -> Evaluation | None:
    """A plugin rule kind: no explainer here, so run its compiled rule for the outcome."""
    conditions = tuple(compile_condition(c, env.operators, env.members) for c in rule.conditions)
    run = rule_kinds()[rule.kind].compile(rule, RuleEnv(env.flag, conditions, env.extras))
    outcome = run(env.context, env.unit, env.state)
    step.update(matched=outcome is not None,
                variant=outcome.variant if outcome is not None else None,
                why=f"no explainer for kind {rule.kind!r}: outcome of its compiled rule")
    return outcome


# -- experiment rules (lock-step with layers._compile_experiment) --------------------------

def _experiment(rule: Rule, env: _Env, step: Step) -> Evaluation | None:
    compiled = env.extras.get("experiments", {}).get(rule.params["experiment"])
    step.update(_experiment_facts(rule.params["experiment"], compiled, env))
    outcome, why = _enrol(rule, compiled, env, step)
    if "conditions" not in step:  # targeting was never reached: show it for information
        step["conditions"], step["conditions_matched"] = _conditions(
            rule.conditions, env, reached=False)
    step.update(matched=outcome is not None,
                variant=outcome.variant if outcome is not None else None, why=why)
    return outcome


def _enrol(rule: Rule, compiled: Any, env: _Env, step: Step) -> tuple[Evaluation | None, str]:
    """Decide like the compiled experiment rule, in its order of checks; return the why."""
    key, flag = rule.params["experiment"], env.flag
    if compiled is None:
        return None, f"inert: no experiment {key!r} in the snapshot"
    spec = compiled.spec
    if spec.status not in ACTIVE:
        return None, f"inert: experiment is {spec.status} (sticky records are ignored)"
    if spec.flag != flag.key:
        return None, f"inert: experiment {key!r} belongs to flag {spec.flag!r}"
    names = [v.variant for v in spec.variants if v.variant in flag.variants]
    if not names:
        return None, "inert: none of the experiment's variants is a variant of this flag"
    if env.unit is None:
        return None, "no unit key: nothing stable to hash, the rule is skipped"
    sticky = env.state.sticky if env.state is not None else {}
    kept = sticky.get(spec.key)
    # a dict, as in the compiled rule: an unhashable record must fail the same way
    if kept is not None and kept in dict.fromkeys(names):
        return _serve(flag, kept, SPLIT, rule.id, key), f"sticky: first assigned {kept}"
    forced = {u: v for u, v in spec.allowlist.items() if v in flag.variants}.get(env.unit)
    if forced is not None:
        return (_serve(flag, forced, TARGETING_MATCH, rule.id, key),
                f"allowlisted in experiment {key!r}: forced {forced!r}")
    return _enrol_running(rule, compiled, names, sticky, env, step)


def _enrol_running(rule: Rule, compiled: Any, names: list[str], sticky: Mapping[str, str],
                   env: _Env, step: Step) -> tuple[Evaluation | None, str]:
    spec, unit = compiled.spec, env.unit or ""
    if spec.status != "running":
        return None, f"experiment is {spec.status}: only units with a sticky record are served"
    if unit in frozenset(spec.blocklist):
        return None, "blocklisted in the experiment"
    if not in_window(spec, env.state):
        return None, _window_why(env.state)
    held = [other for other in sorted(compiled.rivals) if other in sticky]
    if held:
        return None, f"held by experiment {held[0]}: the unit has a sticky record there"
    layer_bucket = bucket(compiled.layer_salt, unit)
    owner = compiled.owners[layer_bucket]
    if owner != spec.key:
        return None, (f"bucket {layer_bucket} belongs to experiment {owner}" if owner
                      else f"bucket {layer_bucket} is free: no experiment owns it")
    docs, matched = _conditions(rule.conditions, env, reached=True)
    step.update(conditions=docs, conditions_matched=matched)
    if not matched:
        return None, "filtered: targeting did not match; not handed to another experiment"
    weights = tuple(v for v in spec.variants if v.variant in env.flag.variants)
    cutoffs = variant_cutoffs(weights)
    variant, number = pick_variant(spec.variant_salt, unit, names, cutoffs)
    up_to = next(c for c in cutoffs if c > number)  # pick_variant's bisect_right
    return (_serve(env.flag, variant, SPLIT, rule.id, spec.key),
            f"bucket {layer_bucket} belongs to this experiment; variant bucket {number} "
            f"< {up_to}: {variant}")


def _window_why(state: EvalState | None) -> str:
    if state is None:
        return "time-boxed experiment and no clock given (state is None): not enrolled"
    return f"outside the experiment window at now={state.now}"


def _experiment_facts(key: str, compiled: Any, env: _Env) -> Step:
    """The raw numbers of an experiment rule, whether or not evaluation looks at them."""
    facts: Step = {"experiment": key, "status": None, "layer": None, "layer_salt": None,
                   "layer_bucket": None, "bucket_owner": None, "sticky_variant": None,
                   "allowlisted": False, "blocklisted": False, "in_window": None,
                   "held_by": None, "variant_bucket": None, "variant_cutoffs": []}
    if compiled is None:
        return facts
    spec, unit, state = compiled.spec, env.unit, env.state
    weights = tuple(v for v in spec.variants if v.variant in env.flag.variants)
    cutoffs = variant_cutoffs(weights)
    facts.update(status=spec.status, layer=spec.layer, layer_salt=compiled.layer_salt,
                 in_window=_safe(lambda: in_window(spec, state)),
                 variant_cutoffs=[{"variant": v.variant, "up_to": c}
                                  for v, c in zip(weights, cutoffs)])
    if unit is None:
        return facts
    sticky = _safe(lambda: state.sticky if state is not None else {}) or {}
    layer_bucket = bucket(compiled.layer_salt, unit)
    forced = spec.allowlist.get(unit)
    facts.update(
        layer_bucket=layer_bucket, bucket_owner=compiled.owners[layer_bucket],
        sticky_variant=_jsonable(_safe(lambda: sticky.get(spec.key))),
        allowlisted=forced is not None and forced in env.flag.variants,
        blocklisted=unit in spec.blocklist,
        held_by=_safe(lambda: next((o for o in sorted(compiled.rivals) if o in sticky), None)))
    if weights:
        names = [v.variant for v in weights]
        facts["variant_bucket"] = pick_variant(spec.variant_salt, unit, names, cutoffs)[1]
    return facts


_EXPLAINERS: dict[str, Callable[[Rule, _Env, Step], Evaluation | None]] = {
    "force": _force, "rollout": _rollout, "experiment": _experiment, "release": _release}


# -- helpers -------------------------------------------------------------------------------

def _safe(read: Callable[[], Any]) -> Any:
    """`read()`, or None when it raises: for facts evaluation itself never reads."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - an odd context or state must not break the explanation
        return None


def _jsonable(value: Any) -> Any:
    """`value` when it is plain JSON, else its repr (a context may carry any object)."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except Exception:  # noqa: BLE001 - TypeError, ValueError, RecursionError, odd __repr__...
        return _safe(lambda: repr(value)) or f"<{type(value).__name__}>"
