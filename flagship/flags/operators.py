"""Targeting operators: the `Operator` type and the plain operator table the engine uses.

Operators arrive through the ``register_operators`` hook (built-ins included); the app
or SDK collects them once into a ``dict[str, Operator]`` and hands that dict to the
model validator and the compiler. Nothing here runs a plugin manager.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from flagship.errors import ConfigError


@dataclass(frozen=True)
class Operator:
    """A named condition test: `compile` checks values at write time, `match` runs per evaluation.

    ``compile(values)`` gets the condition's ``values`` list, raises ``ValueError`` with an
    actionable message when it is wrong, and returns a prepared form. ``match(value,
    prepared)`` returns whether a present attribute value satisfies the condition; it
    may raise ``TypeError``/``ValueError`` for values it cannot compare (counted as no
    match). When ``accepts_missing`` is true the engine also asks ``match(None,
    prepared)`` about an absent attribute (once, at compile time), so ``negate`` applies
    to absence too; otherwise an absent attribute never matches.
    """

    name: str
    compile: Callable[[list], Any]
    match: Callable[[Any, Any], bool]
    description: str = ""
    accepts_missing: bool = False


def build_operator_table(groups: Iterable[Iterable[Operator]]) -> dict[str, Operator]:
    """Merge operator groups (one per plugin) into a name -> Operator table; names must be unique."""
    table: dict[str, Operator] = {}
    for group in groups:
        for operator in group:
            if operator.name in table:
                raise ConfigError(
                    f"operator {operator.name!r} is registered by more than one plugin",
                    errors={"operators": [f"duplicate operator {operator.name!r}"]},
                )
            table[operator.name] = operator
    return table


def default_operators() -> dict[str, Operator]:
    """Return the table of built-in operators without a plugin manager (what the SDK uses)."""
    # Imported here, not at module top: the built-ins import `Operator` from us.
    from flagship.flags.builtin_operators import builtin_operators

    return build_operator_table([builtin_operators()])


class OperatorUnavailable(LookupError):
    """A condition names an operator this process does not have (a plugin the server has)."""


@dataclass(frozen=True)
class UnavailableOperator(Operator):
    """Stands in for an operator this process does not have (see `placeholder`)."""

    def fail(self) -> OperatorUnavailable:
        return OperatorUnavailable(f"operator {self.name!r} is not available here (install the "
                                   "plugin that provides it and pass its operators)")


def placeholder(name: str) -> Operator:
    """Stands in for an operator this process does not have, so one flag using a plugin's
    operator does not make the whole snapshot unusable: a condition using it raises
    whenever an evaluation reaches it, attribute present or not (we cannot know how the
    real operator treats either), so the flag answers ERROR with the reason while its
    earlier rules and every other flag still evaluate."""
    def match(value: Any, prepared: Any) -> bool:
        raise OperatorUnavailable(f"operator {name!r} is not available here")
    return UnavailableOperator(name, compile=lambda values: values, match=match,
                               description="not available in this process")


def operators_used(document: Any) -> set[str]:
    """The operator names the conditions of a flags/segments document use (anywhere in it)."""
    found: set[str] = set()
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("operator")
            if isinstance(name, str) and "attribute" in node:
                found.add(name)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def with_placeholders(document: Any, operators: Mapping[str, Operator]
                      ) -> tuple[Mapping[str, Operator], list[str]]:
    """`operators`, plus a `placeholder` for each operator the `document` uses and they lack;
    and the names of those (sorted). The server and the SDK compile snapshots with these, so a
    plugin missing in one process costs the flags that use it, not the whole environment."""
    missing = sorted(operators_used(document) - set(operators))
    if not missing:
        return operators, []
    return {**operators, **{name: placeholder(name) for name in missing}}, missing
