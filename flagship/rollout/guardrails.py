"""Guardrail checks: the `Guardrail` type, what a check sees and returns, and `run_checks`.

Guardrails arrive through the ``register_guardrails`` hook (built-ins included); the app
collects them once into a ``dict[str, Guardrail]``. ``run_checks`` calls each check on its
own and turns any exception into an ``error`` outcome: a broken plugin holds a rollout and
never rolls it back. Nothing here runs a plugin manager, SQL, Flask or Redis.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from flagship.errors import ConfigError
from flagship.rollout.model import COMPARATIVE_MAX_BP, CheckSpec, Policy

OUTCOMES = ("pass", "fail", "inconclusive", "no_data", "error")
ARMS = ("treatment", "control")
REQUIRED: Any = object()
_MARGIN_TEXT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


@dataclass(frozen=True)
class MetricStats:
    """Per-unit sufficient statistics of one metric in one arm (units without events count as 0).

    For ratio metrics ``sum``/``sum_sq`` describe the per-unit numerator, ``den_*`` the
    denominator and ``num_den`` is the sum of numerator * denominator. ``kind`` and
    ``direction`` are the metric's (flagship/experiments/metrics.py).
    """

    n: int
    sum: float
    sum_sq: float
    kind: str = "mean"
    direction: str = "increase"
    den_sum: float = 0.0
    den_sum_sq: float = 0.0
    num_den: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document."""
        return {"n": self.n, "sum": self.sum, "sum_sq": self.sum_sq, "kind": self.kind,
                "direction": self.direction, "den_sum": self.den_sum,
                "den_sum_sq": self.den_sum_sq, "num_den": self.num_den}


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison window: exposed units and metric statistics by metric key."""

    units: int = 0
    metrics: Mapping[str, MetricStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Observations:
    """What a check may look at (read-only); built by the service from sufficient statistics.

    ``arms`` cover the regression window (the whole attempt while p <= 50 %);
    ``exposures`` are exposed-unit counts per arm for SRM; ``step_units`` are units first
    exposed in the current step (the sample gate); ``extra`` holds external data
    (``rollout_observations``); ``rollout`` identifies the rollout (id, flag, rule).
    """

    now: float
    arms: Mapping[str, Arm] = field(default_factory=dict)
    exposures: Mapping[str, int] = field(default_factory=dict)
    step_units: Mapping[str, int] = field(default_factory=dict)
    attempt: int = 1
    step_index: int = 0
    percent_bp: int = 0
    attempt_started_at: float | None = None
    step_started_at: float | None = None
    rollout: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("arms", "exposures", "step_units", "rollout", "extra"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def arm(self, name: str) -> Arm:
        """The named arm, or an empty one."""
        return self.arms.get(name) or Arm()

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest (what the webhook check posts)."""
        return {"now": self.now, "attempt": self.attempt, "step_index": self.step_index,
                "percent_bp": self.percent_bp, "attempt_started_at": self.attempt_started_at,
                "step_started_at": self.step_started_at, "exposures": dict(self.exposures),
                "step_units": dict(self.step_units),
                "arms": {name: {"units": arm.units,
                                "metrics": {k: m.to_dict() for k, m in arm.metrics.items()}}
                         for name, arm in self.arms.items()}}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value


def evidence(**values: Any) -> dict[str, Any]:
    """An evidence dict: None values dropped, tuples as lists, NaN/inf as None (JSON-safe)."""
    return {name: _json_value(value) for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict at one evaluation, with the numbers that decided it.

    ``evidence`` keys (when they apply): method, estimate, ci [lo, hi], alpha, margin,
    n_treatment, n_control, value, threshold, p_value, http_status.
    """

    check_id: str
    outcome: str
    severity: str = "blocking"
    message: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document."""
        return {"check_id": self.check_id, "outcome": self.outcome, "severity": self.severity,
                "message": self.message, "evidence": dict(self.evidence)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CheckResult:
        """Rebuild a result stored with `to_dict`."""
        return cls(doc["check_id"], doc["outcome"], doc.get("severity", "blocking"),
                   doc.get("message", ""), dict(doc.get("evidence") or {}))


@dataclass(frozen=True)
class Guardrail:
    """A check type: `validate(params) -> dict` at policy save, `evaluate(check, window)` per tick.

    ``validate`` gets the check's type-specific fields, raises ``ValueError`` (or
    :class:`ParamError` to name the field) and returns the canonical params; it must accept
    its own output. ``comparative`` guardrails need the mirrored control arm, so they only
    run at steps up to 50 %.
    """

    name: str
    validate: Callable[[Mapping[str, Any]], dict[str, Any]]
    evaluate: Callable[[CheckSpec, Observations], CheckResult]
    description: str = ""
    comparative: bool = False


class ParamError(ValueError):
    """A bad check parameter; `field` names it (relative to the check)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# -- parameter helpers for guardrail authors --------------------------------------------

def known_params(params: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject fields the guardrail does not know."""
    names = tuple(allowed)
    for name in params:
        if name not in names:
            raise ParamError(name, f"unknown field {name!r}; allowed: {', '.join(names)}")


def number_param(params: Mapping[str, Any], name: str, default: Any = REQUIRED,
                 low: float | None = None, high: float | None = None,
                 integer: bool = False) -> Any:
    """A finite number (whole when `integer`) in [low, high]; None or absent means `default`."""
    value = params.get(name)
    if value is None:
        if default is REQUIRED:
            raise ParamError(name, "is required")
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ParamError(name, f"must be a {'whole ' if integer else ''}number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ParamError(name, f"must be between {low} and {high}, got {value!r}")
    return value if integer else float(value)


def choice_param(params: Mapping[str, Any], name: str, choices: tuple[str, ...],
                 default: Any = REQUIRED) -> Any:
    """One of `choices`; None or absent means `default`."""
    value = params.get(name)
    if value is None:
        if default is REQUIRED:
            raise ParamError(name, f"is required: one of {', '.join(choices)}")
        return default
    if value not in choices:
        raise ParamError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def string_param(params: Mapping[str, Any], name: str, default: Any = REQUIRED) -> Any:
    """A non-empty string; None or absent means `default`."""
    value = params.get(name)
    if value is None:
        if default is REQUIRED:
            raise ParamError(name, "is required")
        return default
    if not isinstance(value, str) or not value.strip():
        raise ParamError(name, f"must be a non-empty string, got {value!r}")
    return value


def margin_param(params: Mapping[str, Any], name: str, default: float = 0.0) -> float | str:
    """A margin: an absolute number >= 0, or a relative one such as "2%" (kept as text)."""
    value = params.get(name)
    if isinstance(value, str):
        match = _MARGIN_TEXT.fullmatch(value)
        if not match:
            raise ParamError(name, f"must be a number >= 0 or a percentage like \"2%\", got {value!r}")
        return f"{float(match.group(1)):g}%"
    return float(number_param(params, name, default, low=0.0))


def resolve_margin(margin: float | str, baseline: float) -> float:
    """The absolute size of a margin; a relative margin is a share of |baseline|."""
    if isinstance(margin, str):
        return float(margin.rstrip("%")) / 100.0 * abs(baseline)
    return float(margin)


# -- the table and the run ---------------------------------------------------------------

def build_guardrail_table(groups: Iterable[Iterable[Guardrail]]) -> dict[str, Guardrail]:
    """Merge guardrail groups (one per plugin) into a name -> Guardrail table; names must be unique."""
    table: dict[str, Guardrail] = {}
    for group in groups:
        for guardrail in group or ():
            if guardrail.name in table:
                raise ConfigError(
                    f"guardrail {guardrail.name!r} is registered by more than one plugin",
                    errors={"guardrails": [f"duplicate guardrail {guardrail.name!r}"]})
            table[guardrail.name] = guardrail
    return table


def default_guardrails() -> dict[str, Guardrail]:
    """The table of built-in guardrails without a plugin manager (tests, tools)."""
    # Imported here, not at module top: the built-ins import this module.
    from flagship.rollout.builtin_guardrails import BUILTINS

    return build_guardrail_table([BUILTINS])


def applicable_checks(policy: Policy, percent_bp: int) -> tuple[CheckSpec, ...]:
    """The checks that run at this percentage: comparative ones only up to 50 %."""
    return tuple(c for c in policy.checks
                 if not (c.comparative and percent_bp > COMPARATIVE_MAX_BP))


def split_alpha(policy: Policy) -> dict[str, float]:
    """Bonferroni: each blocking comparative check with an `alpha` gets alpha / k (§3.4)."""
    shared = [c for c in policy.checks if c.severity == "blocking" and c.comparative
              and isinstance(c.params.get("alpha"), (int, float))]
    return {c.id: float(c.params["alpha"]) / len(shared) for c in shared}


def sample_units(policy: Policy, observations: Observations) -> int:
    """Units first exposed in this step in the smaller arm that the step's checks compare."""
    comparing = any(c.comparative for c in applicable_checks(policy, observations.percent_bp))
    arms = ARMS if comparing else ARMS[:1]
    return min(int(observations.step_units.get(arm, 0)) for arm in arms)


def error_result(check: CheckSpec, message: str) -> CheckResult:
    """The `error` outcome of a check that could not be evaluated."""
    return CheckResult(check.id, "error", check.severity, message)


def _run_one(check: CheckSpec, observations: Observations,
             table: Mapping[str, Guardrail]) -> CheckResult:
    guardrail = table.get(check.type)
    if guardrail is None:
        return error_result(check, f"no plugin provides the check type {check.type!r}")
    try:
        result = guardrail.evaluate(check, observations)
    except Exception as exc:  # noqa: BLE001 - a plugin bug must hold a rollout, never fail it
        return error_result(check, f"{check.type} raised {type(exc).__name__}: {exc}")
    if not isinstance(result, CheckResult) or result.outcome not in OUTCOMES:
        return error_result(check, f"{check.type} returned {result!r}, not a CheckResult "
                                   f"with an outcome in {', '.join(OUTCOMES)}")
    return replace(result, check_id=check.id, severity=check.severity)


def run_checks(policy: Policy, observations: Observations,
               table: Mapping[str, Guardrail]) -> list[CheckResult]:
    """Evaluate every applicable check on its own; exceptions become `error` results."""
    alphas = split_alpha(policy)
    results = []
    for check in applicable_checks(policy, observations.percent_bp):
        if check.id in alphas:
            check = replace(check, params={**check.params, "alpha": alphas[check.id]})
        results.append(_run_one(check, observations, table))
    return results
