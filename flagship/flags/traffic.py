"""Layers and experiments as the evaluation core sees them (seed 004); the rule kinds
that use them are in `flagship.flags.rules`.

A layer hashes every unit into 10,000 buckets with its own salt; each active
experiment owns disjoint bucket ranges (mutual exclusion inside the layer, independence
across layers). Inside its buckets an experiment picks the variant with a second hash
salted with the experiment's own salt, weighted by the variant weights. A unit in the
buckets that fails the targeting (the experiment rule's conditions) is not in the
experiment and is never handed to another one of the layer: its flag falls through to
the next rule.

Hash streams never collide by default: flag rollouts hash ``"{flag salt}:{unit}"`` with
the flag key as salt, layers ``"layer:{key}"``, experiments ``"experiment:{key}"`` and
release rules ``"{flag salt}:release"``. A snapshot document without a salt (written
before salts were namespaced) falls back to the object's key, which is what those
objects used.

Sticky records (``EvalState.sticky``) win over the hash: a unit keeps its first
variant while the experiment is running or paused, and a unit held by another active
experiment of the same layer is never enrolled in this one.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import mmh3

from flagship.errors import ValidationError
from flagship.flags import model
from flagship.flags.bucketing import BUCKETS
from flagship.flags.evaluate import EvalState

ACTIVE = ("running", "paused")
STATUSES = ("draft", "running", "paused", "completed", "terminated")


@dataclass(frozen=True)
class Layer:
    """A namespace of 10,000 buckets hashed with its own salt."""

    key: str
    salt: str


@dataclass(frozen=True)
class VariantWeight:
    variant: str
    weight: float
    is_control: bool = False


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """What evaluation needs of an experiment (the rest lives in the experiments domain)."""

    key: str
    flag: str
    layer: str
    status: str
    ranges: tuple[tuple[int, int], ...] = ()
    variants: tuple[VariantWeight, ...] = ()
    allowlist: Mapping[str, str] = field(default_factory=dict)
    blocklist: tuple[str, ...] = ()
    start_at: float | None = None  # epoch seconds
    end_at: float | None = None
    salt: str = ""  # the variant hash's salt; "" means the key (documents from before salts)
    epoch: int = 1  # the weights' configuration epoch (recorded with each assignment)

    @property
    def variant_salt(self) -> str:
        return self.salt or self.key


def _epoch(value: Any, path: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(f"must be an ISO-8601 datetime, got {value!r}", field=path) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc).isoformat()


def layer_from_dict(doc: Any, path: str = "layer") -> Layer:
    """Validate a snapshot layer document."""
    if not isinstance(doc, Mapping):
        raise ValidationError("must be an object", field=path)
    key = model._key(doc.get("key"), f"{path}.key")
    salt = doc.get("salt") or key
    if not isinstance(salt, str):
        raise ValidationError("must be a string", field=f"{path}.salt")
    return Layer(key, salt)


def experiment_from_dict(doc: Any, path: str = "experiment") -> ExperimentSpec:
    """Validate a snapshot experiment document.

    The experiment's targeting is not here: it is the `conditions` of its rule on the
    flag, compiled with the flag like any other rule's.
    """
    if not isinstance(doc, Mapping):
        raise ValidationError("must be an object", field=path)
    status = doc.get("status", "draft")
    if status not in STATUSES:
        raise ValidationError(f"must be one of {', '.join(STATUSES)}", field=f"{path}.status")
    ranges = []
    for i, pair in enumerate(doc.get("ranges") or []):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, int) and 0 <= x <= BUCKETS for x in pair) or pair[0] > pair[1]):
            raise ValidationError("must be [start, end] with 0 <= start <= end <= 10000",
                                  field=f"{path}.ranges.{i}")
        ranges.append((pair[0], pair[1]))
    raw_variants = doc.get("variants") or []
    if not isinstance(raw_variants, list):
        raise ValidationError("must be a list", field=f"{path}.variants")
    variants = []
    for i, v in enumerate(raw_variants):
        if not isinstance(v, Mapping) or not isinstance(v.get("variant"), str):
            raise ValidationError("must be an object with a 'variant' name", field=f"{path}.variants.{i}")
        weight = v.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValidationError("must be a non-negative number", field=f"{path}.variants.{i}.weight")
        variants.append(VariantWeight(v["variant"], float(weight), bool(v.get("is_control"))))
    allowlist, blocklist = doc.get("allowlist") or {}, doc.get("blocklist") or []
    if not isinstance(allowlist, Mapping):
        raise ValidationError("must be an object of unit -> variant", field=f"{path}.allowlist")
    if not isinstance(blocklist, list):
        raise ValidationError("must be a list of units", field=f"{path}.blocklist")
    return ExperimentSpec(
        key=model._key(doc.get("key"), f"{path}.key"), flag=str(doc.get("flag", "")),
        layer=str(doc.get("layer", "")), status=status, ranges=tuple(ranges), variants=tuple(variants),
        allowlist=dict(allowlist),
        blocklist=tuple(blocklist),
        start_at=_epoch(doc.get("start_at"), f"{path}.start_at"),
        end_at=_epoch(doc.get("end_at"), f"{path}.end_at"),
        salt=_salt(doc.get("salt"), f"{path}.salt"), epoch=_positive(doc.get("epoch", 1), f"{path}.epoch"))


def _salt(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError("must be a string", field=path)
    return value


def _positive(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("must be a positive integer", field=path)
    return value


def experiment_to_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """The snapshot document of an experiment."""
    return {"key": spec.key, "flag": spec.flag, "layer": spec.layer, "status": spec.status,
            "ranges": [list(r) for r in spec.ranges],
            "variants": [{"variant": v.variant, "weight": v.weight, "is_control": v.is_control}
                         for v in spec.variants],
            "allowlist": dict(spec.allowlist), "blocklist": list(spec.blocklist),
            "start_at": _iso(spec.start_at), "end_at": _iso(spec.end_at),
            "salt": spec.variant_salt, "epoch": spec.epoch}


def layer_to_dict(layer: Layer) -> dict[str, Any]:
    return {"key": layer.key, "salt": layer.salt}


# -- pure assignment math --------------------------------------------------------------

def owner_table(experiments: list[ExperimentSpec]) -> list[str | None]:
    """bucket -> key of the active experiment owning it (None: free)."""
    owners: list[str | None] = [None] * BUCKETS
    for spec in experiments:
        if spec.status in ACTIVE:
            for start, end in spec.ranges:
                owners[start:end] = [spec.key] * (end - start)
    return owners


def variant_cutoffs(variants: tuple[VariantWeight, ...]) -> list[int]:
    """Cumulative bucket boundaries of the variants (weights normalised to 10,000)."""
    # scale by the largest weight first: a snapshot from elsewhere may carry huge weights
    # whose sum overflows to infinity
    largest = max((v.weight for v in variants if math.isfinite(v.weight)), default=1.0) or 1.0
    weights = [max(v.weight, 0.0) / largest if math.isfinite(v.weight) else 1.0 for v in variants]
    total = sum(weights) or 1.0
    cutoffs, running = [], 0.0
    for weight in weights:
        running += weight
        cutoffs.append(int(round(running / total * BUCKETS)))
    if cutoffs:
        cutoffs[-1] = BUCKETS
    return cutoffs


def pick_variant(salt: str, unit: str, names: list[str], cutoffs: list[int]) -> tuple[str, int]:
    """The variant of `unit` in the experiment (second hash, salted with the experiment's salt)."""
    bucket = mmh3.hash(f"{salt}:{unit}", 0, False) % BUCKETS
    return names[min(bisect.bisect_right(cutoffs, bucket), len(names) - 1)], bucket


@dataclass(frozen=True)
class CompiledExperiment:
    """An experiment as its rule compiler needs it, shared by the flags of one snapshot."""

    spec: ExperimentSpec
    layer_salt: str
    owners: list[str | None]
    rivals: frozenset[str]  # other active experiments of the same layer


def in_window(spec: ExperimentSpec, state: EvalState | None) -> bool:
    if spec.start_at is None and spec.end_at is None:
        return True
    if state is None:
        return False  # no clock given: do not enrol into a time-boxed experiment
    return ((spec.start_at is None or state.now >= spec.start_at)
            and (spec.end_at is None or state.now < spec.end_at))


def compile_extras(layers: list[Layer], experiments: list[ExperimentSpec]) -> dict[str, Any]:
    """Snapshot-wide data the experiment rule compiler reads (built once per snapshot)."""
    by_layer: dict[str, list[ExperimentSpec]] = {}
    for spec in experiments:
        by_layer.setdefault(spec.layer, []).append(spec)
    salts = {layer.key: layer.salt for layer in layers}
    compiled: dict[str, CompiledExperiment] = {}
    for layer_key, specs in by_layer.items():
        owners = owner_table(specs)
        active = {s.key for s in specs if s.status in ACTIVE}
        for spec in specs:
            compiled[spec.key] = CompiledExperiment(spec, salts.get(layer_key, layer_key), owners,
                                           frozenset(active - {spec.key}))
    return {"experiments": compiled}

