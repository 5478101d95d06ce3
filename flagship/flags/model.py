"""Flag and segment models, and their validating conversion from and to JSON documents.

``flag_from_dict`` / ``segment_from_dict`` are the only way untrusted documents become
models: they check everything and raise :class:`ValidationError` naming the dotted field
path of the first problem. ``flag_to_dict`` / ``segment_to_dict`` give the canonical
document back, so ``flag_from_dict(flag_to_dict(f), ops) == f``.
"""
from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, NoReturn

from flagship.errors import ValidationError
from flagship.flags.bucketing import check_percentage
from flagship.flags.operators import Operator
from flagship.jsonvalue import INT_LIMIT, MAX_VALUE_DEPTH, json_problem, short_repr

KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
FLAG_TYPES = ("boolean", "string", "number", "json")

_FLAG_FIELDS = ("key", "type", "description", "tags", "enabled", "variants",
                "default_variant", "off_variant", "salt", "allowlist", "blocklist", "rules")
_RULE_FIELDS = ("id", "kind", "conditions", "variant", "percentage", "params")
_ATTRIBUTE_FIELDS = ("attribute", "operator", "values", "negate")
_SEGMENT_REF_FIELDS = ("segment", "negate")
_SEGMENT_FIELDS = ("key", "name", "description", "conditions", "included", "excluded")


@dataclass(frozen=True)
class Condition:
    """One test on the context: ``attribute operator values`` or membership of ``segment``."""

    attribute: str | None = None
    operator: str | None = None
    values: tuple[Any, ...] = ()
    negate: bool = False
    segment: str | None = None


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A targeting rule; ``kind`` picks how it is validated and compiled (flags/rules.py)."""

    id: str
    kind: str
    conditions: tuple[Condition, ...] = ()
    variant: str | None = None
    percentage: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Flag:
    """A feature flag; build it with `flag_from_dict`, which validates and fills defaults."""

    key: str
    type: str
    variants: Mapping[str, Any]
    default_variant: str
    off_variant: str
    enabled: bool = True
    rules: tuple[Rule, ...] = ()
    allowlist: Mapping[str, str] = field(default_factory=dict)
    blocklist: tuple[str, ...] = ()
    salt: str
    description: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Segment:
    """A reusable audience: included units, minus excluded units, plus units matching all conditions."""

    key: str
    name: str
    description: str = ""
    conditions: tuple[Condition, ...] = ()
    included: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()


# -- small checks ----------------------------------------------------------------------

def _fail(path: str, message: str) -> NoReturn:
    raise ValidationError(message, field=path or None)


def _at(path: str, name: str | int) -> str:
    return f"{path}.{name}" if path else str(name)


def _object(value: Any, path: str, what: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"{what} must be an object, got {type(value).__name__}")
    unknown = [name for name in value if name not in allowed]
    if unknown:
        message = f"unknown field {unknown[0]!r} in {what}; allowed: {', '.join(allowed)}"
        errors = {_at(path, str(name)): [f"unknown field {name!r}"] for name in unknown}
        raise ValidationError(message, field=_at(path, str(unknown[0])), errors=errors)
    return value


def _get(doc: Mapping[str, Any], name: str, path: str, default: Any = ...) -> Any:
    # A null optional field means "use the default", as most JSON clients expect.
    value = doc.get(name)
    if value is None:
        if default is ...:
            _fail(_at(path, name), "is required")
        return default
    return value


def _string(value: Any, path: str, empty: bool = True) -> str:
    if not isinstance(value, str):
        _fail(path, f"must be a string, got {type(value).__name__}")
    if not empty and not value:
        _fail(path, "must not be empty")
    return value


def _key(value: Any, path: str) -> str:
    if not isinstance(value, str) or not KEY_PATTERN.fullmatch(value):
        _fail(path, f"invalid key {value!r}: use 1-128 letters, digits, '_', '.' or '-', "
                    "starting with a letter or digit")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"must be true or false, got {value!r}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(path, f"must be a list, got {type(value).__name__}")
    return value


def _units(value: Any, path: str) -> tuple[str, ...]:
    units = _list(value, path)
    for index, unit in enumerate(units):
        _string(unit, _at(path, index), empty=False)
    return tuple(units)


def _disjoint(first: Collection[str], second: tuple[str, ...], path: str, names: str) -> None:
    both = [unit for unit in second if unit in first]
    if both:
        _fail(path, f"unit {both[0]!r} is in both {names}")


def _is_json(value: Any) -> bool:
    if json_problem(value, MAX_VALUE_DEPTH, nul=False) is not None:
        return False  # too deep or an integer beyond 64 bits (checked without recursion)
    return _is_plain_json(value)


def _is_plain_json(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_plain_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v) for k, v in value.items())
    return False


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -INT_LIMIT <= value < INT_LIMIT
    return isinstance(value, float) and math.isfinite(value)


_VARIANT_TYPES: dict[str, Callable[[Any], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "json": _is_json,
}


_VARIANT_HINTS = {
    "number": " (a finite number; integers within 64 bits)",
    "json": f" (JSON nested at most {MAX_VALUE_DEPTH} levels; integers within 64 bits)",
}


def _variants(value: Any, flag_type: str, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        _fail(path, "must be a non-empty object of variant name -> value")
    check = _VARIANT_TYPES[flag_type]
    for name, variant in value.items():
        _key(name, _at(path, name))
        if not check(variant):
            _fail(_at(path, name), f"value {short_repr(variant)} is not a valid {flag_type} value"
                  + _VARIANT_HINTS.get(flag_type, ""))
    return dict(value)


def _variant_ref(value: Any, variants: Mapping[str, Any], path: str) -> str:
    if not isinstance(value, str) or value not in variants:
        _fail(path, f"unknown variant {value!r}; variants: {', '.join(variants)}")
    return value


# -- conditions ------------------------------------------------------------------------

def _condition(doc: Any, path: str, operators: Mapping[str, Operator],
               segment_keys: Collection[str] | None, in_segment: bool) -> Condition:
    if isinstance(doc, Mapping) and "segment" in doc:
        _object(doc, path, "segment condition", _SEGMENT_REF_FIELDS)
        if in_segment:
            _fail(_at(path, "segment"), "a segment cannot reference another segment")
        key = _key(doc["segment"], _at(path, "segment"))
        if segment_keys is not None and key not in segment_keys:
            _fail(_at(path, "segment"), f"unknown segment {key!r}")
        negate = _bool(_get(doc, "negate", path, False), _at(path, "negate"))
        return Condition(segment=key, negate=negate)
    _object(doc, path, "condition", _ATTRIBUTE_FIELDS)
    attribute = _string(_get(doc, "attribute", path), _at(path, "attribute"), empty=False)
    name = _string(_get(doc, "operator", path), _at(path, "operator"))
    operator = operators.get(name)
    if operator is None:
        _fail(_at(path, "operator"), f"unknown operator {name!r}; known: {', '.join(operators)}")
    values = _list(_get(doc, "values", path, []), _at(path, "values"))
    try:
        operator.compile(list(values))
    except (ValueError, TypeError) as err:
        _fail(_at(path, "values"), str(err))
    negate = _bool(_get(doc, "negate", path, False), _at(path, "negate"))
    return Condition(attribute, name, tuple(values), negate)


def _conditions(value: Any, path: str, operators: Mapping[str, Operator],
                segment_keys: Collection[str] | None, in_segment: bool) -> tuple[Condition, ...]:
    docs = _list(value, path)
    return tuple(_condition(doc, _at(path, i), operators, segment_keys, in_segment)
                 for i, doc in enumerate(docs))


def conditions_from_list(value: Any, path: str, operators: Mapping[str, Operator],
                         segment_keys: Collection[str] | None = None) -> tuple[Condition, ...]:
    """Validate a list of conditions (rule language) found at `path` of some document."""
    return _conditions(value, path, operators, segment_keys, in_segment=False)


def condition_to_dict(condition: Condition) -> dict[str, Any]:
    """Return the canonical document of a condition."""
    if condition.segment is not None:
        return {"segment": condition.segment, "negate": condition.negate}
    return {"attribute": condition.attribute, "operator": condition.operator,
            "values": copy.deepcopy(list(condition.values)), "negate": condition.negate}


# -- rules -----------------------------------------------------------------------------

# (variant, percentage, params) as a rule kind reads them from the rule document.
KindFields = tuple[str | None, float | None, dict[str, Any]]
KindValidator = Callable[[Mapping[str, Any], Mapping[str, Any], str], KindFields]


def rule_kinds() -> Mapping[str, Any]:
    """The rule-kind table (`flagship.flags.rules.RULE_KINDS`), built in one place."""
    from flagship.flags.rules import RULE_KINDS  # the table imports this module's helpers

    return RULE_KINDS


def _rule_ids(docs: list[Any], path: str) -> list[str]:
    """Return the id of each rule: the given one, or the next free ``rN``."""
    given: dict[str, int] = {}
    for index, doc in enumerate(docs):
        if isinstance(doc, Mapping) and doc.get("id") is not None:
            rule_id = _key(doc["id"], _at(_at(path, index), "id"))
            if rule_id in given:
                _fail(_at(_at(path, index), "id"), f"duplicate rule id {rule_id!r}")
            given[rule_id] = index
    free = (f"r{n}" for n in itertools.count(1) if f"r{n}" not in given)
    return [doc["id"] if isinstance(doc, Mapping) and doc.get("id") is not None
            else next(free) for doc in docs]


def _rules(value: Any, variants: Mapping[str, Any], operators: Mapping[str, Operator],
           segment_keys: Collection[str] | None, kinds: Mapping[str, Any]) -> tuple[Rule, ...]:
    docs = _list(value, "rules")
    rules = []
    for index, (doc, rule_id) in enumerate(zip(docs, _rule_ids(docs, "rules"))):
        path = _at("rules", index)
        _object(doc, path, "rule", _RULE_FIELDS)
        kind = _get(doc, "kind", path)
        spec = kinds.get(kind) if isinstance(kind, str) else None
        if spec is None:
            _fail(_at(path, "kind"), f"unknown rule kind {kind!r}; known: {', '.join(kinds)}")
        conditions = _conditions(_get(doc, "conditions", path, []), _at(path, "conditions"),
                                 operators, segment_keys, in_segment=False)
        variant, percentage, params = spec.fields(doc, variants, path)
        rules.append(Rule(id=rule_id, kind=kind, conditions=conditions, variant=variant,
                          percentage=percentage, params=params))
    return tuple(rules)


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """Return the canonical document of a rule (variant/percentage/params only when set)."""
    doc: dict[str, Any] = {"id": rule.id, "kind": rule.kind,
                           "conditions": [condition_to_dict(c) for c in rule.conditions]}
    if rule.variant is not None:
        doc["variant"] = rule.variant
    if rule.percentage is not None:
        doc["percentage"] = rule.percentage
    if rule.params:
        doc["params"] = copy.deepcopy(dict(rule.params))
    return doc


# -- flags and segments ----------------------------------------------------------------

def flag_from_dict(doc: Any, operators: Mapping[str, Operator],
                   segment_keys: Collection[str] | None = None,
                   kinds: Mapping[str, Any] | None = None) -> Flag:
    """Validate a flag document and return the Flag; raise ValidationError naming the field."""
    _object(doc, "", "flag", _FLAG_FIELDS)
    key = _key(_get(doc, "key", ""), "key")
    flag_type = _get(doc, "type", "")
    if flag_type not in FLAG_TYPES:
        _fail("type", f"unknown type {flag_type!r}; use one of {', '.join(FLAG_TYPES)}")
    variants = _variants(_get(doc, "variants", ""), flag_type, "variants")
    default_variant = _variant_ref(_get(doc, "default_variant", ""), variants, "default_variant")
    allowlist = _get(doc, "allowlist", "", {})
    if not isinstance(allowlist, Mapping):
        _fail("allowlist", "must be an object of unit key -> variant name")
    for unit, variant in allowlist.items():
        _string(unit, "allowlist", empty=False)
        _variant_ref(variant, variants, _at("allowlist", unit))
    blocklist = _units(_get(doc, "blocklist", "", []), "blocklist")
    _disjoint(allowlist, blocklist, "blocklist", "allowlist and blocklist")
    return Flag(
        key=key, type=flag_type, variants=variants, default_variant=default_variant,
        off_variant=_variant_ref(_get(doc, "off_variant", "", default_variant), variants,
                                 "off_variant"),
        enabled=_bool(_get(doc, "enabled", "", True), "enabled"),
        rules=_rules(_get(doc, "rules", "", []), variants, operators, segment_keys,
                     rule_kinds() if kinds is None else kinds),
        allowlist=dict(allowlist), blocklist=blocklist,
        salt=_string(_get(doc, "salt", "", key), "salt", empty=False),
        description=_string(_get(doc, "description", "", ""), "description"),
        tags=_units(_get(doc, "tags", "", []), "tags"),
    )


def flag_to_dict(flag: Flag) -> dict[str, Any]:
    """Return the canonical JSON document of a flag."""
    return {
        "key": flag.key, "type": flag.type, "description": flag.description,
        "tags": list(flag.tags), "enabled": flag.enabled,
        "variants": copy.deepcopy(dict(flag.variants)),
        "default_variant": flag.default_variant, "off_variant": flag.off_variant,
        "salt": flag.salt, "allowlist": dict(flag.allowlist), "blocklist": list(flag.blocklist),
        "rules": [rule_to_dict(rule) for rule in flag.rules],
    }


def segment_from_dict(doc: Any, operators: Mapping[str, Operator]) -> Segment:
    """Validate a segment document and return the Segment; raise ValidationError naming the field."""
    _object(doc, "", "segment", _SEGMENT_FIELDS)
    key = _key(_get(doc, "key", ""), "key")
    included = _units(_get(doc, "included", "", []), "included")
    excluded = _units(_get(doc, "excluded", "", []), "excluded")
    _disjoint(set(included), excluded, "excluded", "included and excluded")
    return Segment(
        key=key,
        name=_string(_get(doc, "name", "", key), "name", empty=False),
        description=_string(_get(doc, "description", "", ""), "description"),
        conditions=_conditions(_get(doc, "conditions", "", []), "conditions", operators,
                               None, in_segment=True),
        included=included, excluded=excluded,
    )


def segment_to_dict(segment: Segment) -> dict[str, Any]:
    """Return the canonical JSON document of a segment."""
    return {
        "key": segment.key, "name": segment.name, "description": segment.description,
        "conditions": [condition_to_dict(c) for c in segment.conditions],
        "included": list(segment.included), "excluded": list(segment.excluded),
    }
