"""Compile flags and segments once into closures that evaluate a context quickly.

Every possible outcome of a flag (each rule hit, allowlist hit, default, off) is an
`Evaluation` built at compile time, so the hot path only looks up context attributes,
calls operator `match` functions it already holds, hashes for rollouts, and returns a
prebuilt result. Operator names and rule kinds are resolved here, never per evaluation.

Condition semantics:

- Conditions of a rule (and of a segment) are ANDed; a rule without conditions matches
  everyone.
- A missing attribute (absent or ``null``) never matches, whatever ``negate`` says:
  ``country neq "FR"`` must not target users whose country is unknown. Operators that
  accept missing values (``exists``) are the exception: ``negate`` then means "absent".
- ``negate`` flips the result for a present attribute. A present value the operator
  cannot compare (``match`` raises TypeError/ValueError) does not match, negated or not.
- The attributes ``key`` and ``targetingKey`` both read the unit key (as a string).
- A segment contains its included units, never its excluded ones, and otherwise the
  units matching all its conditions; a segment without conditions contains only its
  included units. A negated segment condition means "not in the segment".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from flagship.errors import ValidationError
from flagship.flags.model import Condition, Flag, Rule, Segment
from flagship.flags.operators import Operator, UnavailableOperator

# OpenFeature resolution reasons and error codes.
DISABLED, TARGETING_MATCH, SPLIT, DEFAULT, ERROR = (
    "DISABLED", "TARGETING_MATCH", "SPLIT", "DEFAULT", "ERROR")
FLAG_NOT_FOUND, INVALID_CONTEXT, PARSE_ERROR, TYPE_MISMATCH, GENERAL = (
    "FLAG_NOT_FOUND", "INVALID_CONTEXT", "PARSE_ERROR", "TYPE_MISMATCH", "GENERAL")

UNIT_ATTRIBUTES = frozenset({"key", "targetingKey"})

Context = Mapping[str, Any]
ConditionFn = Callable[[Context, "str | None"], Any]
RuleFn = Callable[[Context, "str | None", "EvalState | None"], "Evaluation | ControlMark | None"]
FlagFn = Callable[..., "Evaluation"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of evaluating one flag for one context (OpenFeature's resolution details).

    Results are shared between evaluations, and ``value`` is the flag's own variant
    value: treat both as read-only.
    """

    flag_key: str
    value: Any
    variant: str | None
    reason: str
    rule_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    experiment: str | None = None
    arm: str | None = None  # "treatment" | "control" of a guarded rollout (experiment = its subject)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (every field, nulls included)."""
        return {"flag_key": self.flag_key, "value": self.value, "variant": self.variant,
                "reason": self.reason, "rule_id": self.rule_id,
                "error_code": self.error_code, "error_message": self.error_message,
                "experiment": self.experiment, "arm": self.arm}


@dataclass(frozen=True, slots=True)
class ControlMark:
    """What a guarded rollout rule returns for a unit of its mirrored control arm: the
    evaluation goes on to the next rules, and their result is recorded as the control."""

    subject: str
    rule_id: str


def in_control(result: Evaluation, mark: ControlMark) -> Evaluation:
    """`result` (served by a later rule or the default) marked as the control arm of `mark`.
    A unit a later experiment randomises belongs to that experiment instead."""
    if result.experiment is not None or result.reason == ERROR:
        return result
    return replace(result, experiment=mark.subject, arm="control")


@dataclass(frozen=True)
class EvalState:
    """Per-evaluation inputs beyond the context: the time and the unit's sticky records.

    `now` is epoch seconds; `sticky` maps experiment key -> variant for this unit.
    """

    now: float
    sticky: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleEnv:
    """What a rule-kind compiler gets besides the rule: its flag and compiled conditions."""

    flag: Flag
    conditions: tuple[ConditionFn, ...]
    extras: Mapping[str, Any] = field(default_factory=dict)

    def result(self, variant: str, reason: str, rule_id: str | None,
               experiment: str | None = None, arm: str | None = None) -> Evaluation:
        """Return the prebuilt Evaluation serving `variant` of this flag."""
        return Evaluation(self.flag.key, self.flag.variants[variant], variant, reason, rule_id,
                          experiment=experiment, arm=arm)


RuleCompiler = Callable[[Rule, RuleEnv], RuleFn]


# -- conditions ------------------------------------------------------------------------

def _missing_result(operator: Operator, prepared: Any, negate: bool) -> bool:
    if not operator.accepts_missing:
        return False
    try:
        return (not operator.match(None, prepared)) is negate
    except (TypeError, ValueError):
        return False


def compile_condition(condition: Condition, operators: Mapping[str, Operator],
                      segments: Mapping[str, ConditionFn]) -> ConditionFn:
    """Compile one condition into ``fn(context, unit) -> truthy``."""
    if condition.segment is not None:
        member = segments.get(condition.segment)
        if member is None:
            raise ValidationError(f"unknown segment {condition.segment!r}", field="segment")
        return (lambda ctx, unit: not member(ctx, unit)) if condition.negate else member
    operator = operators.get(condition.operator or "")
    if operator is None:
        raise ValidationError(f"unknown operator {condition.operator!r}", field="operator")
    if isinstance(operator, UnavailableOperator):  # reached: the evaluation answers ERROR
        error = operator.fail()

        def unavailable(ctx: Context, unit: str | None) -> bool:
            raise error
        return unavailable
    prepared = operator.compile(list(condition.values))
    match, negate, attribute = operator.match, condition.negate, condition.attribute
    missing = _missing_result(operator, prepared, negate)

    def on_unit(ctx: Context, unit: str | None) -> bool:
        if unit is None:
            return missing
        try:
            return (not match(unit, prepared)) is negate
        except (TypeError, ValueError):
            return False

    def on_attribute(ctx: Context, unit: str | None) -> bool:
        value = ctx.get(attribute)
        if value is None:
            return missing
        try:
            return (not match(value, prepared)) is negate
        except (TypeError, ValueError):
            return False

    return on_unit if attribute in UNIT_ATTRIBUTES else on_attribute


def compile_segment(segment: Segment, operators: Mapping[str, Operator]) -> ConditionFn:
    """Compile a segment into a membership test ``fn(context, unit) -> bool``."""
    included, excluded = frozenset(segment.included), frozenset(segment.excluded)
    conditions = tuple(compile_condition(c, operators, {}) for c in segment.conditions)
    if not conditions:
        return lambda ctx, unit: unit in included

    def member(ctx: Context, unit: str | None) -> bool:
        if unit in included:
            return True
        if unit in excluded:
            return False
        for condition in conditions:
            if not condition(ctx, unit):
                return False
        return True

    return member


# -- flags -----------------------------------------------------------------------------

def unit_key(raw: Any) -> str | None:
    """Normalise a context key: strings as is ("" means none), numbers as decimal text.

    Raises TypeError for anything else (booleans, objects, lists, non-finite numbers).
    """
    if raw is None or (isinstance(raw, str) and not raw):
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, float) and math.isfinite(raw):
        # Integral floats hash like the integer, as a JavaScript SDK would print them.
        return str(int(raw)) if raw.is_integer() else repr(raw)
    raise TypeError(f"context key must be a string or number, got {type(raw).__name__}")


def invalid_context(default: Evaluation, message: str) -> Evaluation:
    """Return the default outcome marked ERROR / INVALID_CONTEXT."""
    return Evaluation(default.flag_key, default.value, default.variant, ERROR, None,
                      INVALID_CONTEXT, message)


def compile_flag(flag: Flag, operators: Mapping[str, Operator],
                 segments: Mapping[str, ConditionFn],
                 extras: Mapping[str, Any] | None = None,
                 kinds: Mapping[str, Any] | None = None) -> FlagFn:
    """Compile a flag into ``fn(context, state=None) -> Evaluation``.

    `segments` are compiled segments; `extras` is snapshot-wide data that rule kinds
    beyond force/rollout need (layers and experiments).
    """
    if not flag.enabled:
        # The kill switch wins over everything, even a malformed context.
        off = Evaluation(flag.key, flag.variants[flag.off_variant], flag.off_variant, DISABLED)
        return lambda context, state=None: off
    default = Evaluation(flag.key, flag.variants[flag.default_variant], flag.default_variant,
                         DEFAULT)
    allow = {unit: Evaluation(flag.key, flag.variants[v], v, TARGETING_MATCH)
             for unit, v in flag.allowlist.items()}
    block = frozenset(flag.blocklist)
    kinds = rule_kinds() if kinds is None else kinds
    rules = tuple(_compile_rule(flag, rule, operators, segments, extras or {}, kinds)
                  for rule in flag.rules)

    def evaluate(context: Any, state: EvalState | None = None) -> Evaluation:
        if type(context) is not dict and not isinstance(context, Mapping):
            return invalid_context(default, "context must be an object")
        raw = context.get("key")
        if raw is None:
            raw = context.get("targetingKey")
        if type(raw) is str and raw:
            unit: str | None = raw
        else:
            try:
                unit = unit_key(raw)
            except TypeError as err:
                return invalid_context(default, str(err))
        if unit is not None:
            hit = allow.get(unit)
            if hit is not None:
                return hit
            if unit in block:
                return default
        mark = None
        for rule in rules:
            result = rule(context, unit, state)
            if result is not None:
                if result.__class__ is ControlMark:
                    mark = mark or result  # the first guarded rollout a unit reaches owns it
                    continue
                return result if mark is None else in_control(result, mark)
        return default if mark is None else in_control(default, mark)

    return evaluate


def rule_kinds() -> Mapping[str, Any]:
    """The rule-kind table (`flagship.flags.rules.RULE_KINDS`), built in one place."""
    from flagship.flags.rules import RULE_KINDS  # the table imports this module's types

    return RULE_KINDS


def _compile_rule(flag: Flag, rule: Rule, operators: Mapping[str, Operator],
                  segments: Mapping[str, ConditionFn], extras: Mapping[str, Any],
                  kinds: Mapping[str, Any]) -> RuleFn:
    kind = kinds.get(rule.kind)
    if kind is None:
        raise ValidationError(f"unknown rule kind {rule.kind!r}", field="kind")
    conditions = tuple(compile_condition(c, operators, segments) for c in rule.conditions)
    return kind.compile(rule, RuleEnv(flag, conditions, extras))
