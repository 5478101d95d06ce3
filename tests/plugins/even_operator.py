"""A third-party style plugin: an `is_even` operator and an event recorder."""
from __future__ import annotations

from flagship.flags.operators import Operator
from flagship.hookspecs import hookimpl

EVENTS: list[dict] = []


def _compile(values: list) -> bool:
    if values not in ([], [True], [False]):
        raise ValueError("is_even takes no values, or [true] / [false]")
    return values != [False]


def _match(actual: object, want_even: bool) -> bool:
    if isinstance(actual, bool) or not isinstance(actual, int):
        raise TypeError("is_even needs an integer")
    return (actual % 2 == 0) is want_even


@hookimpl
def register_operators():
    return [Operator(name="is_even", compile=_compile, match=_match,
                     description="the attribute is an even integer")]


@hookimpl
def track_event(event):
    EVENTS.append(event)
