"""Event ingestion: validate per item, store idempotently, commit before answering."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

from flagship.experiments.events import EXPOSURE, Bounds, EventIn, parse_event
from flagship.experiments.store import events as store
from flagship import telemetry
from flagship.runtime import Runtime


@dataclass
class IngestResult:
    """What happened to a request's events."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": self.rejected}


def bounds_from(config: dict[str, Any]) -> Bounds:
    """Timestamp bounds from FLAGSHIP_EVENT_* settings."""
    return _bounds(config["EVENT_MAX_PAST_DAYS"], config["EVENT_MAX_FUTURE_SECONDS"],
                   config["EVENT_LATE_SECONDS"])


@functools.lru_cache(maxsize=16)
def _bounds(max_past_days: float, max_future_seconds: float, late_seconds: float) -> Bounds:
    return Bounds(max_past=timedelta(days=max_past_days), max_future=timedelta(seconds=max_future_seconds),
                  late_after=timedelta(seconds=late_seconds))  # frozen: shared by every request


ARMS = ("treatment", "control")


def _check_exposure(event: EventIn, experiments: Any) -> dict[str, list[str]] | None:
    spec = experiments.get(event.experiment)
    if spec is None and event.experiment in getattr(experiments, "subjects", ()):
        if event.variant not in ARMS:  # a guarded rollout's arm
            return {"variant": ["a rollout's exposure is to its 'treatment' or 'control' arm"]}
        return None
    if spec is None:
        return {"experiment": [f"unknown experiment {event.experiment!r}"]}
    if event.variant not in {v.variant for v in spec.variants}:
        return {"variant": [f"{event.variant!r} is not a variant of {event.experiment!r}"]}
    return None


def validate(items: Iterable[Any], now: datetime, bounds: Bounds,
             experiments: Any) -> tuple[list[EventIn], list[dict[str, Any]], list[str]]:
    """Split items into valid events, rejections and the units of ids repeated in the request
    (duplicates)."""
    valid: list[EventIn] = []
    rejected: list[dict[str, Any]] = []
    seen: set[str] = set()
    repeats: list[str] = []
    for index, item in enumerate(items):
        parsed = parse_event(item, now, bounds)
        if isinstance(parsed, EventIn) and parsed.event == EXPOSURE:
            parsed = _check_exposure(parsed, experiments) or parsed
        if not isinstance(parsed, EventIn):
            rejected.append({"index": index, "errors": parsed})
        elif parsed.event_id in seen:
            repeats.append(parsed.unit)
        else:
            seen.add(parsed.event_id)
            valid.append(parsed)
    return valid, rejected, repeats


class _Targets(dict):
    """Experiment specs by key, plus the guarded rollouts' subjects (both take exposures)."""

    subjects: Any = ()


def exposure_targets(runtime: Runtime, items: list[Any], environment: str) -> Any:
    """What exposures may name (they are checked). NotFoundError for an unknown environment:
    events stored there could never count (the compiled snapshot is cached, so this costs
    a lookup per request)."""
    snapshot = runtime.snapshots.get(environment).snapshot
    if not any(isinstance(item, dict) and item.get("event") == EXPOSURE for item in items):
        return _Targets()
    targets = _Targets(snapshot.experiments)
    targets.subjects = snapshot.subjects
    return targets


def _unit_of(item: Any) -> str | None:
    """The unit a rejected item names, if it names one usably (for per-experiment counters)."""
    unit = item.get("unit") if isinstance(item, dict) else None
    if isinstance(unit, (int, float)) and not isinstance(unit, bool):
        unit = str(unit)
    return unit if isinstance(unit, str) and 0 < len(unit) <= 256 and "\x00" not in unit else None


def _exposure(event: EventIn, experiments: Any) -> dict[str, Any]:
    spec = experiments.get(event.experiment)
    return {"experiment_key": event.experiment, "unit": event.unit, "variant": event.variant,
            "layer_key": spec.layer if spec is not None else "", "assigned_at": event.timestamp,
            "epoch": spec.epoch if spec is not None else 1}


@dataclass
class Checked:
    """`items` validated at `now` against what exposures may name (see `check`)."""

    items: list[Any]
    now: datetime
    bounds: Bounds
    experiments: Any
    valid: list[EventIn]
    rejected: list[dict[str, Any]]
    repeated_units: list[str]


def check(runtime: Runtime, items: list[Any], now: datetime, environment: str) -> Checked:
    """Validate `items` without writing anything (`ingest` stores the result)."""
    bounds = bounds_from(runtime.config)
    experiments = exposure_targets(runtime, items, environment)
    return Checked(items, now, bounds, experiments, *validate(items, now, bounds, experiments))


def ingest(runtime: Runtime, items: list[Any], now: datetime | None = None,
           environment: str | None = None, checked: Checked | None = None) -> IngestResult:
    """Store the valid events of `items` in `environment` (default: the default one); return
    only after they are committed. An event counts for the experiments of its environment.
    `checked`: the items already validated by `check` (for this environment)."""
    environment = environment or runtime.config["DEFAULT_ENVIRONMENT"]
    if checked is None or checked.items is not items:
        checked = check(runtime, items, now or runtime.clock(), environment)
    now, bounds, experiments = checked.now, checked.bounds, checked.experiments
    valid, rejected, repeated_units = checked.valid, checked.rejected, checked.repeated_units
    repeats = len(repeated_units)
    result = IngestResult(rejected=rejected)
    issues = [(unit, "rejected") for r in rejected if (unit := _unit_of(items[r["index"]]))]
    batch = store.Batch(
        rows=[{"event_id": e.event_id, "unit": e.unit, "event": e.event, "value": e.value,
               "timestamp": e.timestamp, "properties": e.properties, "received_at": now,
               "environment": environment}
              for e in valid],
        exposures={e.event_id: _exposure(e, experiments) for e in valid if e.event == EXPOSURE},
        counts={"duplicate": repeats, "rejected": len(rejected)},
        late={e.event_id for e in valid if e.is_late(now, bounds)},
        issues=issues + [(unit, "duplicate") for unit in repeated_units], now=now)
    # concurrent requests' events are written by one INSERT in one transaction
    result.accepted = runtime.db.batched_merge("events", batch, store.write, store.alone(batch))
    result.late = batch.counts.get("late", 0)
    result.duplicates = len(valid) - result.accepted + repeats
    telemetry.count_events(result.accepted, result.duplicates, len(rejected))
    return result
