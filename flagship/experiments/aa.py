"""A/A experiments through the real pipeline: configuration, assignment, ingestion,
aggregation and results, on whatever store the runtime has (`flagship aa-test --live`
uses a temporary SQLite file). Both arms are the same, so every significant result is a
false positive; the rates of the fixed-horizon and always-valid tests are measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np

from flagship.experiments import ingest, layers, metrics, results, service
from flagship.experiments.stats.simulate import MethodResult
from flagship.experiments.store.aggregates import catch_up
from flagship.runtime import Runtime

ACTOR = "aa-test"
START = datetime(2026, 1, 5, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class LiveSettings:
    """One live A/A run: how many experiments, units per arm, hours of looks, the metric."""

    experiments: int = 200
    n: int = 200
    hours: int = 10
    alpha: float = 0.05
    metric: str = "conversion"
    baseline: float = 0.1
    seed: int = 1


def _setup(runtime: Runtime, settings: LiveSettings) -> None:
    kind = "conversion" if settings.metric == "conversion" else "sum"
    metrics.create_metric(runtime, ACTOR, {"key": "aa-metric", "event": "aa-event", "kind": kind})
    layers.create_layer(runtime, ACTOR, {"key": "aa-layer"})


def _events(i: int, assigned: dict[str, str], start: datetime, settings: LiveSettings,
            rng: np.random.Generator) -> list[dict[str, Any]]:
    """Exposures spread over the hours, and the metric's events from one distribution."""
    items = []
    units = list(assigned)
    at = start + timedelta(seconds=1)
    minutes = rng.integers(0, settings.hours * 60, size=len(units))
    for unit, minute in zip(units, minutes):
        when = at + timedelta(minutes=int(minute))
        items.append({"event_id": f"x-{unit}", "unit": unit, "event": "$exposure",
                      "experiment": f"aa-{i}", "variant": assigned[unit], "timestamp": when.isoformat()})
        if settings.metric == "conversion":
            if rng.random() < settings.baseline:
                items.append({"event_id": f"e-{unit}", "unit": unit, "event": "aa-event",
                              "timestamp": (when + timedelta(seconds=30)).isoformat()})
        else:
            items.append({"event_id": f"e-{unit}", "unit": unit, "event": "aa-event",
                          "value": float(rng.normal(settings.baseline, 1.0)),
                          "timestamp": (when + timedelta(seconds=30)).isoformat()})
    return items


def _one(runtime: Runtime, i: int, settings: LiveSettings, rng: np.random.Generator) -> tuple[float, float] | None:
    """Run experiment `i` to its end; (fixed-horizon p, always-valid p) of its one comparison."""
    start = START + timedelta(days=i // 2, hours=12 * (i % 2))
    runtime.clock = lambda: start
    key = f"aa-{i}"
    service.create_experiment(runtime, ACTOR, {
        "key": key, "flag": key, "layer": "aa-layer", "success_metrics": ["aa-metric"],
        "minimum_sample_size": settings.n, "significance_level": settings.alpha,
        "variants": [{"variant": "a", "value": "a", "is_control": True}, {"variant": "b", "value": "b"}]})
    service.transition(runtime, ACTOR, key, "start")
    snapshot = runtime.snapshots.get().snapshot
    assigned: dict[str, str] = {}
    for j in range(2 * settings.n):  # the real evaluation core assigns every unit
        unit = f"{key}-u{j}"
        assigned[unit] = snapshot.evaluate(key, {"key": unit}, _state(start)).variant or "a"
    runtime.clock = lambda: start + timedelta(hours=settings.hours + 1)
    items = _events(i, assigned, start, settings, rng)
    for at in range(0, len(items), 5000):
        outcome = ingest.ingest(runtime, items[at:at + 5000])
        if outcome.rejected:
            raise RuntimeError(f"A/A events rejected: {outcome.rejected[:1]}")
    catch_up(runtime.db, late_after=float(runtime.config["EVENT_LATE_SECONDS"]))
    body = results.results(runtime, key)
    service.transition(runtime, ACTOR, key, "stop")
    comparison = body["metrics"][0]["comparisons"][0]
    if "p_value" not in comparison or "always_valid" not in comparison:
        return None
    return comparison["p_value"], comparison["always_valid"]["p_value"]


def _state(start: datetime) -> Any:
    from flagship.flags.evaluate import EvalState

    return EvalState(now=start.timestamp())


def run_live(runtime: Runtime, settings: LiveSettings,
             progress: Callable[[int], None] | None = None) -> list[MethodResult]:
    """Run the A/A experiments; each method's false-positive rate and Monte-Carlo error."""
    rng = np.random.default_rng(settings.seed)
    _setup(runtime, settings)
    fixed = valid = done = 0
    for i in range(settings.experiments):
        found = _one(runtime, i, settings, rng)
        if progress is not None:
            progress(i + 1)
        if found is None:
            continue
        done += 1
        fixed += found[0] < settings.alpha
        valid += found[1] < settings.alpha
    return [_method("fixed_horizon", "fixed-horizon test at the end (live)", fixed, done, settings.alpha),
            _method("always_valid", "always-valid mSPRT over hourly looks (live)", valid, done, settings.alpha)]


def _method(method: str, description: str, rejections: int, runs: int, alpha: float) -> MethodResult:
    rate = rejections / runs if runs else 0.0
    se = math.sqrt(rate * (1 - rate) / runs) if runs else 0.0
    return MethodResult(method, description, rejections, runs, rate, se, alpha, rate <= alpha + 2 * se)
