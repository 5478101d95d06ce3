"""Domain errors. The core raises these and knows nothing of HTTP; the app maps them."""
from __future__ import annotations

from typing import Any


class FlagshipError(Exception):
    """Base of every error flagship raises on purpose."""

    def __init__(self, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


class ValidationError(FlagshipError):
    """Input that is well-formed but wrong; `errors` maps a field path to messages.

    Field paths are dotted, with list indexes: ``rules.0.conditions.1.values``.
    """

    def __init__(self, message: str, field: str | None = None,
                 errors: dict[str, Any] | None = None) -> None:
        if errors is None and field is not None:
            errors = {field: [message]}
        super().__init__(message if field is None else f"{field}: {message}", errors)
        self.field = field


class NotFoundError(FlagshipError):
    """The named object does not exist."""


class ConflictError(FlagshipError):
    """The write conflicts with the current state (stale version, duplicate key, in use)."""


class VersionRequiredError(FlagshipError):
    """A write that must say which version it edits did not (optimistic concurrency)."""


class AuthenticationError(FlagshipError):
    """No credentials, or credentials that do not identify a live API key."""


class PermissionDeniedError(FlagshipError):
    """The key is valid but its scope does not allow this call."""


class ConfigError(FlagshipError):
    """Invalid configuration, reported at start with the variable to fix."""
