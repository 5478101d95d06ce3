"""Semantic validation of experiment documents (shapes are checked by the schemas)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Collection, Mapping

from flagship.errors import ValidationError
from flagship.flags.bucketing import check_percentage
from flagship.flags.model import KEY_PATTERN, condition_to_dict, conditions_from_list
from flagship.flags.operators import Operator

RULE_PREFIX = "exp-"
CORRECTIONS = ("holm", "bonferroni", "bh", "by", "none")
DEFAULTS: dict[str, Any] = {
    "description": "", "hypothesis": "", "owner": "", "traffic_percentage": 100.0,
    "targeting": [], "allowlist": {}, "blocklist": [], "start_at": None, "end_at": None,
    "minimum_sample_size": 0, "significance_level": 0.05, "power": 0.8,
    "success_metrics": [], "guardrail_metrics": [], "metadata": {}, "rule_position": 0,
    "multiple_testing": "holm",
}


def _fail(field: str, message: str) -> None:
    raise ValidationError(message, field=field)


def _variants(raw: list[dict[str, Any]], flag_variants: Mapping[str, Any] | None) -> list[dict[str, Any]]:
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
        entry = {"variant": v["variant"], "weight": weight, "is_control": bool(v.get("is_control"))}
        out.append(entry)
    return out


def _instant(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            _fail(field, f"must be an ISO-8601 datetime, got {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc).isoformat()
    except OverflowError:
        _fail(field, "is outside the supported range of datetimes")


def _window(doc: dict[str, Any]) -> None:
    doc["start_at"] = _instant(doc.get("start_at"), "start_at")
    doc["end_at"] = _instant(doc.get("end_at"), "end_at")
    if doc["start_at"] and doc["end_at"] and doc["end_at"] <= doc["start_at"]:
        _fail("end_at", "must be after start_at")


def _overrides(doc: dict[str, Any], names: set[str]) -> None:
    for unit, variant in doc["allowlist"].items():
        if variant not in names:
            _fail(f"allowlist.{unit}", f"{variant!r} is not a variant of this experiment")
    both = sorted(set(doc["allowlist"]) & set(doc["blocklist"]))
    if both:
        _fail("blocklist", f"unit {both[0]!r} is both allowlisted and blocklisted")


def _numbers(doc: dict[str, Any]) -> None:
    try:
        doc["traffic_percentage"] = check_percentage(doc["traffic_percentage"])
    except ValueError as err:
        _fail("traffic_percentage", str(err))
    if doc["traffic_percentage"] <= 0:
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


def validate_experiment(doc: Mapping[str, Any], *, operators: Mapping[str, Operator],
                        segment_keys: Collection[str], flag_variants: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the canonical experiment document, or raise ValidationError naming the field.

    `flag_variants` is the flag's variants, or None when the flag does not exist yet (then
    every variant must carry a `value` and the flag is created from them).
    """
    out = {**DEFAULTS, **{k: v for k, v in doc.items() if v is not None or k in ("start_at", "end_at")}}
    out["name"] = out.get("name") or out["key"]
    if len(out["key"]) > 120:
        _fail("key", "must be at most 120 characters")
    out["variants"] = _variants(list(doc["variants"]), flag_variants)
    conditions = conditions_from_list(out["targeting"], "targeting", operators, segment_keys)
    out["targeting"] = [condition_to_dict(c) for c in conditions]
    out["allowlist"], out["blocklist"] = dict(out["allowlist"]), list(out["blocklist"])
    _overrides(out, {v["variant"] for v in out["variants"]})
    _window(out)
    _numbers(out)
    for i, guard in enumerate(out["guardrail_metrics"]):
        if guard.get("margin", 0) < 0:
            _fail(f"guardrail_metrics.{i}.margin", "must not be negative")
    return out


def flag_from_variants(key: str, raw_variants: list[dict[str, Any]], name: str) -> dict[str, Any]:
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
