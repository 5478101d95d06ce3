"""Event validation (pure): one item of an ingestion request becomes an `EventIn` or errors."""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from flagship.jsonvalue import MAX_VALUE_DEPTH, json_problem

EXPOSURE = "$exposure"
FIELDS = frozenset({"event_id", "unit", "event", "value", "timestamp", "properties",
                    "experiment", "variant"})
MAX_PROPERTIES_BYTES = 8192
# An event's value, either sign: beyond about 9e15 a float no longer holds every integer,
# and a unit's sums of squares and products must stay finite however many events it sends
# (one 1.5e308 purchase made the per-unit sums infinite and stopped every aggregation round).
MAX_EVENT_VALUE = 1e15


@dataclass(frozen=True)
class Bounds:
    """How far from the server's clock an event timestamp may be, and when it counts as late."""

    max_past: timedelta = timedelta(days=30)
    max_future: timedelta = timedelta(minutes=5)
    late_after: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class EventIn:
    """A validated event (an exposure when `event == "$exposure"`)."""

    event_id: str
    unit: str
    event: str
    value: float
    timestamp: datetime
    properties: Mapping[str, Any] | None
    experiment: str | None = None
    variant: str | None = None

    def is_late(self, now: datetime, bounds: Bounds) -> bool:
        """Arrived long after it happened (accepted, but counted for data quality)."""
        return now - self.timestamp > bounds.late_after


Errors = dict[str, list[str]]


def _text(item: Mapping[str, Any], name: str, errors: Errors, limit: int,
          required: bool = True) -> str | None:
    value = item.get(name)
    if value is None:
        if required:
            errors[name] = ["required"]
        return None
    if isinstance(value, int) and not isinstance(value, bool) and name == "unit":
        value = str(value)  # as the evaluator hashes numeric keys
    elif isinstance(value, float) and name == "unit" and math.isfinite(value):
        value = str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str) or not value or len(value) > limit:
        errors[name] = [f"must be a string of 1 to {limit} characters"]
        return None
    if "\x00" in value:
        errors[name] = ["must not contain NUL characters"]
        return None
    return value


def _value(item: Mapping[str, Any], errors: Errors) -> float:
    value = item.get("value", 1)
    if value is None:
        return 1.0
    try:
        number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else None
    except OverflowError:  # an integer beyond the float range
        number = None
    if number is None or not math.isfinite(number):
        errors["value"] = ["must be a finite number"]
        return 0.0
    if abs(number) > MAX_EVENT_VALUE:
        errors["value"] = [f"must be between -{MAX_EVENT_VALUE:.0e} and {MAX_EVENT_VALUE:.0e}"]
        return 0.0
    return number


def _timestamp(item: Mapping[str, Any], now: datetime, bounds: Bounds, errors: Errors) -> datetime:
    raw = item.get("timestamp")
    if raw is None:
        return now
    try:
        parsed = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        errors["timestamp"] = ["must be an ISO-8601 datetime, e.g. 2026-11-25T10:00:00Z"]
        return now
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        parsed = parsed.astimezone(timezone.utc)
    except OverflowError:  # year 1 or 9999 pushed out of range by its offset
        errors["timestamp"] = ["is outside the supported range of datetimes"]
        return now
    if parsed > now + bounds.max_future:
        errors["timestamp"] = [f"is more than {bounds.max_future} in the future"]
    elif parsed < now - bounds.max_past:
        errors["timestamp"] = [f"is more than {bounds.max_past.days} days in the past"]
    return parsed


def _properties(item: Mapping[str, Any], errors: Errors) -> Mapping[str, Any] | None:
    value = item.get("properties")
    if value is None:
        return None
    if not isinstance(value, dict):
        errors["properties"] = ["must be an object"]
        return None
    problem = json_problem(value, MAX_VALUE_DEPTH, path="properties")
    if problem is not None:  # checked without recursion before anything recurses into it
        errors[problem[0]] = [problem[1]]
        return None
    if len(repr(value)) > MAX_PROPERTIES_BYTES:
        errors["properties"] = [f"must be smaller than {MAX_PROPERTIES_BYTES} bytes"]
    return value


def parse_event(item: Any, now: datetime, bounds: Bounds = Bounds()) -> EventIn | Errors:
    """Validate one item; return the event or a dict of field -> messages."""
    if not isinstance(item, dict):
        return {"_schema": ["an event must be a JSON object"]}
    errors: Errors = {name: ["unknown field"] for name in item if name not in FIELDS}
    unit = _text(item, "unit", errors, 256)
    event = _text(item, "event", errors, 128)
    event_id = _text(item, "event_id", errors, 128, required=False) or uuid.uuid4().hex
    experiment = variant = None
    if event == EXPOSURE:
        experiment = _text(item, "experiment", errors, 128)
        variant = _text(item, "variant", errors, 64)
    elif event is not None and event.startswith("$"):
        errors["event"] = [f"names starting with '$' are reserved (only {EXPOSURE} is accepted)"]
    elif "experiment" in item or "variant" in item:
        errors.setdefault("experiment", []).append(f"only {EXPOSURE} events name an experiment")
    value = _value(item, errors)
    timestamp = _timestamp(item, now, bounds, errors)
    properties = _properties(item, errors)
    if errors:
        return errors
    return EventIn(event_id, unit or "", event or "", value, timestamp, properties, experiment, variant)
