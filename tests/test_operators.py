"""Built-in operators: matching, negation, missing attributes, compile-time validation."""
from __future__ import annotations

import random
from typing import Any

import pluggy
import pytest

from flagship import hookspecs
from flagship.errors import ConfigError
from flagship.flags.evaluate import compile_condition
from flagship.flags.model import Condition
from flagship.flags.operators import Operator, build_operator_table, default_operators
from flagship.plugins import default_operators as builtin_plugin
from flagship.flags.builtin_operators import semver_key

OPS = default_operators()
MISSING = object()


def check(operator: str, values: list, value: Any = MISSING, negate: bool = False) -> bool:
    """Evaluate one condition on attribute `attr` through the compiled engine."""
    condition = compile_condition(Condition("attr", operator, tuple(values), negate), OPS, {})
    context = {} if value is MISSING else {"attr": value}
    return bool(condition(context, None))


MATCHING = [
    ("eq", ["a"], "a"), ("eq", [1], 1.0), ("eq", [True], True), ("eq", [2.5], 2.5),
    ("neq", ["a"], "b"), ("neq", [1], "1"), ("neq", [True], 1),
    ("in", ["US", "CA"], "CA"), ("in", [1, 2], 2.0), ("in", [False], False),
    ("not_in", ["US"], "FR"), ("not_in", [1], True),
    ("contains", ["foo", "bar"], "xbarx"), ("not_contains", ["foo"], "bar"),
    ("starts_with", ["ab", "cd"], "cde"), ("ends_with", ["@acme.com"], "a@acme.com"),
    ("matches", ["^a+$", "z"], "aaa"), ("matches", ["z"], "xyz"),
    ("gt", [10], 11), ("gt", [10], "10.5"), ("gt", [-1], " 0 "), ("gte", [10], 10),
    ("lt", [0], -0.5), ("lt", [1e3], "-1.5e3"), ("lte", [1.5], 1.5),
    ("semver_eq", ["1.2.3"], "1.2.3+build.7"), ("semver_eq", ["1.2.3"], "v1.2.3"),
    ("semver_gt", ["1.2.3"], "1.10.0"), ("semver_gt", ["1.2.3"], "1.2.4-rc.1"),
    ("semver_gte", ["2.0.0"], "2.0.0"), ("semver_lt", ["1.0.0"], "1.0.0-rc.1"),
    ("semver_lte", ["3.1.0-rc.1"], "3.1.0-rc.1"),
    ("before", ["2024-01-01T00:00:00Z"], "2023-12-31T23:59:59Z"),
    ("before", ["2024-01-01T00:00:00Z"], "2024-01-01T00:30:00+01:00"),
    ("before", ["2024-01-01T00:00:00Z"], "2023-12-31T23:59:59"),
    ("before", ["2024-01-01T00:00:00"], 1704067199),
    ("after", ["2024-01-01T00:00:00+02:00"], "2023-12-31T22:00:01Z"),
    ("after", ["2024-01-01"], 1704067200.5),
    ("exists", [], "x"), ("exists", [], False), ("exists", [], 0),
]

NOT_MATCHING = [
    ("eq", ["a"], "b"), ("eq", ["a"], "A"), ("eq", [1], True), ("eq", [True], 1),
    ("eq", ["1"], 1), ("eq", ["a"], ["a"]),
    ("neq", ["a"], "a"), ("neq", [1], 1.0),
    ("in", ["US", "CA"], "FR"), ("in", [1], True), ("in", ["a"], {"a": 1}),
    ("not_in", ["US"], "US"), ("not_in", [1, 2], 2.0),
    ("contains", ["foo"], "fo"), ("contains", ["1"], 1), ("not_contains", ["foo"], "food"),
    ("starts_with", ["ab"], "xab"), ("starts_with", ["ab"], None),
    ("ends_with", ["@acme.com"], "a@acme.co"), ("ends_with", ["x"], ["x"]),
    ("matches", ["^a+$"], "aab"), ("matches", ["a"], 1),
    ("gt", [10], 10), ("gt", [10], "abc"), ("gt", [0], True), ("gt", [0], "nan"),
    ("gte", [10], 9.99), ("lt", [0], 0), ("lte", [1.5], 1.6), ("lte", [1], [0]),
    ("semver_eq", ["1.2.3"], "1.2.4"), ("semver_eq", ["1.2.3"], "1.2"),
    ("semver_eq", ["1.0.0"], "1.0.0-rc.1"), ("semver_gt", ["1.2.3"], "1.2.3"),
    ("semver_gt", ["1.2.3"], "1.2.3-rc.1"), ("semver_gte", ["2.0.0"], "2.0.0-rc.1"),
    ("semver_lt", ["1.0.0"], "1.0.0"), ("semver_lte", ["3.1.0-rc.1"], "3.1.0"),
    ("semver_gt", ["1.0.0"], 2),
    ("before", ["2024-01-01T00:00:00Z"], "2024-01-01T00:00:00Z"),
    ("before", ["2024-01-01T00:00:00Z"], 1704067200), ("before", ["2024-01-01"], "yesterday"),
    ("before", ["2024-01-01"], True), ("after", ["2024-01-01T00:00:00Z"], "2023-06-01"),
    ("exists", [], None),
]


@pytest.mark.parametrize(("operator", "values", "value"), MATCHING)
def test_operator_matches(operator: str, values: list, value: Any) -> None:
    assert check(operator, values, value) is True


@pytest.mark.parametrize(("operator", "values", "value"), NOT_MATCHING)
def test_operator_does_not_match(operator: str, values: list, value: Any) -> None:
    assert check(operator, values, value) is False


@pytest.mark.parametrize(("operator", "values", "value"), MATCHING)
def test_negate_flips_a_present_match(operator: str, values: list, value: Any) -> None:
    assert check(operator, values, value, negate=True) is False


def test_negate_flips_a_present_non_match() -> None:
    assert check("eq", ["a"], "b", negate=True) is True
    assert check("semver_gt", ["2.0.0"], "1.0.0", negate=True) is True


def test_negate_never_turns_an_uncomparable_value_into_a_match() -> None:
    assert check("gt", [1], "abc", negate=True) is False
    assert check("contains", ["a"], 5, negate=True) is False


@pytest.mark.parametrize("operator", sorted(set(OPS) - {"exists"}))
def test_missing_attribute_never_matches(operator: str) -> None:
    values = {"eq": ["x"], "neq": ["x"], "gt": [1], "gte": [1], "lt": [1], "lte": [1],
              "before": ["2024-01-01"], "after": ["2024-01-01"]}.get(operator, ["1.0.0"])
    assert check(operator, values) is False
    assert check(operator, values, negate=True) is False
    assert check(operator, values, None, negate=True) is False


def test_exists_with_negate_means_absent() -> None:
    assert check("exists", []) is False
    assert check("exists", [], negate=True) is True
    assert check("exists", [], None, negate=True) is True
    assert check("exists", [], "present", negate=True) is False


@pytest.mark.parametrize(("operator", "values", "message"), [
    ("matches", ["("], "invalid regular expression '(': missing ), unterminated subpattern"),
    ("matches", [3], "value 0 must be a string"),
    ("semver_gt", ["1.2"], "invalid semantic version '1.2'"),
    ("semver_eq", ["01.2.3"], "invalid semantic version"),
    ("semver_lt", ["1.2.3-"], "invalid semantic version"),
    ("semver_lte", [123], "needs a version string"),
    ("before", ["not a date"], "invalid ISO-8601 datetime 'not a date'"),
    ("after", [1700000000], "needs an ISO-8601 datetime string"),
    ("eq", [], "exactly one value, got 0"), ("neq", ["a", "b"], "exactly one value, got 2"),
    ("gt", [1, 2], "exactly one value"), ("semver_eq", [], "exactly one value"),
    ("before", [], "exactly one value"),
    ("gt", ["10"], "needs a finite number"), ("gte", [True], "needs a finite number"),
    ("lt", [float("inf")], "needs a finite number"),
    ("in", [], "at least one value"), ("contains", [], "at least one value"),
    ("matches", [], "at least one value"),
    ("contains", [3], "value 0 must be a string"), ("starts_with", ["ok", ""], "value 1 is empty"),
    ("eq", [None], "use the 'exists' operator"), ("in", ["a", ["b"]], "value 1 must be a string"),
    ("eq", [float("nan")], "finite number"), ("exists", ["x"], "takes no values"),
])
def test_bad_values_fail_at_compile_time(operator: str, values: list, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        OPS[operator].compile(values)
    assert message in str(caught.value)


SEMVER_SPEC_ORDER = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
                     "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1",
                     "1.1.0", "1.10.0", "2.0.0"]


def test_semver_precedence_follows_the_spec_example() -> None:
    shuffled = SEMVER_SPEC_ORDER[:]
    random.Random(3).shuffle(shuffled)
    assert sorted(shuffled, key=semver_key) == SEMVER_SPEC_ORDER


def test_semver_operators_agree_with_precedence() -> None:
    for i, lower in enumerate(SEMVER_SPEC_ORDER):
        for higher in SEMVER_SPEC_ORDER[i + 1:]:
            assert check("semver_lt", [higher], lower)
            assert check("semver_gt", [lower], higher)
            assert not check("semver_gte", [higher], lower)
            assert not check("semver_eq", [higher], lower)


def test_semver_ignores_build_metadata() -> None:
    assert semver_key("1.0.0+a") == semver_key("1.0.0+b.2")


def test_default_table_has_exactly_the_builtins() -> None:
    assert set(OPS) == {
        "eq", "neq", "in", "not_in", "contains", "not_contains", "starts_with", "ends_with",
        "matches", "gt", "gte", "lt", "lte", "semver_eq", "semver_gt", "semver_gte",
        "semver_lt", "semver_lte", "before", "after", "exists"}
    assert all(op.description for op in OPS.values())


def test_builtins_register_through_the_hook() -> None:
    manager = pluggy.PluginManager("flagship")
    manager.add_hookspecs(hookspecs)
    manager.register(builtin_plugin)
    table = build_operator_table(manager.hook.register_operators())
    assert set(table) == set(OPS)


def test_duplicate_operator_names_are_a_config_error() -> None:
    twin = Operator("eq", lambda values: None, lambda value, prepared: True)
    with pytest.raises(ConfigError, match="'eq'"):
        build_operator_table([OPS.values(), [twin]])


def test_plugin_operator_without_accepts_missing_never_sees_absence() -> None:
    seen: list[Any] = []
    probe = Operator("probe", lambda values: None, lambda value, p: seen.append(value) or True)
    condition = compile_condition(Condition("attr", "probe", (), True), {"probe": probe}, {})
    assert condition({}, None) is False
    assert seen == []
