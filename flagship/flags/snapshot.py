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
    TARGETING_MATCH, TYPE_MISMATCH, EvalState, Evaluation, compile_flag, compile_segment)
from flagship.flags.explain import checked, explain, not_found
from flagship.flags.traffic import (ExperimentSpec, Layer, compile_extras, experiment_from_dict,
                                   experiment_to_dict, layer_from_dict, layer_to_dict)
from flagship.flags.model import (
    Flag, Segment, flag_from_dict, flag_to_dict, segment_from_dict, segment_to_dict)
from flagship.flags.operators import Operator, default_operators

__all__ = ["Snapshot", "Evaluation", "EvalState", "DISABLED", "TARGETING_MATCH", "SPLIT", "DEFAULT",
           "ERROR", "FLAG_NOT_FOUND", "INVALID_CONTEXT", "PARSE_ERROR", "TYPE_MISMATCH",
           "GENERAL"]

_SNAPSHOT_FIELDS = ("revision", "environment", "flags", "segments", "layers", "experiments")
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

    __slots__ = ("_revision", "_flags", "_segments", "_layers", "_experiments", "_compiled",
                 "_fallbacks", "_operators", "_members", "_extras", "_subjects")

    def __init__(self, revision: int, flags: Iterable[Flag] = (),
                 segments: Iterable[Segment] = (),
                 operators: Mapping[str, Operator] | None = None,
                 layers: Iterable[Layer] = (),
                 experiments: Iterable[ExperimentSpec] = ()) -> None:
        operators = default_operators() if operators is None else operators
        self._revision = revision
        self._segments = _by_key(segments, "segment")
        self._flags = _by_key(flags, "flag")
        self._layers = _by_key(layers, "layer")
        self._experiments = _by_key(experiments, "experiment")
        members = {key: compile_segment(s, operators) for key, s in self._segments.items()}
        extras = compile_extras(list(self._layers.values()), list(self._experiments.values()))
        self._compiled = {key: compile_flag(f, operators, members, extras)
                          for key, f in self._flags.items()}
        # what the slow-path explainer needs, shared with the compiled flags
        self._operators, self._members, self._extras = operators, members, extras
        # guarded rollouts record their arms under a subject: rollout:<id>:<attempt>
        self._subjects = {rule.params["subject"]: (key, rule.id) for key, f in self._flags.items()
                          for rule in f.rules if rule.params.get("subject")}
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
        layers = [layer_from_dict(d, f"layers.{i}") for i, d in enumerate(_documents(doc, "layers"))]
        experiments = [experiment_from_dict(d, f"experiments.{i}")
                       for i, d in enumerate(_documents(doc, "experiments"))]
        return cls(revision, flags, segments, operators, layers, experiments)

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

    @property
    def layers(self) -> Mapping[str, Layer]:
        """Layers by key (read-only)."""
        return MappingProxyType(self._layers)

    @property
    def subjects(self) -> Mapping[str, tuple[str, str]]:
        """Guarded rollouts' analysis subjects -> (flag key, rule id) (read-only)."""
        return MappingProxyType(self._subjects)

    @property
    def experiments(self) -> Mapping[str, ExperimentSpec]:
        """Experiments by key (read-only)."""
        return MappingProxyType(self._experiments)

    def evaluate(self, flag_key: str, context: Any, state: EvalState | None = None) -> Evaluation:
        """Evaluate one flag for `context`; errors come back as reason ERROR, never raised.

        `state` carries the clock and the unit's sticky assignments; without it,
        experiments with a time window do not enrol and nothing is sticky.
        """
        try:
            run = self._compiled.get(flag_key)
        except TypeError:  # an unhashable flag key cannot name a flag
            run = None
        if run is None:
            key = flag_key if isinstance(flag_key, str) else repr(flag_key)
            return Evaluation(key, None, None, ERROR, None, FLAG_NOT_FOUND,
                              f"flag {key!r} not found")
        try:
            return run(context, state)
        except Exception as err:  # noqa: BLE001 - a broken plugin or odd context must not crash callers
            return replace(self._fallbacks[flag_key],
                           error_message=f"{type(err).__name__}: {err}")

    def explain(self, flag_key: str, context: Any,
                state: EvalState | None = None) -> dict[str, Any]:
        """Explain how `flag_key` evaluates, step by step with the raw numbers; never raises."""
        evaluation = self.evaluate(flag_key, context, state)
        if evaluation.error_code == FLAG_NOT_FOUND:  # only evaluate() itself reports this code
            return not_found(evaluation)
        doc = explain(self._flags[flag_key], context, state, operators=self._operators,
                      segments=self._segments, compiled_segments=self._members,
                      extras=self._extras)
        return checked(doc, evaluation)

    def evaluate_all(self, context: Any, state: EvalState | None = None) -> dict[str, Evaluation]:
        """Evaluate every flag for `context`, by flag key."""
        return {key: self.evaluate(key, context, state) for key in self._compiled}

    def to_dict(self) -> dict[str, Any]:
        """Return the snapshot document (what `from_dict` reads)."""
        return {"revision": self._revision,
                "flags": [flag_to_dict(f) for f in self._flags.values()],
                "segments": [segment_to_dict(s) for s in self._segments.values()],
                "layers": [layer_to_dict(layer) for layer in self._layers.values()],
                "experiments": [experiment_to_dict(e) for e in self._experiments.values()]}

    def __repr__(self) -> str:
        return f"<Snapshot revision={self._revision} flags={len(self._flags)}>"
