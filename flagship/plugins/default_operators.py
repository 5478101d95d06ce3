"""The built-in targeting operators as a plugin (they are implemented in the pure core)."""
from __future__ import annotations

from typing import Iterable

from flagship.flags.builtin_operators import builtin_operators
from flagship.flags.operators import Operator
from flagship.hookspecs import hookimpl


@hookimpl
def register_operators() -> Iterable[Operator]:
    """Return the built-in operators."""
    return builtin_operators()
