"""Ramp policy documents and rollout state: defaults, canonical round trip, validation paths."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any, Callable

import pytest

from flagship.errors import ValidationError
from flagship.rollout.guardrails import Guardrail, ParamError, default_guardrails
from flagship.rollout.model import (
    CheckSpec, Policy, RolloutState, Step, parse_duration, policy_from_dict, policy_to_dict,
)

TABLE = default_guardrails()


def design_example() -> dict[str, Any]:
    """The policy of ROLLOUT.md §3.2 (p99 replaced by a mean: sufficient stats have no quantiles)."""
    return {
        "key": "standard-guarded", "evaluation_interval": "5m",
        "steps": [{"percent": 1, "min_duration": "30m", "min_units": 200},
                  {"percent": 5, "min_duration": "1h", "min_units": 500},
                  {"percent": 25, "min_duration": "4h", "min_units": 1000},
                  {"percent": 50, "min_duration": "24h", "min_units": 2000, "approval": True}],
        "completion": {"percent": 100, "then": "collapse"},
        "advance_on": "no_fail", "min_consecutive_ok": 2,
        "max_step_duration": {"after": "72h", "action": "hold"},
        "no_data": {"grace": "2h", "action": "hold"}, "error_limit": 4,
        "checks": [
            {"id": "checkout-errors", "type": "metric_regression", "metric": "checkout_error",
             "direction": "lower_is_better", "fail_margin": 0, "ni_margin": 0.002,
             "alpha": 0.05, "severity": "blocking", "on_fail": "rollback", "failure_limit": 0},
            {"id": "latency", "type": "metric_threshold", "metric": "latency_ms",
             "aggregate": "mean", "arm": "treatment", "max": 800, "severity": "blocking",
             "on_fail": "hold", "failure_limit": 2},
            {"id": "srm", "type": "srm", "p_value": 0.001, "severity": "health", "on_fail": "hold"},
            {"id": "smoke", "type": "webhook", "url": "https://ci.example/check", "timeout": "5s",
             "severity": "blocking", "on_fail": "hold"},
        ],
    }


def minimal() -> dict[str, Any]:
    return {"steps": [{"percent": 10, "min_duration": 600, "min_units": 0}]}


def test_design_example_parses_with_seconds_and_basis_points() -> None:
    policy = policy_from_dict(design_example(), TABLE)
    assert policy.key == "standard-guarded" and policy.evaluation_interval == 300
    assert [s.percent_bp for s in policy.steps] == [100, 500, 2500, 5000]
    assert [s.min_duration for s in policy.steps] == [1800, 3600, 14400, 86400]
    assert policy.steps[3].approval and not policy.steps[0].approval
    assert policy.max_step_duration is not None and policy.max_step_duration.after == 259200
    assert policy.no_data.grace == 7200 and policy.completion.percent_bp == 10000
    regression = policy.check("checkout-errors")
    assert regression is not None and regression.comparative
    assert regression.params["ni_margin"] == 0.002 and regression.params["min_units"] == 100
    assert policy.check("latency").comparative is False  # type: ignore[union-attr]
    assert policy.check("nope") is None


def test_canonical_round_trip_is_stable_and_json() -> None:
    policy = policy_from_dict(design_example(), TABLE)
    doc = policy_to_dict(policy)
    assert policy_from_dict(doc, TABLE) == policy
    assert policy_from_dict(json.loads(json.dumps(doc)), TABLE) == policy
    assert policy_to_dict(policy_from_dict(doc, TABLE)) == doc
    assert doc["steps"][0] == {"percent": 1, "min_duration": 1800, "min_units": 200,
                               "approval": False}
    assert doc["checks"][3]["timeout"] == 5.0 and "params" not in doc["checks"][3]


def test_minimal_document_gets_the_documented_defaults() -> None:
    policy = policy_from_dict(minimal(), TABLE)
    assert policy == Policy(steps=(Step(10.0, 600.0, 0),))
    assert (policy.evaluation_interval, policy.advance_on, policy.min_consecutive_ok) == \
        (300, "no_fail", 2)
    assert (policy.no_data.grace, policy.no_data.action, policy.error_limit) == (7200, "hold", 4)
    assert policy.max_step_duration is None and policy.checks == ()
    assert (policy.completion.percent, policy.completion.then) == (100, "collapse")
    assert "key" not in policy_to_dict(policy)


@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800), ("1h", 3600), ("2d", 172800), ("5s", 5), ("1h30m", 5400), ("1.5h", 5400),
    (" 10S ", 10), (90, 90), (2.5, 2.5), (0, 0),
])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5x", "", "10", "-1s", "h", True, None, [], 400 * 86400, -3,
                                 float("nan")])
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_percentage_alias_fractional_percent_and_basis_points() -> None:
    doc = {"evaluation_interval": 1, "steps": [
        {"percentage": 0.01, "min_duration": 1, "min_units": 0},
        {"percent": 12.5, "min_duration": "5s", "min_units": 3}]}
    policy = policy_from_dict(doc, TABLE)
    assert [s.percent_bp for s in policy.steps] == [1, 1250]
    assert policy_to_dict(policy)["steps"][0]["percent"] == 0.01


def test_check_defaults_depend_on_severity_and_comparison() -> None:
    doc = minimal() | {"checks": [
        {"type": "srm"},
        {"id": "mean-latency", "type": "metric_threshold", "metric": "latency", "max": 5},
        {"id": "sig", "type": "metric_threshold", "metric": "x", "min": 0, "severity": "signal"},
        {"id": "health", "type": "min_traffic", "min_units": 5, "severity": "health"},
    ]}
    srm, threshold, signal, health = policy_from_dict(doc, TABLE).checks
    assert (srm.id, srm.on_fail, srm.failure_limit, srm.comparative) == ("srm", "rollback", 0, True)
    assert srm.params == {"p_value": 0.001, "min_units": 8}
    assert (threshold.on_fail, threshold.failure_limit) == ("rollback", 1)
    assert threshold.params == {"metric": "latency", "aggregate": "mean", "arm": "treatment",
                                "max": 5.0, "min": None, "min_units": 1}
    assert (signal.on_fail, health.on_fail) == ("notify", "hold")


def test_nested_params_are_accepted_and_flattened() -> None:
    nested = minimal() | {"checks": [{"id": "t", "type": "metric_threshold",
                                      "params": {"metric": "m", "max": 1}}]}
    flat = minimal() | {"checks": [{"id": "t", "type": "metric_threshold", "metric": "m", "max": 1}]}
    assert policy_from_dict(nested, TABLE) == policy_from_dict(flat, TABLE)


def test_comparative_checks_are_allowed_when_some_step_is_at_most_half() -> None:
    doc = {"evaluation_interval": 60, "steps": [
        {"percent": 50, "min_duration": 60, "min_units": 0},
        {"percent": 90, "min_duration": 60, "min_units": 0}],
        "checks": [{"type": "metric_regression", "metric": "m"}]}
    assert policy_from_dict(doc, TABLE).checks[0].comparative


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return apply


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        del target[last]
    return apply


BAD: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown top field", _set("bogus", 1), "bogus", "unknown field"),
    ("key", _set("key", "no spaces"), "key", "invalid key"),
    ("no steps", _set("steps", []), "steps", "non-empty"),
    ("steps not a list", _set("steps", {"percent": 1}), "steps", "non-empty"),
    ("step not increasing", _set("steps.2.percent", 5), "steps.2.percent", "above the previous"),
    ("step equal", _set("steps.1.percent", 1), "steps.1.percent", "above the previous"),
    ("zero step", _set("steps.0.percent", 0), "steps.0.percent", "above 0"),
    ("above 100", _set("steps.3.percent", 101), "steps.3.percent", "between 0 and 100"),
    ("3 decimals", _set("steps.0.percent", 1.234), "steps.0.percent", "2 decimals"),
    ("percent and percentage", _set("steps.0.percentage", 1), "steps.0.percentage", "not both"),
    ("missing percent", _drop("steps.0.percent"), "steps.0.percent", "required"),
    ("dwell under interval", _set("steps.1.min_duration", "1m"), "steps.1.min_duration",
     "evaluation interval"),
    ("bad duration", _set("steps.1.min_duration", "soon"), "steps.1.min_duration", "duration"),
    ("missing min_units", _drop("steps.0.min_units"), "steps.0.min_units", "required"),
    ("negative units", _set("steps.0.min_units", -1), "steps.0.min_units", "whole number"),
    ("approval text", _set("steps.0.approval", "yes"), "steps.0.approval", "true or false"),
    ("unknown step field", _set("steps.0.wait", 1), "steps.0.wait", "unknown field"),
    ("interval too short", _set("evaluation_interval", 0.5), "evaluation_interval", "from 1 s"),
    ("completion below last", _set("completion", {"percent": 40, "then": "keep"}),
     "completion.percent", "last step"),
    ("collapse below 100", _set("completion", {"percent": 80}), "completion.then", "percent 100"),
    ("completion then", _set("completion.then", "explode"), "completion.then", "one of"),
    ("advance_on", _set("advance_on", "maybe"), "advance_on", "no_fail, pass"),
    ("min_consecutive_ok", _set("min_consecutive_ok", 0), "min_consecutive_ok", "whole number"),
    ("error_limit", _set("error_limit", -1), "error_limit", "whole number"),
    ("timeout too short", _set("max_step_duration.after", "2h"), "max_step_duration.after",
     "longest min_duration"),
    ("timeout action", _set("max_step_duration.action", "panic"), "max_step_duration.action",
     "hold, rollback, advance"),
    ("no_data action", _set("no_data.action", "advance"), "no_data.action",
     "hold, rollback, notify"),
    ("no_data grace", _set("no_data.grace", "-1h"), "no_data.grace", "duration"),
    ("unknown check type", _set("checks.1.type", "nope"), "checks.1.type", "unknown check type"),
    ("duplicate id", _set("checks.2.id", "latency"), "checks.2.id", "duplicate check id"),
    ("bad id", _set("checks.0.id", "a b"), "checks.0.id", "invalid id"),
    ("severity", _set("checks.0.severity", "fatal"), "checks.0.severity", "blocking, signal"),
    ("on_fail", _set("checks.0.on_fail", "explode"), "checks.0.on_fail", "rollback, hold"),
    ("signal cannot roll back", _set("checks.0.severity", "signal"), "checks.0.on_fail",
     "signal checks only notify"),
    ("failure_limit", _set("checks.1.failure_limit", 1.5), "checks.1.failure_limit",
     "whole number"),
    ("guardrail param", _set("checks.0.fail_margin", "lots"), "checks.0.fail_margin", "2%"),
    ("guardrail required", _drop("checks.0.metric"), "checks.0.metric", "required"),
    ("guardrail unknown param", _set("checks.2.colour", "red"), "checks.2.colour",
     "unknown field"),
    ("percentile aggregate", _set("checks.1.aggregate", "p99"), "checks.1.aggregate",
     "percentiles"),
    ("webhook url", _set("checks.3.url", "ftp://x"), "checks.3.url", "http"),
    ("webhook timeout", _set("checks.3.timeout", "2m"), "checks.3.timeout", "at most 60"),
    ("nested params twice", _set("checks.1.params", {"metric": "other"}),
     "checks.1.params.metric", "given twice"),
    ("check not an object", _set("checks.0", "srm"), "checks.0", "must be an object"),
]


@pytest.mark.parametrize("name, mutate, path, text", BAD, ids=[b[0] for b in BAD])
def test_validation_names_the_first_bad_field(name: str, mutate: Callable[[dict[str, Any]], None],
                                              path: str, text: str) -> None:
    doc = copy.deepcopy(design_example())
    mutate(doc)
    with pytest.raises(ValidationError) as info:
        policy_from_dict(doc, TABLE)
    assert info.value.field == path
    assert text in info.value.message
    assert list(info.value.errors) == [path]


def test_comparative_check_needs_a_step_at_or_below_half() -> None:
    doc = {"evaluation_interval": 60, "steps": [
        {"percent": 60, "min_duration": 60, "min_units": 0}],
        "checks": [{"type": "metric_threshold", "metric": "m", "max": 1},
                   {"type": "srm"}]}
    with pytest.raises(ValidationError) as info:
        policy_from_dict(doc, TABLE)
    assert info.value.field == "checks.1.type" and "50 %" in info.value.message


def test_plugin_validation_errors_map_to_the_check_path() -> None:
    def plain(params: Any) -> dict[str, Any]:
        raise ValueError("the whole check is wrong")

    def named(params: Any) -> dict[str, Any]:
        raise ParamError("query", "must be PromQL")

    def evaluate(check: CheckSpec, window: Any) -> Any:
        raise AssertionError("not called while validating")

    table = {"plain": Guardrail("plain", plain, evaluate),
             "named": Guardrail("named", named, evaluate)}
    for kind, path, text in (("plain", "checks.0", "the whole check is wrong"),
                             ("named", "checks.0.query", "must be PromQL")):
        with pytest.raises(ValidationError) as info:
            policy_from_dict(minimal() | {"checks": [{"type": kind}]}, table)
        assert (info.value.field, info.value.message) == (path, f"{path}: {text}")


def test_rollout_state_round_trip() -> None:
    state = RolloutState(status="holding", attempt=2, step_index=1, percent_bp=500,
                         step_started_at=10.5, consecutive_ok=1, fail_counts={"a": 2},
                         error_streak={"b": 1}, first_no_data_at=11.0, approved_step=1,
                         dismissed=frozenset({"c", "a"}), awaiting_approval=True,
                         notified=frozenset({"no_data"}))
    doc = json.loads(json.dumps(state.to_dict()))
    assert doc["dismissed"] == ["a", "c"]
    assert RolloutState.from_dict(doc) == state
    assert RolloutState.from_dict({}) == RolloutState()
    with pytest.raises(ValidationError) as info:
        RolloutState.from_dict({"status": "sleeping"})
    assert info.value.field == "status"


def test_the_rollout_core_imports_no_web_sql_queue_or_plugin_stack() -> None:
    code = ("import sys, json\n"
            "import flagship.rollout.model, flagship.rollout.plan, flagship.rollout.guardrails\n"
            "import flagship.rollout.alerts\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "flagship" in loaded
    assert not loaded & {"flask", "werkzeug", "sqlalchemy", "sqlmodel", "redis", "rq", "pluggy"}
