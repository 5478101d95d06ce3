"""Experiments and metrics as frozen models: parsed and validated once, used everywhere.

`experiment_from_dict` is the only way an untrusted configuration document becomes an
`Experiment` (it raises ValidationError naming the field); `experiment_to_dict` gives the
canonical document back, which is what the store keeps, and `load_experiment` rebuilds
the model from that stored document without re-validating it. Derived facts (control,
treatments, normalised weights, metric lists, the analysis window) live here and
nowhere else. Pure: no Flask, SQL or Redis.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Collection, Mapping

from flagship.errors import ValidationError
from flagship.flags.bucketing import check_percentage
from flagship.flags.model import KEY_PATTERN, Condition, condition_to_dict, conditions_from_list
from flagship.flags.operators import Operator

RULE_PREFIX = "exp-"
RELEASE_PREFIX = "rel-"
STATUSES = ("draft", "running", "paused", "completed", "terminated")
ACTIVE = ("running", "paused")
FINISHED = ("completed", "terminated")
CORRECTIONS = ("holm", "bonferroni", "bh", "by", "none")
METRIC_KINDS = ("conversion", "sum", "mean", "count", "ratio")
DIRECTIONS = ("increase", "decrease")
EVENT_MAX = 128
MAX_METADATA_BYTES = 16_384  # free-form notes for people and tools, not a data store
DEFAULTS: dict[str, Any] = {
    "description": "", "hypothesis": "", "owner": "", "traffic_percentage": 100.0,
    "targeting": [], "allowlist": {}, "blocklist": [], "start_at": None, "end_at": None,
    "minimum_sample_size": 0, "significance_level": 0.05, "power": 0.8,
    "success_metrics": [], "guardrail_metrics": [], "metadata": {}, "rule_position": 0,
    "multiple_testing": "holm", "salt": None,
}


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment and its relative weight."""

    name: str
    weight: float
    is_control: bool = False


@dataclass(frozen=True)
class GuardrailMetric:
    """A metric that must not get worse than `margin` (relative to the control)."""

    metric: str
    margin: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """An experiment's configuration (seed 000's ExperimentConfig)."""

    key: str
    name: str
    flag: str
    layer: str
    variants: tuple[Variant, ...]
    salt: str
    description: str = ""
    hypothesis: str = ""
    owner: str = ""
    traffic_percentage: float = 100.0
    targeting: tuple[Condition, ...] = ()
    allowlist: Mapping[str, str] = field(default_factory=dict)
    blocklist: tuple[str, ...] = ()
    start_at: datetime | None = None
    end_at: datetime | None = None
    minimum_sample_size: int = 0
    significance_level: float = 0.05
    power: float = 0.8
    success_metrics: tuple[str, ...] = ()
    guardrail_metrics: tuple[GuardrailMetric, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    rule_position: int = 0
    multiple_testing: str = "holm"

    @property
    def control(self) -> str:
        return next(v.name for v in self.variants if v.is_control)

    @property
    def treatments(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants if not v.is_control)

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    @property
    def weights(self) -> dict[str, float]:
        return {v.name: v.weight for v in self.variants}

    @property
    def shares(self) -> dict[str, float]:
        """Each variant's expected share of the units (weights normalised to 1)."""
        total = sum(v.weight for v in self.variants) or 1.0
        return {v.name: v.weight / total for v in self.variants}

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Success then guardrail metric keys, without repeats."""
        keys = [*self.success_metrics, *(g.metric for g in self.guardrail_metrics)]
        return tuple(dict.fromkeys(keys))

    @property
    def guardrail_margins(self) -> dict[str, float]:
        return {g.metric: g.margin for g in self.guardrail_metrics}

    @property
    def rule_id(self) -> str:
        return RULE_PREFIX + self.key

    @property
    def release_rule_id(self) -> str:
        return RELEASE_PREFIX + self.key

    def window(self, started_at: datetime | None,
               ended_at: datetime | None) -> tuple[datetime, datetime | None] | None:
        """When events count: from the later of start and start_at to the earlier of end
        and end_at (None before the experiment started)."""
        if started_at is None:
            return None
        starts = [t for t in (started_at, self.start_at) if t is not None]
        ends = [t for t in (ended_at, self.end_at) if t is not None]
        return max(starts), (min(ends) if ends else None)


# -- validation ---------------------------------------------------------------------------------

def _fail(field_path: str, message: str) -> None:
    raise ValidationError(message, field=field_path)


def default_salt(key: str) -> str:
    """The variant hash's salt of a new experiment: its own namespace (never a layer's)."""
    return f"experiment:{key}"


def _variants(raw: list[Mapping[str, Any]], flag_variants: Mapping[str, Any] | None) -> tuple[Variant, ...]:
    if len(raw) < 2:
        _fail("variants", "an experiment needs at least two variants (a control and a treatment)")
    names = [v["variant"] for v in raw]
    if len(set(names)) != len(names):
        _fail("variants", "variant names must be unique")
    if sum(bool(v.get("is_control")) for v in raw) != 1:
        _fail("variants", "exactly one variant must have is_control: true")
    out = []
    for i, v in enumerate(raw):
        if not KEY_PATTERN.fullmatch(v["variant"]):
            _fail(f"variants.{i}.variant", "must be letters, digits, '_', '.' or '-'")
        weight = float(v.get("weight", 1))
        if not 0 < weight <= 1_000_000:
            _fail(f"variants.{i}.weight", "must be greater than 0 and at most 1,000,000 (weights are relative)")
        if flag_variants is not None and v["variant"] not in flag_variants:
            _fail(f"variants.{i}.variant",
                  f"the flag has no variant {v['variant']!r}; it has {', '.join(flag_variants)}")
        if flag_variants is None and "value" not in v:
            _fail(f"variants.{i}.value", "the flag does not exist yet: give every variant a value "
                                         "to create it")
        out.append(Variant(v["variant"], weight, bool(v.get("is_control"))))
    return tuple(out)


def parse_instant(value: Any, field_path: str) -> datetime | None:
    """An aware UTC datetime from an ISO-8601 string or datetime (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            _fail(field_path, f"must be an ISO-8601 datetime, got {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        _fail(field_path, "is outside the supported range of datetimes")
    raise AssertionError("unreachable")


def _numbers(doc: dict[str, Any]) -> float:
    try:
        traffic = check_percentage(doc["traffic_percentage"])
    except ValueError as err:
        _fail("traffic_percentage", str(err))
    if traffic <= 0:
        _fail("traffic_percentage", "must be greater than 0")
    if not 0 < doc["significance_level"] < 0.5:
        _fail("significance_level", "must be between 0 and 0.5")
    if not 0 < doc["power"] < 1:
        _fail("power", "must be between 0 and 1")
    if doc["minimum_sample_size"] < 0:
        _fail("minimum_sample_size", "must not be negative")
    if doc["rule_position"] < 0:
        _fail("rule_position", "must not be negative")
    if doc["multiple_testing"] not in CORRECTIONS:
        _fail("multiple_testing", f"must be one of {', '.join(CORRECTIONS)}")
    return traffic


def _overrides(doc: Mapping[str, Any], names: set[str]) -> None:
    for unit, variant in doc["allowlist"].items():
        if variant not in names:
            _fail(f"allowlist.{unit}", f"{variant!r} is not a variant of this experiment")
    both = sorted(set(doc["allowlist"]) & set(doc["blocklist"]))
    if both:
        _fail("blocklist", f"unit {both[0]!r} is both allowlisted and blocklisted")


def _guardrails(raw: list[Mapping[str, Any]]) -> tuple[GuardrailMetric, ...]:
    out = []
    for i, guard in enumerate(raw):
        margin = float(guard.get("margin", 0) or 0)
        if margin < 0:
            _fail(f"guardrail_metrics.{i}.margin", "must not be negative")
        out.append(GuardrailMetric(guard["metric"], margin))
    return tuple(out)


def _salt(value: Any, key: str) -> str:
    if value is None:
        return default_salt(key)
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        _fail("salt", "must be a string of 1 to 128 characters")
    return value


def experiment_from_dict(doc: Mapping[str, Any], *, operators: Mapping[str, Operator],
                         segment_keys: Collection[str],
                         flag_variants: Mapping[str, Any] | None) -> Experiment:
    """Validate a configuration document; raise ValidationError naming the field.

    `flag_variants` is the flag's variants, or None when the flag does not exist yet (then
    every variant must carry a `value` and the flag is created from them).
    """
    out = {**DEFAULTS, **{k: v for k, v in doc.items() if v is not None or k in ("start_at", "end_at")}}
    key = out["key"]
    if len(key) > 120:
        _fail("key", "must be at most 120 characters")
    variants = _variants(list(doc["variants"]), flag_variants)
    targeting = conditions_from_list(out["targeting"], "targeting", operators, segment_keys)
    out["allowlist"], out["blocklist"] = dict(out["allowlist"]), list(out["blocklist"])
    if not isinstance(out["metadata"], Mapping):
        _fail("metadata", "must be an object")
    if len(json.dumps(out["metadata"], separators=(",", ":"), default=str)) > MAX_METADATA_BYTES:
        _fail("metadata", f"must be at most {MAX_METADATA_BYTES:,} bytes of JSON")
    _overrides(out, {v.name for v in variants})
    start_at, end_at = parse_instant(out["start_at"], "start_at"), parse_instant(out["end_at"], "end_at")
    if start_at and end_at and end_at <= start_at:
        _fail("end_at", "must be after start_at")
    traffic = _numbers(out)
    return Experiment(
        key=key, name=out.get("name") or key, flag=out["flag"], layer=out["layer"], variants=variants,
        salt=_salt(out["salt"], key), description=out["description"], hypothesis=out["hypothesis"],
        owner=out["owner"], traffic_percentage=traffic, targeting=targeting,
        allowlist=out["allowlist"], blocklist=tuple(out["blocklist"]), start_at=start_at,
        end_at=end_at, minimum_sample_size=int(out["minimum_sample_size"]),
        significance_level=float(out["significance_level"]), power=float(out["power"]),
        success_metrics=tuple(out["success_metrics"]),
        guardrail_metrics=_guardrails(list(out["guardrail_metrics"])), metadata=dict(out["metadata"]),
        rule_position=int(out["rule_position"]), multiple_testing=out["multiple_testing"])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def experiment_to_dict(experiment: Experiment) -> dict[str, Any]:
    """The canonical configuration document (what the store keeps and the API shows)."""
    e = experiment
    return {
        "key": e.key, "name": e.name, "description": e.description, "hypothesis": e.hypothesis,
        "owner": e.owner, "flag": e.flag, "layer": e.layer, "salt": e.salt,
        "traffic_percentage": e.traffic_percentage,
        "variants": [{"variant": v.name, "weight": v.weight, "is_control": v.is_control}
                     for v in e.variants],
        "targeting": [condition_to_dict(c) for c in e.targeting],
        "allowlist": dict(e.allowlist), "blocklist": list(e.blocklist),
        "start_at": _iso(e.start_at), "end_at": _iso(e.end_at),
        "minimum_sample_size": e.minimum_sample_size, "significance_level": e.significance_level,
        "power": e.power, "success_metrics": list(e.success_metrics),
        "guardrail_metrics": [{"metric": g.metric, "margin": g.margin} for g in e.guardrail_metrics],
        "metadata": dict(e.metadata), "rule_position": e.rule_position,
        "multiple_testing": e.multiple_testing,
    }


def _condition(doc: Mapping[str, Any]) -> Condition:
    if "segment" in doc:
        return Condition(segment=doc["segment"], negate=bool(doc.get("negate")))
    return Condition(doc["attribute"], doc["operator"], tuple(doc.get("values") or ()),
                     bool(doc.get("negate")))


def load_experiment(doc: Mapping[str, Any]) -> Experiment:
    """Rebuild the model from a stored canonical document (validated when it was written)."""
    d = {**DEFAULTS, **doc}
    return Experiment(
        key=d["key"], name=d.get("name") or d["key"], flag=d["flag"], layer=d["layer"],
        variants=tuple(Variant(v["variant"], float(v["weight"]), bool(v["is_control"]))
                       for v in d["variants"]),
        salt=d["salt"] or d["key"], description=d["description"], hypothesis=d["hypothesis"],
        owner=d["owner"], traffic_percentage=float(d["traffic_percentage"]),
        targeting=tuple(_condition(c) for c in d["targeting"]), allowlist=dict(d["allowlist"]),
        blocklist=tuple(d["blocklist"]), start_at=parse_instant(d["start_at"], "start_at"),
        end_at=parse_instant(d["end_at"], "end_at"), minimum_sample_size=int(d["minimum_sample_size"]),
        significance_level=float(d["significance_level"]), power=float(d["power"]),
        success_metrics=tuple(d["success_metrics"]),
        guardrail_metrics=tuple(GuardrailMetric(g["metric"], float(g.get("margin", 0) or 0))
                                for g in d["guardrail_metrics"]),
        metadata=dict(d["metadata"]), rule_position=int(d["rule_position"]),
        multiple_testing=d["multiple_testing"])


def flag_from_variants(key: str, raw_variants: list[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """A new flag document built from an experiment's variant values (type inferred)."""
    values = [v["value"] for v in raw_variants]
    if all(isinstance(x, bool) for x in values):
        kind = "boolean"
    elif all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
        kind = "number"
    elif all(isinstance(x, str) for x in values):
        kind = "string"
    else:
        kind = "json"
    control = next(v["variant"] for v in raw_variants if v.get("is_control"))
    return {"key": key, "type": kind, "variants": {v["variant"]: v["value"] for v in raw_variants},
            "default_variant": control, "off_variant": control,
            "description": f"Created for experiment {name}"}


# -- metrics ------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Metric:
    """A metric definition.

    `conversion`: the unit did `event` at least once (per exposed unit); `sum`: total of
    event values per exposed unit; `count`: events per exposed unit; `mean`: the average
    event value (total value / number of events, per variant), analysed with the delta
    method over per-unit sums and counting only units with at least one event; `ratio`:
    sum of `event` over sum of `denominator_event` per unit (delta method).
    `winsorize_percentile` caps per-unit values (for `mean`, the unit's average) at that
    percentile of the experiment's units.
    """

    key: str
    name: str
    event: str
    kind: str
    denominator_event: str | None = None
    direction: str = "increase"
    winsorize_percentile: float | None = None
    description: str = ""

    @property
    def is_ratio(self) -> bool:
        """Analysed as a ratio of per-unit sums (delta method)."""
        return self.kind in ("ratio", "mean")


def _check_event(value: Any, field_path: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= EVENT_MAX:
        _fail(field_path, f"must be an event name of 1-{EVENT_MAX} characters")
    if value.startswith("$"):
        _fail(field_path, f"{value!r}: names starting with '$' are reserved (e.g. $exposure)")


def _check_winsorize(value: Any, kind: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 50 < value < 100:
        _fail("winsorize_percentile", "must be a percentile above 50 and below 100 (e.g. 99)")
    if kind == "conversion":
        _fail("winsorize_percentile", "a conversion metric is 0 or 1 per unit: there is nothing to cap")
    if kind == "ratio":
        _fail("winsorize_percentile", "capping a ratio's numerator alone would bias the ratio; "
                                      "winsorize sum, mean or count metrics")
    return float(value)


def metric_from_dict(doc: Mapping[str, Any]) -> Metric:
    """Validate a metric definition; raise ValidationError naming the field."""
    key = doc.get("key")
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        _fail("key", "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    kind = doc.get("kind")
    if kind not in METRIC_KINDS:
        _fail("kind", f"must be one of {', '.join(METRIC_KINDS)}")
    _check_event(doc.get("event"), "event")
    denominator = doc.get("denominator_event")
    if kind == "ratio":
        if denominator is None:
            _fail("denominator_event", "a ratio metric needs the event it divides by")
        _check_event(denominator, "denominator_event")
        if denominator == doc["event"]:
            _fail("denominator_event", "must differ from 'event' (the ratio would always be 1)")
    elif denominator is not None:
        _fail("denominator_event", f"only ratio metrics have one, not {kind}")
    direction = doc.get("direction") or "increase"
    if direction not in DIRECTIONS:
        _fail("direction", f"must be one of {', '.join(DIRECTIONS)}")
    return Metric(key=key, name=doc.get("name") or key, event=doc["event"], kind=kind,
                  denominator_event=denominator, direction=direction,
                  winsorize_percentile=_check_winsorize(doc.get("winsorize_percentile"), kind),
                  description=doc.get("description") or "")


def metric_to_dict(metric: Metric) -> dict[str, Any]:
    """The canonical definition document (what the audit log records)."""
    return {"key": metric.key, "name": metric.name, "event": metric.event, "kind": metric.kind,
            "denominator_event": metric.denominator_event, "direction": metric.direction,
            "winsorize_percentile": metric.winsorize_percentile, "description": metric.description}
