"""Built-in targeting operators (pure); `flagship/plugins/default_operators.py` registers them
through the same hook as third-party ones.

Typing rules (shared by every SDK that replays ``tests/conformance/evaluation.json``):

- ``eq``/``neq``/``in``/``not_in`` compare JSON scalars strictly by type: strings equal
  strings, numbers equal numbers (``1 == 1.0``), booleans equal booleans; ``true`` is
  never ``1`` and ``"1"`` is never ``1``.
- String operators (``contains``, ``starts_with``, ``ends_with``, ``matches``) need a
  string attribute; they are case-sensitive. ``matches`` uses ``re.search``.
- ``gt``/``gte``/``lt``/``lte`` need a number (booleans are not numbers). A context
  string that is a plain decimal number (``"42"``, ``"-1.5e3"``) is coerced, because
  contexts built from headers or query strings carry numbers as text.
- ``semver_*`` follow semver 2.0 precedence (pre-releases sort before the release,
  build metadata is ignored); a single leading ``v`` is tolerated.
- ``before``/``after`` compare instants: ISO-8601 strings (naive means UTC) or epoch
  seconds (number) in the context; ISO-8601 strings in the condition.
- A value the operator cannot compare (wrong type) raises and so never matches.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Callable, Iterable

from flagship.flags.operators import Operator

_NUMBER_TEXT = re.compile(r"\s*-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\s*", re.ASCII)
_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    r"[vV]?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    rf"(?:-({_IDENT}(?:\.{_IDENT})*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?",
    re.ASCII,
)
# Booleans get sentinel keys so that True never equals 1 in eq/in (Python says it does).
_TRUE, _FALSE = object(), object()


# -- value checks shared by compile functions ---------------------------------------

def _exactly_one(name: str, values: list) -> Any:
    if len(values) != 1:
        raise ValueError(f"operator '{name}' takes exactly one value, got {len(values)}")
    return values[0]


def _at_least_one(name: str, values: list) -> list:
    if not values:
        raise ValueError(f"operator '{name}' takes at least one value, got none")
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_key(value: Any) -> Any:
    """Type-tagged form of a JSON scalar used for strict equality."""
    kind = type(value)
    if kind is str or kind is int or kind is float:
        return value
    if kind is bool:
        return _TRUE if value else _FALSE
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"cannot compare {kind.__name__} for equality")


def _compile_scalar(name: str, value: Any, index: int) -> Any:
    if value is None:
        raise ValueError(f"operator '{name}': value {index} is null; "
                         "use the 'exists' operator to test for absence")
    if _is_number(value) and not math.isfinite(value):
        raise ValueError(f"operator '{name}': value {index} must be a finite number")
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"operator '{name}': value {index} must be a string, number "
                         f"or boolean, got {type(value).__name__}")
    return _scalar_key(value)


def _compile_strings(name: str, values: list) -> tuple[str, ...]:
    for index, value in enumerate(_at_least_one(name, values)):
        if not isinstance(value, str):
            raise ValueError(f"operator '{name}': value {index} must be a string, "
                             f"got {type(value).__name__}")
        if not value:
            raise ValueError(f"operator '{name}': value {index} is empty and would "
                             "match every string")
    return tuple(values)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string attribute, got {type(value).__name__}")


# -- equality and membership ---------------------------------------------------------

def _equality_operators() -> list[Operator]:
    def one(name: str) -> Callable[[list], Any]:
        return lambda values: _compile_scalar(name, _exactly_one(name, values), 0)

    def many(name: str) -> Callable[[list], frozenset]:
        return lambda values: frozenset(
            _compile_scalar(name, v, i) for i, v in enumerate(_at_least_one(name, values)))

    return [
        Operator("eq", one("eq"), lambda a, p: _scalar_key(a) == p,
                 "attribute equals the value (strictly typed)"),
        Operator("neq", one("neq"), lambda a, p: _scalar_key(a) != p,
                 "attribute is present and differs from the value"),
        Operator("in", many("in"), lambda a, p: _scalar_key(a) in p,
                 "attribute equals any of the values"),
        Operator("not_in", many("not_in"), lambda a, p: _scalar_key(a) not in p,
                 "attribute is present and equals none of the values"),
    ]


# -- strings -------------------------------------------------------------------------

def _contains(value: Any, needles: tuple[str, ...]) -> bool:
    text = _text(value)
    for needle in needles:
        if needle in text:
            return True
    return False


def _compile_patterns(values: list) -> tuple[re.Pattern[str], ...]:
    patterns = []
    for index, value in enumerate(_at_least_one("matches", values)):
        if not isinstance(value, str):
            raise ValueError(f"operator 'matches': value {index} must be a string, "
                             f"got {type(value).__name__}")
        try:
            patterns.append(re.compile(value))
        except re.error as err:
            raise ValueError(f"invalid regular expression {value!r}: {err.msg}") from None
    return tuple(patterns)


def _matches(value: Any, patterns: tuple[re.Pattern[str], ...]) -> bool:
    text = _text(value)
    for pattern in patterns:
        if pattern.search(text) is not None:
            return True
    return False


def _string_operators() -> list[Operator]:
    return [
        Operator("contains", lambda v: _compile_strings("contains", v), _contains,
                 "string attribute contains any of the values"),
        Operator("not_contains", lambda v: _compile_strings("not_contains", v),
                 lambda a, p: not _contains(a, p),
                 "string attribute contains none of the values"),
        Operator("starts_with", lambda v: _compile_strings("starts_with", v),
                 lambda a, p: _text(a).startswith(p),
                 "string attribute starts with any of the values"),
        Operator("ends_with", lambda v: _compile_strings("ends_with", v),
                 lambda a, p: _text(a).endswith(p),
                 "string attribute ends with any of the values"),
        Operator("matches", _compile_patterns, _matches,
                 "string attribute matches any regular expression (re.search)"),
    ]


# -- numbers -------------------------------------------------------------------------

def _compile_number(name: str, values: list) -> float:
    value = _exactly_one(name, values)
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"operator '{name}' needs a finite number, got {value!r}")
    return float(value)


def _number(value: Any) -> float:
    if type(value) is int or type(value) is float:
        return value
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        return float(value)
    raise TypeError(f"expected a number, got {value!r}")


def _numeric_operators() -> list[Operator]:
    def compiler(name: str) -> Callable[[list], float]:
        return lambda values: _compile_number(name, values)

    return [
        Operator("gt", compiler("gt"), lambda a, p: _number(a) > p, "number greater than"),
        Operator("gte", compiler("gte"), lambda a, p: _number(a) >= p,
                 "number greater than or equal"),
        Operator("lt", compiler("lt"), lambda a, p: _number(a) < p, "number less than"),
        Operator("lte", compiler("lte"), lambda a, p: _number(a) <= p,
                 "number less than or equal"),
    ]


# -- semantic versions ---------------------------------------------------------------

SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]


@lru_cache(maxsize=4096)  # app versions repeat across evaluations; parsing is the cost
def semver_key(text: str) -> SemverKey:
    """Parse a semver 2.0 string into a tuple that sorts by semver precedence."""
    found = _SEMVER.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise ValueError(f"invalid semantic version {text!r}; expected e.g. '1.4.2' or "
                         "'2.0.0-rc.1'")
    major, minor, patch, pre = found.groups()
    if pre is None:  # a release outranks every pre-release of the same version
        return int(major), int(minor), int(patch), 1, ()
    # Numeric identifiers compare numerically and sort before alphanumeric ones.
    idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return int(major), int(minor), int(patch), 0, idents


def _compile_semver(name: str, values: list) -> SemverKey:
    value = _exactly_one(name, values)
    if not isinstance(value, str):
        raise ValueError(f"operator '{name}' needs a version string, got {value!r}")
    return semver_key(value)


def _semver(value: Any) -> SemverKey:
    if not isinstance(value, str):
        raise TypeError(f"expected a version string, got {type(value).__name__}")
    return semver_key(value)


def _semver_operators() -> list[Operator]:
    def compiler(name: str) -> Callable[[list], SemverKey]:
        return lambda values: _compile_semver(name, values)

    return [
        Operator("semver_eq", compiler("semver_eq"), lambda a, p: _semver(a) == p,
                 "version has the same precedence"),
        Operator("semver_gt", compiler("semver_gt"), lambda a, p: _semver(a) > p,
                 "version is newer"),
        Operator("semver_gte", compiler("semver_gte"), lambda a, p: _semver(a) >= p,
                 "version is the same or newer"),
        Operator("semver_lt", compiler("semver_lt"), lambda a, p: _semver(a) < p,
                 "version is older"),
        Operator("semver_lte", compiler("semver_lte"), lambda a, p: _semver(a) <= p,
                 "version is the same or older"),
    ]


# -- instants ------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def instant(text: str) -> float:
    """Parse an ISO-8601 datetime (naive means UTC) into epoch seconds."""
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"invalid ISO-8601 datetime {text!r}; expected e.g. "
                         "'2024-05-01T12:00:00Z'") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _compile_instant(name: str, values: list) -> float:
    value = _exactly_one(name, values)
    if not isinstance(value, str):
        raise ValueError(f"operator '{name}' needs an ISO-8601 datetime string, "
                         f"got {value!r}")
    return instant(value)


def _epoch(value: Any) -> float:
    if isinstance(value, str):
        return instant(value)
    if _is_number(value):
        return float(value)
    raise TypeError(f"expected an ISO-8601 string or epoch seconds, got {value!r}")


def _time_operators() -> list[Operator]:
    return [
        Operator("before", lambda v: _compile_instant("before", v),
                 lambda a, p: _epoch(a) < p, "instant is strictly before"),
        Operator("after", lambda v: _compile_instant("after", v),
                 lambda a, p: _epoch(a) > p, "instant is strictly after"),
    ]


# -- presence ------------------------------------------------------------------------

def _compile_exists(values: list) -> None:
    if values:
        raise ValueError(f"operator 'exists' takes no values, got {len(values)}")


_EXISTS = Operator("exists", _compile_exists, lambda a, p: a is not None,
                   "attribute is present and not null (negate: absent)",
                   accepts_missing=True)


def builtin_operators() -> list[Operator]:
    """The built-in operators."""
    return [
        *_equality_operators(), *_string_operators(), *_numeric_operators(),
        *_semver_operators(), *_time_operators(), _EXISTS,
    ]
