"""Bounds on untrusted JSON values (pure): nesting depth, integer size, NUL characters.

Python parses JSON nested ~1,000 deep and integers of 4,000 digits, but much of what
runs afterwards (recursive validation, `repr`, float conversion, SQL parameters) does not
cope with them. One iterative walk (no recursion, so any depth is safe to inspect) finds
the first value out of bounds and names its dotted path.
"""
from __future__ import annotations

from typing import Any

MAX_BODY_DEPTH = 64      # a request body: documents here nest ~8 deep; variant values below
MAX_VALUE_DEPTH = 32     # a stored free-form value: a JSON variant, event properties
INT_LIMIT = 2 ** 63      # integers must fit in 64 bits (SQL bigint, most JSON parsers)


def json_problem(value: Any, max_depth: int = MAX_BODY_DEPTH, nul: bool = True,
                 path: str = "") -> tuple[str, str] | None:
    """`(path, message)` of the first part of `value` out of bounds, or None.

    Out of bounds: nested deeper than `max_depth` (a scalar is depth 0), an integer
    outside the signed 64-bit range, and (when `nul`) a string or key holding NUL.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            if depth >= max_depth:
                return where or "body", f"nested deeper than {max_depth} levels"
            for key, child in item.items():
                child_path = f"{where}.{key}" if where else str(key)
                if nul and isinstance(key, str) and "\x00" in key:
                    return child_path, "text must not contain NUL characters"
                stack.append((child, child_path, depth + 1))
        elif kind is list:
            if depth >= max_depth:
                return where or "body", f"nested deeper than {max_depth} levels"
            stack.extend((child, f"{where}.{index}" if where else str(index), depth + 1)
                         for index, child in enumerate(item))
        elif kind is int:
            if not -INT_LIMIT <= item < INT_LIMIT:
                return where or "body", "integers must be between -2^63 and 2^63 - 1"
        elif kind is str:
            if nul and "\x00" in item:
                return where or "body", "text must not contain NUL characters"
    return None


def short_repr(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, safe for huge integers and deep nesting."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if isinstance(value, (dict, list)) and json_problem(value, MAX_VALUE_DEPTH, nul=False):
        return f"<a {type(value).__name__} out of bounds>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
