"""Flag and segment documents: defaults, canonical round trip, validation field paths."""
from __future__ import annotations

import copy
import json
from typing import Any, Callable

import pytest

from flagship.errors import ValidationError
from flagship.flags import evaluate, model
from flagship.flags.model import (
    Condition, Rule, flag_from_dict, flag_to_dict, segment_from_dict, segment_to_dict)
from flagship.flags.operators import default_operators

OPS = default_operators()


def minimal() -> dict[str, Any]:
    return {"key": "new-checkout", "type": "boolean", "variants": {"on": True, "off": False},
            "default_variant": "off"}


def full() -> dict[str, Any]:
    return {
        "key": "checkout.v2_beta-1", "type": "json", "description": "New checkout",
        "tags": ["payments", "q3"], "enabled": False,
        "variants": {"control": {"steps": 3}, "treatment": {"steps": 1, "tags": ["x", None]}},
        "default_variant": "control", "off_variant": "control", "salt": "checkout-salt",
        "allowlist": {"qa-1": "treatment"}, "blocklist": ["bot-9"],
        "rules": [
            {"id": "staff", "kind": "force", "variant": "treatment",
             "conditions": [{"segment": "staff", "negate": False},
                            {"attribute": "country", "operator": "in",
                             "values": ["US", "CA"], "negate": True}]},
            {"id": "ramp", "kind": "rollout", "variant": "treatment", "percentage": 12.5,
             "conditions": []},
        ],
    }


def test_defaults_are_filled() -> None:
    flag = flag_from_dict(minimal(), OPS)
    assert flag.enabled is True
    assert flag.off_variant == "off"
    assert flag.salt == "new-checkout"
    assert (flag.rules, flag.allowlist, flag.blocklist, flag.description, flag.tags) == (
        (), {}, (), "", ())


def test_null_optional_fields_mean_default() -> None:
    doc = {**minimal(), "off_variant": None, "rules": None, "description": None}
    flag = flag_from_dict(doc, OPS)
    assert (flag.off_variant, flag.rules, flag.description) == ("off", (), "")


def test_full_document_round_trips_exactly() -> None:
    doc = full()
    flag = flag_from_dict(doc, OPS, segment_keys={"staff"})
    assert flag_to_dict(flag) == doc
    assert flag_from_dict(json.loads(json.dumps(flag_to_dict(flag))), OPS) == flag
    assert flag.rules[0].conditions[0] == Condition(segment="staff")
    assert flag.rules[0].conditions[1] == Condition("country", "in", ("US", "CA"), True)


def test_canonical_document_fills_every_field() -> None:
    canonical = flag_to_dict(flag_from_dict(minimal(), OPS))
    assert canonical == {
        "key": "new-checkout", "type": "boolean", "description": "", "tags": [],
        "enabled": True, "variants": {"on": True, "off": False}, "default_variant": "off",
        "off_variant": "off", "salt": "new-checkout", "allowlist": {}, "blocklist": [],
        "rules": []}


def test_to_dict_does_not_share_mutable_state() -> None:
    flag = flag_from_dict(full(), OPS)
    doc = flag_to_dict(flag)
    doc["variants"]["treatment"]["steps"] = 99
    doc["rules"][0]["conditions"][1]["values"].append("MX")
    assert flag.variants["treatment"]["steps"] == 1
    assert flag.rules[0].conditions[1].values == ("US", "CA")


def test_missing_rule_ids_are_assigned_without_collisions() -> None:
    rule = {"kind": "force", "variant": "on"}
    doc = {**minimal(), "rules": [rule, {**rule, "id": "r1"}, rule, {**rule, "id": "r3"}, rule]}
    assert [r.id for r in flag_from_dict(doc, OPS).rules] == ["r2", "r1", "r4", "r3", "r5"]


def test_segment_round_trip_and_defaults() -> None:
    segment = segment_from_dict({"key": "staff"}, OPS)
    assert (segment.name, segment.conditions, segment.included) == ("staff", (), ())
    doc = {"key": "staff", "name": "Staff", "description": "employees",
           "conditions": [{"attribute": "email", "operator": "ends_with",
                           "values": ["@acme.com"], "negate": False}],
           "included": ["u-1"], "excluded": ["u-2"]}
    assert segment_to_dict(segment_from_dict(doc, OPS)) == doc


def test_rule_kinds_are_one_table_that_model_and_compiler_both_read() -> None:
    from flagship.flags.rules import RULE_KINDS

    assert set(RULE_KINDS) == {"force", "rollout", "experiment", "release"}
    assert model.rule_kinds() is RULE_KINDS is evaluate.rule_kinds()
    assert all(kind.name == name for name, kind in RULE_KINDS.items())


def set_path(path: str, value: Any) -> Callable[[dict], None]:
    """Return a mutator that sets `value` at dotted `path` (list indexes allowed)."""
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        elif value is DELETE:
            del target[last]
        else:
            target[last] = value
    return mutate


def both(*mutators: Callable[[dict], None]) -> Callable[[dict], None]:
    """Return a mutator applying every mutator in turn."""
    def mutate(doc: dict) -> None:
        for mutator in mutators:
            mutator(doc)
    return mutate


DELETE = object()
RULE = {"kind": "force", "variant": "treatment", "conditions": []}


@pytest.mark.parametrize(("mutate", "field", "message"), [
    (set_path("key", "bad key!"), "key", "invalid key 'bad key!'"),
    (set_path("key", "-dash"), "key", "invalid key"),
    (set_path("key", "k" * 129), "key", "invalid key"),
    (set_path("key", DELETE), "key", "is required"),
    (set_path("type", "integer"), "type", "unknown type 'integer'"),
    (set_path("variants", {}), "variants", "non-empty object"),
    (set_path("variants.control", float("inf")), "variants.control", "not a valid json value"),
    (set_path("variants.bad name", 1), "variants.bad name", "invalid key"),
    (set_path("default_variant", "nope"), "default_variant", "unknown variant 'nope'"),
    (set_path("off_variant", "nope"), "off_variant", "unknown variant"),
    (set_path("enabled", "yes"), "enabled", "must be true or false"),
    (set_path("salt", ""), "salt", "must not be empty"),
    (set_path("tags", "payments"), "tags", "must be a list"),
    (set_path("tags", [""]), "tags.0", "must not be empty"),
    (set_path("allowlist.qa-1", "nope"), "allowlist.qa-1", "unknown variant 'nope'"),
    (set_path("blocklist", ["qa-1"]), "blocklist", "'qa-1' is in both allowlist and blocklist"),
    (set_path("blocklist", [7]), "blocklist.0", "must be a string"),
    (set_path("colour", "red"), "colour", "unknown field 'colour'"),
    (set_path("rules", {}), "rules", "must be a list"),
    (set_path("rules.0", "force"), "rules.0", "rule must be an object"),
    (set_path("rules.0.kind", "experiment-x"), "rules.0.kind", "unknown rule kind 'experiment-x'"),
    (set_path("rules.0.kind", DELETE), "rules.0.kind", "is required"),
    (set_path("rules.0.weight", 3), "rules.0.weight", "unknown field 'weight'"),
    (set_path("rules.0.variant", "nope"), "rules.0.variant", "unknown variant"),
    (set_path("rules.0.percentage", 50), "rules.0.percentage", "force rules take no percentage"),
    (set_path("rules.0.params", {"a": 1}), "rules.0.params", "take no params"),
    (set_path("rules.1.id", "staff"), "rules.1.id", "duplicate rule id 'staff'"),
    (set_path("rules.0.id", "has space"), "rules.0.id", "invalid key"),
    (set_path("rules.1.percentage", 101), "rules.1.percentage", "between 0 and 100"),
    (set_path("rules.1.percentage", 12.345), "rules.1.percentage", "more than 2 decimals"),
    (set_path("rules.1.percentage", DELETE), "rules.1.percentage", "is required"),
    (set_path("rules.0.conditions.0.segment", "ghosts"), "rules.0.conditions.0.segment",
     "unknown segment 'ghosts'"),
    (set_path("rules.0.conditions.0.weight", 1), "rules.0.conditions.0.weight",
     "unknown field 'weight'"),
    (set_path("rules.0.conditions.1.operator", "foo"), "rules.0.conditions.1.operator",
     "unknown operator 'foo'; known: eq, neq, in"),
    (set_path("rules.0.conditions.1.operator", "matches"), None, None),
    (both(set_path("rules.0.conditions.1.operator", "matches"),
          set_path("rules.0.conditions.1.values", ["ok", "("])), "rules.0.conditions.1.values",
     "invalid regular expression '(': missing ), unterminated subpattern"),
    (set_path("rules.0.conditions.1.values", "US"), "rules.0.conditions.1.values",
     "must be a list"),
    (set_path("rules.0.conditions.1.attribute", ""), "rules.0.conditions.1.attribute",
     "must not be empty"),
    (set_path("rules.0.conditions.1.negate", 1), "rules.0.conditions.1.negate",
     "must be true or false"),
])
def test_validation_errors_name_the_field(mutate: Callable[[dict], None], field: str | None,
                                          message: str | None) -> None:
    doc = copy.deepcopy(full())
    mutate(doc)
    if field is None:  # control: a valid change must not raise
        flag_from_dict(doc, OPS, segment_keys={"staff"})
        return
    with pytest.raises(ValidationError) as caught:
        flag_from_dict(doc, OPS, segment_keys={"staff"})
    assert caught.value.field == field
    assert message in caught.value.errors[field][0]


@pytest.mark.parametrize(("flag_type", "good", "bad"), [
    ("boolean", True, 1), ("string", "x", 1), ("number", 1.5, True),
    ("number", 2, float("nan")), ("json", {"a": [1, None]}, {1: "a"}),
])
def test_variant_values_must_match_the_type(flag_type: str, good: Any, bad: Any) -> None:
    doc = {**minimal(), "type": flag_type, "variants": {"on": good, "off": good}}
    assert flag_from_dict(doc, OPS).variants["on"] == good
    doc["variants"]["on"] = bad
    with pytest.raises(ValidationError) as caught:
        flag_from_dict(doc, OPS)
    assert caught.value.field == "variants.on"


def test_unknown_segments_are_only_checked_when_keys_are_given() -> None:
    doc = {**minimal(), "rules": [{"kind": "force", "variant": "on",
                                   "conditions": [{"segment": "anything"}]}]}
    assert flag_from_dict(doc, OPS).rules[0].conditions[0].segment == "anything"
    with pytest.raises(ValidationError, match="unknown segment"):
        flag_from_dict(doc, OPS, segment_keys=set())


def test_every_unknown_field_is_reported() -> None:
    with pytest.raises(ValidationError) as caught:
        flag_from_dict({**minimal(), "colour": 1, "size": 2}, OPS)
    assert set(caught.value.errors) == {"colour", "size"}


def test_non_object_document_is_rejected() -> None:
    with pytest.raises(ValidationError, match="flag must be an object"):
        flag_from_dict(["key"], OPS)


@pytest.mark.parametrize(("doc", "field", "message"), [
    ({"key": "bad key"}, "key", "invalid key"),
    ({"key": "s", "included": ["u"], "excluded": ["u"]}, "excluded", "'u' is in both"),
    ({"key": "s", "rules": []}, "rules", "unknown field 'rules'"),
    ({"key": "s", "conditions": [{"segment": "other"}]}, "conditions.0.segment",
     "cannot reference another segment"),
    ({"key": "s", "conditions": [{"attribute": "v", "operator": "semver_gt",
                                  "values": ["1.2"]}]}, "conditions.0.values",
     "invalid semantic version"),
    ({"key": "s", "included": "u-1"}, "included", "must be a list"),
    ({"key": "s", "name": ""}, "name", "must not be empty"),
])
def test_segment_validation_errors(doc: dict, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        segment_from_dict(doc, OPS)
    assert caught.value.field == field
    assert message in str(caught.value)


def test_rules_are_frozen_values() -> None:
    rule = flag_from_dict(full(), OPS).rules[1]
    assert rule == Rule(id="ramp", kind="rollout", variant="treatment", percentage=12.5)
    with pytest.raises(AttributeError):
        rule.percentage = 50  # type: ignore[misc]
