"""Ramp policies and rollout state: frozen models and their validating conversion from JSON.

``policy_from_dict`` is the only way an untrusted policy document becomes a ``Policy``: it
checks everything (ROLLOUT.md §3.2) and raises :class:`ValidationError` naming the dotted
field path of the first problem. ``policy_to_dict`` gives the canonical document back, so
``policy_from_dict(policy_to_dict(p), table) == p``. Durations are seconds: a number, or a
string such as ``"30m"``, ``"1h30m"``, ``"2d"``, ``"5s"``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, NoReturn

from flagship.errors import ValidationError
from flagship.flags.bucketing import check_percentage
from flagship.flags.model import KEY_PATTERN

if TYPE_CHECKING:  # pragma: no cover
    from flagship.rollout.guardrails import Guardrail

SEVERITIES = ("blocking", "signal", "health")
ON_FAIL = ("rollback", "hold", "notify")
ADVANCE_ON = ("no_fail", "pass")
TIMEOUT_ACTIONS = ("hold", "rollback", "advance")
NO_DATA_ACTIONS = ("hold", "rollback", "notify")
COMPLETION_THEN = ("collapse", "keep")
STATUSES = ("draft", "running", "holding", "paused", "completed", "rolled_back", "aborted")
ACTIVE = ("running", "holding")
TERMINAL = ("completed", "rolled_back", "aborted")
# Treatment [0, p) and the mirrored control [10000 - p, 10000) only stay disjoint up to 50 %.
COMPARATIVE_MAX_BP = 5000
MIN_INTERVAL = 1.0  # seconds; ROLLOUT.md says 1m, tests need fast ticks
MAX_DURATION = 365 * 86400.0
DEFAULT_ON_FAIL = {"blocking": "rollback", "health": "hold", "signal": "notify"}

_POLICY_FIELDS = ("key", "evaluation_interval", "steps", "completion", "advance_on",
                  "min_consecutive_ok", "max_step_duration", "no_data", "error_limit", "checks",
                  "reminder_interval")
_STEP_FIELDS = ("percent", "percentage", "min_duration", "min_units", "approval")
_CHECK_FIELDS = ("id", "type", "severity", "on_fail", "failure_limit", "params")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Step:
    """One ramp step: serve `percent` for at least `min_duration` s and `min_units` units per arm."""

    percent: float
    min_duration: float
    min_units: int
    approval: bool = False
    percent_bp: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "percent_bp", round(self.percent * 100))


@dataclass(frozen=True)
class CheckSpec:
    """A configured guardrail check; `params` is what its guardrail's `validate` returned."""

    id: str
    type: str
    severity: str = "blocking"
    on_fail: str = "rollback"
    failure_limit: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    comparative: bool = False  # copied from the guardrail: needs the mirrored control arm


@dataclass(frozen=True)
class StepTimeout:
    """What to do when a step lasts longer than `after` seconds."""

    after: float
    action: str


@dataclass(frozen=True)
class NoDataRule:
    """What to do when checks report no data for longer than `grace` seconds in a step."""

    grace: float = 7200.0
    action: str = "hold"


@dataclass(frozen=True)
class Completion:
    """Where a rollout ends: `percent`, then `collapse` (serve to all matched units) or `keep`."""

    percent: float = 100.0
    then: str = "collapse"

    @property
    def percent_bp(self) -> int:
        """The completion percentage in basis points."""
        return round(self.percent * 100)


@dataclass(frozen=True)
class Policy:
    """A ramp policy; build it with `policy_from_dict`, which validates and fills defaults."""

    steps: tuple[Step, ...]
    checks: tuple[CheckSpec, ...] = ()
    evaluation_interval: float = 300.0
    advance_on: str = "no_fail"
    min_consecutive_ok: int = 2
    max_step_duration: StepTimeout | None = None
    no_data: NoDataRule = NoDataRule()
    error_limit: int = 4
    completion: Completion = Completion()
    key: str | None = None
    reminder_interval: float = 86400.0  # a long hold or a pending approval: remind this often (0: never)

    def check(self, check_id: str) -> CheckSpec | None:
        """The check with this id, or None."""
        return next((c for c in self.checks if c.id == check_id), None)


@dataclass(frozen=True)
class RolloutState:
    """Where one attempt of a rollout stands; counters are per step and reset on every step."""

    status: str = "draft"
    attempt: int = 1
    step_index: int = 0
    percent_bp: int = 0
    step_started_at: float | None = None
    consecutive_ok: int = 0
    fail_counts: Mapping[str, int] = field(default_factory=dict)
    error_streak: Mapping[str, int] = field(default_factory=dict)
    first_no_data_at: float | None = None
    approved_step: int | None = None
    dismissed: frozenset[str] = frozenset()
    awaiting_approval: bool = False
    notified: frozenset[str] = frozenset()  # edge markers already sent this step
    reminded_at: float | None = None  # when a hold or an approval was last told about

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document of the state."""
        return {"status": self.status, "attempt": self.attempt, "step_index": self.step_index,
                "percent_bp": self.percent_bp, "step_started_at": self.step_started_at,
                "consecutive_ok": self.consecutive_ok, "fail_counts": dict(self.fail_counts),
                "error_streak": dict(self.error_streak),
                "first_no_data_at": self.first_no_data_at, "approved_step": self.approved_step,
                "dismissed": sorted(self.dismissed), "awaiting_approval": self.awaiting_approval,
                "notified": sorted(self.notified), "reminded_at": self.reminded_at}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RolloutState:
        """Rebuild a state stored with `to_dict` (missing fields take their defaults)."""
        if doc.get("status", "draft") not in STATUSES:
            _fail("status", f"unknown status {doc.get('status')!r}")
        values = {name: doc[name] for name in _STATE_SCALARS if doc.get(name) is not None}
        return cls(**values, fail_counts=dict(doc.get("fail_counts") or {}),
                   error_streak=dict(doc.get("error_streak") or {}),
                   dismissed=frozenset(doc.get("dismissed") or ()),
                   notified=frozenset(doc.get("notified") or ()))


_STATE_SCALARS = ("status", "attempt", "step_index", "percent_bp", "step_started_at",
                  "consecutive_ok", "first_no_data_at", "approved_step", "awaiting_approval",
                  "reminded_at")


# -- durations -------------------------------------------------------------------------

def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like "30m", "1h30m", "2d", "5s"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration (seconds, or e.g. \"30m\", \"1h\"), got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip().lower()):
        parts = _DURATION_PART.findall(value.strip().lower())
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    else:
        raise ValueError(f"must be a duration (seconds, or e.g. \"30m\", \"1h\"), got {value!r}")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
        raise ValueError(f"must be between 0 and 365 days, got {value!r}")
    return seconds


def json_number(value: float) -> int | float:
    """A number as canonical documents write it (a whole number when it is one)."""
    return int(value) if float(value).is_integer() else value


# -- small checks ----------------------------------------------------------------------

def _fail(path: str, message: str) -> NoReturn:
    raise ValidationError(message, field=path or None)


def _at(path: str, name: str | int) -> str:
    return f"{path}.{name}" if path else str(name)


def _object(value: Any, path: str, what: str, allowed: tuple[str, ...] | None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"{what} must be an object, got {type(value).__name__}")
    unknown = [name for name in value if allowed is not None and name not in allowed]
    if unknown:
        _fail(_at(path, str(unknown[0])),
              f"unknown field {unknown[0]!r} in {what}; allowed: {', '.join(allowed or ())}")
    return value


def _get(doc: Mapping[str, Any], name: str, path: str, default: Any = ...) -> Any:
    # A null optional field means "use the default", as in flags/model.py.
    value = doc.get(name)
    if value is None:
        if default is ...:
            _fail(_at(path, name), "is required")
        return default
    return value


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(path, f"must be a whole number from {low} to {high}, got {value!r}")
    return value


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        _fail(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _duration(value: Any, path: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as err:
        _fail(path, str(err))


# -- steps, completion, actions --------------------------------------------------------

def _step(doc: Any, path: str, previous: float, interval: float) -> Step:
    _object(doc, path, "step", _STEP_FIELDS)
    if doc.get("percent") is not None and doc.get("percentage") is not None:
        _fail(_at(path, "percentage"), "give percent or percentage, not both")
    name = "percent" if doc.get("percentage") is None else "percentage"
    try:
        percent = float(check_percentage(_get(doc, name, path)))
    except ValueError as err:
        _fail(_at(path, name), str(err))
    if percent <= previous:
        _fail(_at(path, name), f"must be above the previous step's {previous:g} %"
              if previous > 0 else "must be above 0")
    min_duration = _duration(_get(doc, "min_duration", path), _at(path, "min_duration"))
    if min_duration < interval:
        _fail(_at(path, "min_duration"),
              f"must be at least the evaluation interval ({interval:g} s), got {min_duration:g} s")
    min_units = _int(_get(doc, "min_units", path), _at(path, "min_units"), 0, 10**9)
    approval = _get(doc, "approval", path, False)
    if not isinstance(approval, bool):
        _fail(_at(path, "approval"), f"must be true or false, got {approval!r}")
    return Step(percent, min_duration, min_units, approval)


def _steps(value: Any, interval: float) -> tuple[Step, ...]:
    if not isinstance(value, list) or not value:
        _fail("steps", "must be a non-empty list of steps")
    if len(value) > 100:
        _fail("steps", "at most 100 steps")
    steps: list[Step] = []
    for index, doc in enumerate(value):
        previous = steps[-1].percent if steps else 0.0
        steps.append(_step(doc, _at("steps", index), previous, interval))
    return tuple(steps)


def _completion(value: Any, last: Step) -> Completion:
    doc = _object(value, "completion", "completion", ("percent", "then"))
    try:
        percent = float(check_percentage(_get(doc, "percent", "completion", 100)))
    except ValueError as err:
        _fail("completion.percent", str(err))
    if percent < last.percent:
        _fail("completion.percent", f"must be at least the last step's {last.percent:g} %")
    then = _choice(_get(doc, "then", "completion", "collapse"), "completion.then", COMPLETION_THEN)
    if then == "collapse" and percent != 100:
        _fail("completion.then", "collapse serves every matched unit: it needs percent 100")
    return Completion(percent, then)


def _timeout(value: Any, steps: tuple[Step, ...]) -> StepTimeout | None:
    if value is None:
        return None
    doc = _object(value, "max_step_duration", "max_step_duration", ("after", "action"))
    after = _duration(_get(doc, "after", "max_step_duration"), "max_step_duration.after")
    longest = max(step.min_duration for step in steps)
    if after < longest:
        _fail("max_step_duration.after",
              f"must be at least the longest min_duration ({longest:g} s), got {after:g} s")
    action = _choice(_get(doc, "action", "max_step_duration", "hold"),
                     "max_step_duration.action", TIMEOUT_ACTIONS)
    return StepTimeout(after, action)


def _no_data(value: Any) -> NoDataRule:
    doc = _object(value, "no_data", "no_data", ("grace", "action"))
    grace = _duration(_get(doc, "grace", "no_data", NoDataRule.grace), "no_data.grace")
    action = _choice(_get(doc, "action", "no_data", "hold"), "no_data.action", NO_DATA_ACTIONS)
    return NoDataRule(grace, action)


# -- checks ----------------------------------------------------------------------------

def _check_params(doc: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The type-specific fields: flat in the check (canonical) and/or nested under `params`."""
    params = {name: value for name, value in doc.items() if name not in _CHECK_FIELDS}
    nested = _get(doc, "params", path, {})
    _object(nested, _at(path, "params"), "params", None)
    for name, value in nested.items():
        if name in params or name in _CHECK_FIELDS:
            _fail(_at(_at(path, "params"), name), f"{name!r} is given twice")
        params[name] = value
    return params


def _guardrail_params(guardrail: Guardrail, params: dict[str, Any], path: str) -> dict[str, Any]:
    try:
        validated = guardrail.validate(params)
    except (ValueError, TypeError, ValidationError) as err:
        where = getattr(err, "field", None)
        message = getattr(err, "message", None) or str(err)
        if isinstance(err, ValidationError) and where and message.startswith(f"{where}: "):
            message = message[len(where) + 2:]
        _fail(_at(path, where) if where else path, message)
    return dict(validated)


def _check(doc: Any, path: str, guardrails: Mapping[str, Guardrail],
           steps: tuple[Step, ...]) -> CheckSpec:
    _object(doc, path, "check", None)
    kind = _get(doc, "type", path)
    guardrail = guardrails.get(kind) if isinstance(kind, str) else None
    if guardrail is None:
        _fail(_at(path, "type"), f"unknown check type {kind!r}; known: {', '.join(sorted(guardrails))}")
    if guardrail.comparative and all(s.percent_bp > COMPARATIVE_MAX_BP for s in steps):
        _fail(_at(path, "type"), f"{kind} compares against the mirrored control arm, which only "
                                 "exists up to 50 %; every step is above 50 %")
    check_id = _get(doc, "id", path, kind)
    if not isinstance(check_id, str) or not KEY_PATTERN.fullmatch(check_id):
        _fail(_at(path, "id"), f"invalid id {check_id!r}: use 1-128 letters, digits, '_', '.' or '-'")
    severity = _choice(_get(doc, "severity", path, "blocking"), _at(path, "severity"), SEVERITIES)
    on_fail = _choice(_get(doc, "on_fail", path, DEFAULT_ON_FAIL[severity]), _at(path, "on_fail"),
                      ON_FAIL)
    if severity == "signal" and on_fail != "notify":
        _fail(_at(path, "on_fail"), "signal checks only notify; use severity blocking or health "
                                    "to hold or roll back")
    # Sequential tests are valid on every look; a raw threshold needs room for one noisy look.
    limit = _get(doc, "failure_limit", path, 0 if guardrail.comparative else 1)
    failure_limit = _int(limit, _at(path, "failure_limit"), 0, 1000)
    params = _guardrail_params(guardrail, _check_params(doc, path), path)
    return CheckSpec(check_id, kind, severity, on_fail, failure_limit, params,
                     guardrail.comparative)


def _checks(value: Any, guardrails: Mapping[str, Guardrail],
            steps: tuple[Step, ...]) -> tuple[CheckSpec, ...]:
    if not isinstance(value, list):
        _fail("checks", f"must be a list, got {type(value).__name__}")
    if len(value) > 50:
        _fail("checks", "at most 50 checks")
    checks: list[CheckSpec] = []
    for index, doc in enumerate(value):
        check = _check(doc, _at("checks", index), guardrails, steps)
        if any(c.id == check.id for c in checks):
            _fail(_at(_at("checks", index), "id"), f"duplicate check id {check.id!r}")
        checks.append(check)
    return tuple(checks)


# -- policies --------------------------------------------------------------------------

def policy_from_dict(doc: Any, guardrails: Mapping[str, Guardrail]) -> Policy:
    """Validate a policy document and return the Policy; raise ValidationError naming the field."""
    _object(doc, "", "policy", _POLICY_FIELDS)
    key = doc.get("key")
    if key is not None and (not isinstance(key, str) or not KEY_PATTERN.fullmatch(key)):
        _fail("key", f"invalid key {key!r}: use 1-128 letters, digits, '_', '.' or '-'")
    interval = _duration(_get(doc, "evaluation_interval", "", 300), "evaluation_interval")
    if not MIN_INTERVAL <= interval <= 86400:
        _fail("evaluation_interval", f"must be from 1 s to 1 day, got {interval:g} s")
    steps = _steps(_get(doc, "steps", ""), interval)
    return Policy(
        steps=steps,
        checks=_checks(_get(doc, "checks", "", []), guardrails, steps),
        evaluation_interval=interval,
        advance_on=_choice(_get(doc, "advance_on", "", "no_fail"), "advance_on", ADVANCE_ON),
        min_consecutive_ok=_int(_get(doc, "min_consecutive_ok", "", 2), "min_consecutive_ok",
                                1, 1000),
        max_step_duration=_timeout(doc.get("max_step_duration"), steps),
        no_data=_no_data(_get(doc, "no_data", "", {})),
        error_limit=_int(_get(doc, "error_limit", "", 4), "error_limit", 0, 1000),
        completion=_completion(_get(doc, "completion", "", {}), steps[-1]),
        key=key,
        reminder_interval=_reminder(doc.get("reminder_interval")),
    )


def _reminder(value: Any) -> float:
    """`reminder_interval`: how often a long hold or a pending approval is notified again."""
    if value is None:
        return 86400.0
    seconds = _duration(value, "reminder_interval")
    if seconds != 0 and not 60 <= seconds <= 30 * 86400:
        _fail("reminder_interval", f"must be 0 (never) or from 1 min to 30 days, got {seconds:g} s")
    return seconds


def check_to_dict(check: CheckSpec) -> dict[str, Any]:
    """The canonical document of a check: common fields, then its params, flat."""
    return {"id": check.id, "type": check.type, "severity": check.severity,
            "on_fail": check.on_fail, "failure_limit": check.failure_limit, **check.params}


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """Return the canonical JSON document of a policy."""
    doc: dict[str, Any] = {} if policy.key is None else {"key": policy.key}
    timeout = policy.max_step_duration
    doc.update({
        "evaluation_interval": json_number(policy.evaluation_interval),
        "steps": [{"percent": json_number(s.percent), "min_duration": json_number(s.min_duration),
                   "min_units": s.min_units, "approval": s.approval} for s in policy.steps],
        "completion": {"percent": json_number(policy.completion.percent),
                       "then": policy.completion.then},
        "advance_on": policy.advance_on, "min_consecutive_ok": policy.min_consecutive_ok,
        "max_step_duration": None if timeout is None else
        {"after": json_number(timeout.after), "action": timeout.action},
        "no_data": {"grace": json_number(policy.no_data.grace),
                    "action": policy.no_data.action},
        "error_limit": policy.error_limit,
        "reminder_interval": json_number(policy.reminder_interval),
        "checks": [check_to_dict(check) for check in policy.checks],
    })
    return doc
