"""Evaluation order, reasons, rollouts, segments, unit keys and never-raising snapshots."""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from flagship import Evaluation, Snapshot
from flagship.errors import ValidationError
from flagship.flags.bucketing import bucket
from flagship.flags.model import flag_from_dict
from flagship.flags.operators import Operator, default_operators

ON_OFF = {"on": True, "off": False}


def rule(kind: str = "force", variant: str = "on", *conditions: dict, **extra: Any) -> dict:
    return {"kind": kind, "variant": variant, "conditions": list(conditions), **extra}


def cond(attribute: str, operator: str, *values: Any, negate: bool = False) -> dict:
    return {"attribute": attribute, "operator": operator, "values": list(values),
            "negate": negate}


def snapshot(*flags: dict, segments: tuple[dict, ...] = (), operators: Any = None) -> Snapshot:
    return Snapshot.from_dict({"revision": 1, "flags": list(flags), "segments": list(segments)},
                              operators)


def flag(**fields: Any) -> dict:
    return {"key": "f", "type": "boolean", "variants": ON_OFF, "default_variant": "off",
            **fields}


def keys_by_bucket(salt: str, below: int, count: int = 3) -> tuple[list[str], list[str]]:
    """Return unit keys whose bucket is below / at or above `below` under `salt`."""
    inside, outside = [], []
    for i in range(1000):
        key = f"unit-{i}"
        (inside if bucket(salt, key) < below else outside).append(key)
    return inside[:count], outside[:count]


def test_disabled_serves_off_variant_before_anything_else() -> None:
    snap = snapshot(flag(enabled=False, default_variant="on", off_variant="off",
                         allowlist={"qa": "on"}, rules=[rule()]))
    for context in ({"key": "qa"}, {}, None, {"key": [1]}):
        result = snap.evaluate("f", context)
        assert (result.value, result.variant, result.reason) == (False, "off", "DISABLED")


def test_allowlist_beats_rules_and_blocklist_beats_rules() -> None:
    snap = snapshot(flag(allowlist={"qa": "off"}, blocklist=["bot"], rules=[rule(id="all")]))
    allowed, blocked, other = (snap.evaluate("f", {"key": k}) for k in ("qa", "bot", "u"))
    assert (allowed.variant, allowed.reason, allowed.rule_id) == ("off", "TARGETING_MATCH", None)
    assert (blocked.variant, blocked.reason, blocked.rule_id) == ("off", "DEFAULT", None)
    assert (other.variant, other.reason, other.rule_id) == ("on", "TARGETING_MATCH", "all")


def test_first_matching_rule_wins_and_reports_its_id() -> None:
    snap = snapshot(flag(type="string", variants={"a": "A", "b": "B", "z": "Z"},
                         default_variant="z", rules=[
                             rule("force", "a", cond("plan", "eq", "pro"), id="pro"),
                             rule("force", "b", cond("country", "eq", "US")),
                         ]))
    assert snap.evaluate("f", {"plan": "pro", "country": "US"}).rule_id == "pro"
    second = snap.evaluate("f", {"plan": "free", "country": "US"})
    assert (second.value, second.rule_id) == ("B", "r1")
    default = snap.evaluate("f", {"plan": "free"})
    assert (default.value, default.reason, default.rule_id) == ("Z", "DEFAULT", None)


def test_conditions_in_a_rule_are_anded() -> None:
    snap = snapshot(flag(rules=[rule("force", "on", cond("a", "eq", 1), cond("b", "eq", 2))]))
    assert snap.evaluate("f", {"a": 1, "b": 2}).value is True
    assert snap.evaluate("f", {"a": 1, "b": 3}).value is False
    assert snap.evaluate("f", {"a": 1}).value is False


def test_rollout_hit_is_split_and_miss_falls_through() -> None:
    inside, outside = keys_by_bucket("f", 2500)
    snap = snapshot(flag(type="string", variants={"ramp": "r", "rest": "x", "no": "n"},
                         default_variant="no", rules=[
                             rule("rollout", "ramp", cond("country", "eq", "US"),
                                  percentage=25, id="ramp"),
                             rule("force", "rest", cond("country", "eq", "US"), id="rest"),
                         ]))
    for key in inside:
        hit = snap.evaluate("f", {"key": key, "country": "US"})
        assert (hit.variant, hit.reason, hit.rule_id) == ("ramp", "SPLIT", "ramp")
    for key in outside:
        miss = snap.evaluate("f", {"key": key, "country": "US"})
        assert (miss.variant, miss.reason, miss.rule_id) == ("rest", "TARGETING_MATCH", "rest")
    assert snap.evaluate("f", {"key": inside[0], "country": "FR"}).reason == "DEFAULT"


def test_rollout_uses_the_flag_salt() -> None:
    inside, outside = keys_by_bucket("shared-salt", 5000)
    snap = snapshot(flag(salt="shared-salt", rules=[rule("rollout", "on", percentage=50)]))
    assert all(snap.evaluate("f", {"key": k}).reason == "SPLIT" for k in inside)
    assert all(snap.evaluate("f", {"key": k}).reason == "DEFAULT" for k in outside)


def test_raising_a_rollout_only_adds_units() -> None:
    def served(percentage: float) -> set[str]:
        snap = snapshot(flag(rules=[rule("rollout", "on", percentage=percentage)]))
        return {f"u{i}" for i in range(2000) if snap.evaluate("f", {"key": f"u{i}"}).value}

    ten, twenty = served(10), served(20)
    assert ten < twenty
    assert 100 < len(ten) < 300 and 300 < len(twenty) < 500
    assert served(0) == set() and len(served(100)) == 2000


def test_missing_key_skips_rollouts_and_overrides_but_not_force_rules() -> None:
    snap = snapshot(flag(type="string", variants={"a": "A", "b": "B", "c": "C"},
                         default_variant="c", allowlist={"qa": "a"},
                         rules=[rule("rollout", "a", percentage=100),
                                rule("force", "b", cond("plan", "eq", "pro"))]))
    for context in ({"plan": "pro"}, {"key": None, "plan": "pro"}, {"key": "", "plan": "pro"}):
        assert snap.evaluate("f", context).variant == "b"
    assert snap.evaluate("f", {}).reason == "DEFAULT"
    assert snap.evaluate("f", {"key": "u"}).reason == "SPLIT"


def test_targeting_key_is_an_alias_of_key() -> None:
    snap = snapshot(flag(allowlist={"qa": "on"},
                         rules=[rule("force", "on", cond("key", "starts_with", "admin-")),
                                rule("force", "on", cond("targetingKey", "eq", "t-1"))]))
    assert snap.evaluate("f", {"targetingKey": "qa"}).reason == "TARGETING_MATCH"
    assert snap.evaluate("f", {"targetingKey": "admin-1"}).rule_id == "r1"
    assert snap.evaluate("f", {"key": "t-1"}).rule_id == "r2"
    assert snap.evaluate("f", {"key": "u", "targetingKey": "qa"}).reason == "DEFAULT"
    assert snap.evaluate("f", {"key": None, "targetingKey": "qa"}).reason == "TARGETING_MATCH"


@pytest.mark.parametrize(("raw", "as_text"), [(42, "42"), (42.0, "42"), (-7, "-7"), (2.5, "2.5")])
def test_numeric_keys_are_stringified(raw: float, as_text: str) -> None:
    snap = snapshot(flag(allowlist={as_text: "on"}))
    assert snap.evaluate("f", {"key": raw}).reason == "TARGETING_MATCH"
    ramp = snapshot(flag(rules=[rule("rollout", "on", percentage=50)]))
    assert ramp.evaluate("f", {"key": raw}) == ramp.evaluate("f", {"key": as_text})


def test_missing_attribute_does_not_match_even_when_negated() -> None:
    snap = snapshot(flag(rules=[rule("force", "on", cond("country", "eq", "FR", negate=True))]))
    assert snap.evaluate("f", {"country": "US"}).value is True
    assert snap.evaluate("f", {"country": "FR"}).value is False
    assert snap.evaluate("f", {}).value is False
    assert snap.evaluate("f", {"country": None}).value is False


def test_negated_exists_matches_absence() -> None:
    snap = snapshot(flag(rules=[rule("force", "on", cond("banned", "exists", negate=True))]))
    assert snap.evaluate("f", {}).value is True
    assert snap.evaluate("f", {"banned": True}).value is False


SEGMENTS = (
    {"key": "staff", "conditions": [cond("email", "ends_with", "@acme.com"),
                                    cond("active", "eq", True)],
     "included": ["vip"], "excluded": ["fired"]},
    {"key": "pilot", "included": ["p-1"]},
)


@pytest.mark.parametrize(("context", "in_staff"), [
    ({"key": "vip"}, True),
    ({"key": "fired", "email": "x@acme.com", "active": True}, False),
    ({"key": "u", "email": "x@acme.com", "active": True}, True),
    ({"key": "u", "email": "x@acme.com", "active": False}, False),
    ({"email": "x@acme.com", "active": True}, True),
    ({"key": "u"}, False),
])
def test_segment_membership(context: dict, in_staff: bool) -> None:
    snap = snapshot(flag(rules=[rule("force", "on", {"segment": "staff"})]), segments=SEGMENTS)
    assert snap.evaluate("f", context).value is in_staff


def test_segment_without_conditions_holds_only_its_included_units() -> None:
    snap = snapshot(flag(rules=[rule("force", "on", {"segment": "pilot"})]), segments=SEGMENTS)
    assert snap.evaluate("f", {"key": "p-1"}).value is True
    assert snap.evaluate("f", {"key": "p-2"}).value is False


def test_negated_segment_means_not_a_member() -> None:
    snap = snapshot(flag(rules=[rule("force", "on", {"segment": "pilot", "negate": True})]),
                    segments=SEGMENTS)
    assert snap.evaluate("f", {"key": "p-1"}).value is False
    assert snap.evaluate("f", {"key": "p-2"}).value is True


@pytest.mark.parametrize("context", [
    None, [], "key", 3, ("key", "u"), {"key": True}, {"key": {}}, {"key": [1]},
    {"key": float("nan")}, {"targetingKey": b"u"},
])
def test_bad_contexts_return_the_default_with_invalid_context(context: Any) -> None:
    snap = snapshot(flag(default_variant="on", rules=[rule("force", "off")]))
    result = snap.evaluate("f", context)
    assert (result.value, result.variant, result.reason, result.error_code) == (
        True, "on", "ERROR", "INVALID_CONTEXT")
    assert result.error_message


def test_any_mapping_is_a_context() -> None:
    snap = snapshot(flag(rules=[rule("force", "on", cond("plan", "eq", "pro"))]))
    assert snap.evaluate("f", MappingProxyType({"plan": "pro"})).value is True


def test_unexpected_exception_returns_default_with_general() -> None:
    def explode(value: Any, prepared: Any) -> bool:
        raise RuntimeError("plugin bug")

    operators = {**default_operators(), "boom": Operator("boom", lambda v: None, explode)}
    snap = snapshot(flag(default_variant="on", rules=[rule("force", "off", cond("a", "boom"))]),
                    operators=operators)
    result = snap.evaluate("f", {"a": 1})
    assert (result.value, result.reason, result.error_code) == (True, "ERROR", "GENERAL")
    assert "plugin bug" in (result.error_message or "")


def test_operator_type_errors_mean_no_match() -> None:
    def picky(value: Any, prepared: Any) -> bool:
        raise TypeError("not comparable")

    operators = {**default_operators(), "picky": Operator("picky", lambda v: None, picky)}
    snap = snapshot(flag(rules=[rule("force", "on", cond("a", "picky"))]), operators=operators)
    assert snap.evaluate("f", {"a": 1}).reason == "DEFAULT"


@pytest.mark.parametrize("flag_key", ["missing", "", None, ["f"]])
def test_unknown_flag_is_flag_not_found(flag_key: Any) -> None:
    result = snapshot(flag()).evaluate(flag_key, {"key": "u"})
    assert (result.value, result.variant, result.reason, result.error_code) == (
        None, None, "ERROR", "FLAG_NOT_FOUND")


def test_evaluate_all_and_to_dict() -> None:
    snap = snapshot(flag(), flag(key="g", enabled=False))
    results = snap.evaluate_all({"key": "u"})
    assert {k: r.reason for k, r in results.items()} == {"f": "DEFAULT", "g": "DISABLED"}
    assert results["f"].to_dict() == {
        "flag_key": "f", "value": False, "variant": "off", "reason": "DEFAULT",
        "rule_id": None, "error_code": None, "error_message": None, "experiment": None, "arm": None}


def test_evaluations_are_immutable() -> None:
    result = snapshot(flag()).evaluate("f", {})
    assert isinstance(result, Evaluation)
    with pytest.raises(AttributeError):
        result.value = True  # type: ignore[misc]


def test_snapshot_round_trip_and_read_only_views() -> None:
    snap = snapshot(flag(rules=[rule("force", "on", {"segment": "staff"})]), segments=SEGMENTS)
    again = Snapshot.from_dict(snap.to_dict())
    assert again.to_dict() == snap.to_dict()
    assert again.flags["f"] == flag_from_dict(flag(rules=[rule(
        "force", "on", {"segment": "staff"})]), default_operators())
    assert set(again.segments) == {"staff", "pilot"}
    with pytest.raises(TypeError):
        again.flags["g"] = again.flags["f"]  # type: ignore[index]


def test_snapshot_constructor_takes_models() -> None:
    model = flag_from_dict(flag(rules=[rule()]), default_operators())
    snap = Snapshot(5, [model])
    assert (snap.revision, snap.evaluate("f", {}).value) == (5, True)


@pytest.mark.parametrize(("doc", "field", "message"), [
    ({"revision": 1, "flags": [flag(), flag(key="g", rules=[rule("force", "on", {"segment": "x"})])]},
     "flags.1.rules.0.conditions.0.segment", "unknown segment 'x'"),
    ({"revision": 1, "flags": [flag(), flag()]}, "flags.1.key", "duplicate flag key 'f'"),
    ({"revision": 1, "segments": [{"key": "s", "bogus": 1}]}, "segments.0.bogus", "unknown field"),
    ({"revision": -1}, "revision", "non-negative integer"),
    ({"revision": True}, "revision", "non-negative integer"),
    ({"revision": 1, "flags": {}}, "flags", "must be a list"),
    ({"revision": 1, "extra": 1}, "extra", "unknown field"),
])
def test_snapshot_validation_names_the_field(doc: dict, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Snapshot.from_dict(doc)
    assert caught.value.field == field
    assert message in str(caught.value)
    assert field in caught.value.errors
