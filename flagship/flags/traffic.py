"""Layers and experiments as the evaluation core sees them, and the two rule kinds
that use them: ``experiment`` and ``release`` (seed 004).

A layer hashes every unit into 10,000 buckets with its own salt; each active
experiment owns disjoint bucket ranges (mutual exclusion inside the layer, independence
across layers). Inside its buckets an experiment picks the variant with a second hash
salted with the experiment key, weighted by the variant weights. A unit in the buckets
that fails the targeting (the experiment rule's conditions) is not in the experiment and is never handed to another one
of the layer: its flag falls through to the next rule.

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
from flagship.flags import evaluate, model
from flagship.flags.bucketing import BUCKETS, check_percentage, threshold
from flagship.flags.evaluate import (SPLIT, TARGETING_MATCH, Context, EvalState, Evaluation,
                                     RuleEnv, RuleFn)
from flagship.flags.model import Rule

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
    variants = tuple(VariantWeight(str(v["variant"]), float(v.get("weight", 1)), bool(v.get("is_control")))
                     for v in doc.get("variants") or [])
    return ExperimentSpec(
        key=model._key(doc.get("key"), f"{path}.key"), flag=str(doc.get("flag", "")),
        layer=str(doc.get("layer", "")), status=status, ranges=tuple(ranges), variants=variants,
        allowlist=dict(doc.get("allowlist") or {}),
        blocklist=tuple(doc.get("blocklist") or ()),
        start_at=_epoch(doc.get("start_at"), f"{path}.start_at"),
        end_at=_epoch(doc.get("end_at"), f"{path}.end_at"))


def experiment_to_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """The snapshot document of an experiment."""
    return {"key": spec.key, "flag": spec.flag, "layer": spec.layer, "status": spec.status,
            "ranges": [list(r) for r in spec.ranges],
            "variants": [{"variant": v.variant, "weight": v.weight, "is_control": v.is_control}
                         for v in spec.variants],
            "allowlist": dict(spec.allowlist), "blocklist": list(spec.blocklist),
            "start_at": _iso(spec.start_at), "end_at": _iso(spec.end_at)}


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


def pick_variant(experiment_key: str, unit: str, names: list[str], cutoffs: list[int]) -> tuple[str, int]:
    """The variant of `unit` in the experiment (second hash, salted with its key)."""
    bucket = mmh3.hash(f"{experiment_key}:{unit}", 0, False) % BUCKETS
    return names[min(bisect.bisect_right(cutoffs, bucket), len(names) - 1)], bucket


# -- rule kinds --------------------------------------------------------------------------

def _experiment_param(doc: Mapping[str, Any], path: str) -> dict[str, Any]:
    params = doc.get("params")
    if not isinstance(params, Mapping) or not isinstance(params.get("experiment"), str):
        raise ValidationError("needs params.experiment, the experiment key",
                              field=f"{path}.params.experiment")
    return dict(params)


def _experiment_fields(doc: Mapping[str, Any], variants: Mapping[str, Any], path: str) -> model.KindFields:
    for name in ("variant", "percentage"):
        if doc.get(name) is not None:
            raise ValidationError("experiment rules take their split from the experiment",
                                  field=f"{path}.{name}")
    params = _experiment_param(doc, path)
    unknown = sorted(set(params) - {"experiment"})
    if unknown:
        raise ValidationError(f"unknown param {unknown[0]!r}", field=f"{path}.params.{unknown[0]}")
    return None, None, params


def _release_fields(doc: Mapping[str, Any], variants: Mapping[str, Any], path: str) -> model.KindFields:
    params = _experiment_param(doc, path)
    variant = model._variant_ref(doc.get("variant"), variants, f"{path}.variant")
    try:
        percentage = check_percentage(doc.get("percentage"))
    except ValueError as err:
        raise ValidationError(str(err), field=f"{path}.percentage") from None
    return variant, percentage, params


@dataclass(frozen=True)
class _Compiled:
    spec: ExperimentSpec
    layer_salt: str
    owners: list[str | None]
    rivals: frozenset[str]  # other active experiments of the same layer


def _compile_experiment(rule: Rule, env: RuleEnv) -> RuleFn:
    compiled: _Compiled | None = env.extras.get("experiments", {}).get(rule.params["experiment"])
    if compiled is None or compiled.spec.status not in ACTIVE or compiled.spec.flag != env.flag.key:
        return lambda ctx, unit, state: None  # inert: draft, finished or unknown experiment
    spec, hash32, owners = compiled.spec, mmh3.hash, compiled.owners
    names = [v.variant for v in spec.variants if v.variant in env.flag.variants]
    if not names:
        return lambda ctx, unit, state: None
    cutoffs = variant_cutoffs(tuple(v for v in spec.variants if v.variant in env.flag.variants))
    split = {n: env.result(n, SPLIT, rule.id, spec.key) for n in names}
    forced = {u: env.result(v, TARGETING_MATCH, rule.id, spec.key)
              for u, v in spec.allowlist.items() if v in env.flag.variants}
    blocked, targeting, rivals = frozenset(spec.blocklist), env.conditions, compiled.rivals
    layer_prefix, running = f"{compiled.layer_salt}:", spec.status == "running"

    def experiment(ctx: Context, unit: str | None, state: EvalState | None) -> Evaluation | None:
        if unit is None:
            return None
        sticky = state.sticky if state is not None else {}
        kept = sticky.get(spec.key)
        if kept is not None and kept in split:
            return split[kept]  # enrolled units keep their variant (running or paused)
        hit = forced.get(unit)
        if hit is not None:
            return hit
        if not running or unit in blocked or not _in_window(spec, state):
            return None
        if rivals and any(other in sticky for other in rivals):
            return None  # held by another experiment of this layer
        if owners[hash32(layer_prefix + unit, 0, False) % BUCKETS] != spec.key:
            return None
        for condition in targeting:
            if not condition(ctx, unit):
                return None  # filtered after allocation: not handed to anyone else
        return split[pick_variant(spec.key, unit, names, cutoffs)[0]]

    return experiment


def _in_window(spec: ExperimentSpec, state: EvalState | None) -> bool:
    if spec.start_at is None and spec.end_at is None:
        return True
    if state is None:
        return False  # no clock given: do not enrol into a time-boxed experiment
    return ((spec.start_at is None or state.now >= spec.start_at)
            and (spec.end_at is None or state.now < spec.end_at))


def _compile_release(rule: Rule, env: RuleEnv) -> RuleFn:
    conditions = env.conditions
    # a released winner is served outside the experiment: no `experiment`, no exposure
    hit = env.result(rule.variant or "", SPLIT, rule.id)
    # its own salt: the release ramp is independent of the flag's other rollouts
    prefix = f"{rule.params.get('salt') or env.flag.salt + ':release'}:"
    cutoff, hash32 = threshold(rule.percentage or 0), mmh3.hash

    def release(ctx: Context, unit: str | None, state: EvalState | None) -> Evaluation | None:
        if unit is None:
            return None
        for condition in conditions:
            if not condition(ctx, unit):
                return None
        return hit if hash32(prefix + unit, 0, False) % BUCKETS < cutoff else None

    return release


def compile_extras(layers: list[Layer], experiments: list[ExperimentSpec]) -> dict[str, Any]:
    """Snapshot-wide data the experiment rule compiler reads (built once per snapshot)."""
    by_layer: dict[str, list[ExperimentSpec]] = {}
    for spec in experiments:
        by_layer.setdefault(spec.layer, []).append(spec)
    salts = {layer.key: layer.salt for layer in layers}
    compiled: dict[str, _Compiled] = {}
    for layer_key, specs in by_layer.items():
        owners = owner_table(specs)
        active = {s.key for s in specs if s.status in ACTIVE}
        for spec in specs:
            compiled[spec.key] = _Compiled(spec, salts.get(layer_key, layer_key), owners,
                                           frozenset(active - {spec.key}))
    return {"experiments": compiled}


model.RULE_KINDS.update({"experiment": _experiment_fields, "release": _release_fields})
evaluate.RULE_COMPILERS.update({"experiment": _compile_experiment, "release": _compile_release})
