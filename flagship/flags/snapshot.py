"""Snapshot: one revision of every flag and segment, compiled once, evaluated many times.

The server and the SDK both build a `Snapshot` from the same JSON document
(``{"revision": int, "flags": [flag docs], "segments": [segment docs]}``) and evaluate
with it, so both always agree.
"""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, TypeVar

from flagship.errors import ValidationError
from flagship.flags.evaluate import (
    DEFAULT, DISABLED, ERROR, FLAG_NOT_FOUND, GENERAL, INVALID_CONTEXT, PARSE_ERROR, SPLIT,
    TARGETING_MATCH, TYPE_MISMATCH, Evaluation, compile_flag, compile_segment)
from flagship.flags.model import (
    Flag, Segment, flag_from_dict, flag_to_dict, segment_from_dict, segment_to_dict)
from flagship.flags.operators import Operator, default_operators

__all__ = ["Snapshot", "Evaluation", "DISABLED", "TARGETING_MATCH", "SPLIT", "DEFAULT",
           "ERROR", "FLAG_NOT_FOUND", "INVALID_CONTEXT", "PARSE_ERROR", "TYPE_MISMATCH",
           "GENERAL"]

_SNAPSHOT_FIELDS = ("revision", "flags", "segments")
T = TypeVar("T")


def _nested(path: str, parse: Callable[[], T]) -> T:
    """Run `parse`, re-raising its ValidationError with field paths under `path`."""
    try:
        return parse()
    except ValidationError as err:
        raw = err.errors.get(err.field, [err.message])[0] if err.field else err.message
        errors = {f"{path}.{name}": messages for name, messages in err.errors.items()}
        raise ValidationError(raw, field=f"{path}.{err.field}" if err.field else path,
                              errors=errors or None) from None


def _by_key(items: Iterable[T], what: str) -> dict[str, T]:
    table: dict[str, T] = {}
    for index, item in enumerate(items):
        key = item.key  # type: ignore[attr-defined]
        if key in table:
            raise ValidationError(f"duplicate {what} key {key!r}", field=f"{what}s.{index}.key")
        table[key] = item
    return table


def _documents(doc: Mapping[str, Any], name: str) -> list[Any]:
    value = doc.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(f"must be a list, got {type(value).__name__}", field=name)
    return value


class Snapshot:
    """An immutable, compiled revision of all flags and segments; `evaluate` never raises."""

    __slots__ = ("_revision", "_flags", "_segments", "_compiled", "_fallbacks")

    def __init__(self, revision: int, flags: Iterable[Flag] = (),
                 segments: Iterable[Segment] = (),
                 operators: Mapping[str, Operator] | None = None) -> None:
        operators = default_operators() if operators is None else operators
        self._revision = revision
        self._segments = _by_key(segments, "segment")
        self._flags = _by_key(flags, "flag")
        members = {key: compile_segment(s, operators) for key, s in self._segments.items()}
        self._compiled = {key: compile_flag(f, operators, members)
                          for key, f in self._flags.items()}
        self._fallbacks = {
            key: Evaluation(key, f.variants[f.default_variant], f.default_variant, ERROR,
                            None, GENERAL, None)
            for key, f in self._flags.items()}

    @classmethod
    def from_dict(cls, doc: Any, operators: Mapping[str, Operator] | None = None) -> Snapshot:
        """Validate and compile a snapshot document; raise ValidationError naming the field."""
        operators = default_operators() if operators is None else operators
        if not isinstance(doc, Mapping):
            raise ValidationError(f"snapshot must be an object, got {type(doc).__name__}")
        unknown = [name for name in doc if name not in _SNAPSHOT_FIELDS]
        if unknown:
            raise ValidationError(f"unknown field {unknown[0]!r} in snapshot", field=unknown[0])
        revision = doc.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise ValidationError(f"must be a non-negative integer, got {revision!r}",
                                  field="revision")
        segments = [_nested(f"segments.{i}", lambda d=d: segment_from_dict(d, operators))
                    for i, d in enumerate(_documents(doc, "segments"))]
        known = _by_key(segments, "segment").keys()
        flags = [_nested(f"flags.{i}", lambda d=d: flag_from_dict(d, operators, known))
                 for i, d in enumerate(_documents(doc, "flags"))]
        return cls(revision, flags, segments, operators)

    @property
    def revision(self) -> int:
        """The store revision this snapshot was built from."""
        return self._revision

    @property
    def flags(self) -> Mapping[str, Flag]:
        """Flags by key (read-only)."""
        return MappingProxyType(self._flags)

    @property
    def segments(self) -> Mapping[str, Segment]:
        """Segments by key (read-only)."""
        return MappingProxyType(self._segments)

    def evaluate(self, flag_key: str, context: Any) -> Evaluation:
        """Evaluate one flag for `context`; errors come back as reason ERROR, never raised."""
        try:
            run = self._compiled.get(flag_key)
        except TypeError:  # an unhashable flag key cannot name a flag
            run = None
        if run is None:
            key = flag_key if isinstance(flag_key, str) else repr(flag_key)
            return Evaluation(key, None, None, ERROR, None, FLAG_NOT_FOUND,
                              f"flag {key!r} not found")
        try:
            return run(context)
        except Exception as err:  # noqa: BLE001 - a broken plugin or odd context must not crash callers
            return replace(self._fallbacks[flag_key],
                           error_message=f"{type(err).__name__}: {err}")

    def evaluate_all(self, context: Any) -> dict[str, Evaluation]:
        """Evaluate every flag for `context`, by flag key."""
        return {key: self.evaluate(key, context) for key in self._compiled}

    def to_dict(self) -> dict[str, Any]:
        """Return the snapshot document (what `from_dict` reads)."""
        return {"revision": self._revision,
                "flags": [flag_to_dict(f) for f in self._flags.values()],
                "segments": [segment_to_dict(s) for s in self._segments.values()]}

    def __repr__(self) -> str:
        return f"<Snapshot revision={self._revision} flags={len(self._flags)}>"
