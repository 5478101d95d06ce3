"""Structural diff of two JSON documents, for revisions and the audit log."""
from __future__ import annotations

from typing import Any

_MISSING = object()


def json_diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """List the changes from `before` to `after` as `{path, op, before?, after?}` entries.

    Paths are dotted with list indexes (``rules.0.percentage``); `op` is ``add``,
    ``remove`` or ``replace``. Dicts are compared key by key, lists index by index.
    """
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after), key=str):
            changes += _child(before.get(key, _MISSING), after.get(key, _MISSING), _join(path, key))
        return changes
    if isinstance(before, list) and isinstance(after, list):
        changes = []
        for index in range(max(len(before), len(after))):
            old = before[index] if index < len(before) else _MISSING
            new = after[index] if index < len(after) else _MISSING
            changes += _child(old, new, _join(path, index))
        return changes
    if before == after and type(before) is type(after):
        return []
    return [{"path": path, "op": "replace", "before": before, "after": after}]


def _child(before: Any, after: Any, path: str) -> list[dict[str, Any]]:
    if before is _MISSING:
        return [{"path": path, "op": "add", "after": after}]
    if after is _MISSING:
        return [{"path": path, "op": "remove", "before": before}]
    return json_diff(before, after, path)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
