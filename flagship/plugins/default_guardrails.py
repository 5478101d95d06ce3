"""The built-in guardrail checks as a plugin (they are implemented in `flagship.rollout`)."""
from __future__ import annotations

from flagship.hookspecs import hookimpl
from flagship.rollout.builtin_guardrails import BUILTINS
from flagship.rollout.guardrails import Guardrail


@hookimpl
def register_guardrails() -> tuple[Guardrail, ...]:
    """The built-in guardrail checks."""
    return BUILTINS
