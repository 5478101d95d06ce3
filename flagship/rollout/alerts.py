"""Alert rules and their pure detectors: robust z-scores on hourly counts, silence, SRM, breaches.

The periodic job loads counts and results, calls these detectors and opens or resolves
alerts; nothing here reads a clock or a database. Hours are whole epoch hours
(``int(ts // 3600)``); a series is oldest first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NoReturn, Sequence

import numpy as np

from flagship.errors import ValidationError

KINDS = ("srm", "guardrail_breach", "volume_drop", "volume_spike", "no_exposures")
SEVERITIES = ("info", "warning", "critical")
SOURCES = ("exposures", "events")
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data (1 / Phi^-1(3/4))
MEAN_AD_SCALE = 1.253314  # mean absolute deviation -> sd (sqrt(pi / 2)), the MAD = 0 fallback
_COMMON = ("kind", "severity", "enabled")


@dataclass(frozen=True)
class AlertSignal:
    """A detected anomaly: which kind, how far out (z), the value and its baseline."""

    kind: str
    z: float
    value: float
    baseline: float
    hour: int
    message: str


@dataclass(frozen=True)
class AlertRule:
    """An alert rule on an experiment or rollout; build it with `alert_rule_from_dict`."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    severity: str = "warning"
    enabled: bool = True


def _scale(baseline: np.ndarray, median: np.ndarray) -> np.ndarray:
    """Robust spread: 1.4826 MAD, else 1.2533 mean absolute deviation, else Poisson sqrt(median)."""
    deviation = np.abs(baseline - median[..., None])
    mad = MAD_SCALE * np.median(deviation, axis=-1)
    mean_ad = MEAN_AD_SCALE * np.mean(deviation, axis=-1)
    # A flat baseline has MAD = 0; counting noise (sqrt of the level, at least 1) keeps a
    # 10000 -> 9990 wobble from reading as an infinite z.
    poisson = np.sqrt(np.maximum(median, 1.0))
    return np.asarray(np.where(mad > 0, mad, np.where(mean_ad > 0, mean_ad, poisson)), dtype=float)


def robust_z(counts: Sequence[float] | np.ndarray, baseline_hours: int) -> Any:
    """z of the last count against the `baseline_hours` before it, by median and scaled MAD.

    A 2-D array (series x hours) gives one z per row. Needs at least baseline_hours + 1 hours.
    """
    x = np.asarray(counts, dtype=float)
    if x.ndim not in (1, 2) or not np.isfinite(x).all():
        raise ValidationError("must be a series (or rows of series) of finite counts",
                              field="counts")
    if not isinstance(baseline_hours, int) or baseline_hours < 1 or x.shape[-1] < baseline_hours + 1:
        raise ValidationError(f"needs at least {baseline_hours} + 1 hours of counts",
                              field="baseline_hours")
    baseline = x[..., -baseline_hours - 1:-1]
    median = np.median(baseline, axis=-1)
    z = (x[..., -1] - median) / _scale(baseline, np.asarray(median))
    return float(z) if x.ndim == 1 else z


def hourly_counts(timestamps: Sequence[float] | np.ndarray, first_hour: int,
                  last_hour: int) -> np.ndarray:
    """Counts per epoch hour from first_hour to last_hour inclusive (others ignored)."""
    hours = np.floor(np.asarray(timestamps, dtype=float) / 3600.0).astype(np.int64) - first_hour
    size = last_hour - first_hour + 1
    hours = hours[(hours >= 0) & (hours < size)]
    return np.bincount(hours, minlength=max(size, 0)).astype(float)


def volume_anomaly(series: Mapping[int, float], now_hour: int, threshold: float = 3.5,
                   min_baseline_hours: int = 24, baseline_hours: int = 168) -> AlertSignal | None:
    """A drop or spike of the last complete hour (now_hour - 1) against its trailing baseline.

    ``series`` maps epoch hour -> count; hours missing inside the data's span count as 0, but
    the baseline never reaches before the first hour present (before the data began).
    None when fewer than `min_baseline_hours` of baseline exist or |z| < threshold.
    """
    if not series:
        return None
    tested = now_hour - 1
    start = max(min(series), tested - baseline_hours)
    span = tested - start
    if span < min_baseline_hours:
        return None
    counts = np.array([float(series.get(hour, 0.0)) for hour in range(start, tested + 1)])
    z = robust_z(counts, span)
    if abs(z) < threshold:
        return None
    kind = "volume_drop" if z < 0 else "volume_spike"
    median = float(np.median(counts[:-1]))
    message = (f"{counts[-1]:g} in hour {tested} vs a median of {median:g} over {span} hours "
               f"(robust z {z:.2f}, threshold {threshold:g})")
    return AlertSignal(kind, z, float(counts[-1]), median, tested, message)


def no_exposures(last_exposure_at: float | None, now: float, hours: float,
                 since: float | None = None) -> bool:
    """True when nothing was exposed for `hours` (counted from `since`, e.g. the start, if later)."""
    marks = [t for t in (last_exposure_at, since) if t is not None]
    if not marks:
        return True
    return now - max(marks) >= hours * 3600.0


# -- rules -------------------------------------------------------------------------------

def _fail(field_name: str, message: str) -> NoReturn:
    raise ValidationError(message, field=field_name)


def _number(doc: Mapping[str, Any], name: str, default: float, low: float, high: float,
            integer: bool = False) -> Any:
    value = doc.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or not low <= value <= high:
        _fail(name, f"must be a {'whole ' if integer else ''}number from {low:g} to {high:g}, "
                    f"got {value!r}")
    return value


def _volume_params(doc: Mapping[str, Any]) -> dict[str, Any]:
    source = doc.get("source") or "exposures"
    if source not in SOURCES:
        _fail("source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
    event = doc.get("event")
    if (source == "events") != (event is not None):
        _fail("event", "name the event when source is events (and only then)")
    if event is not None and (not isinstance(event, str) or not event):
        _fail("event", "must be an event name")
    baseline = _number(doc, "baseline_hours", 168, 2, 24 * 90, integer=True)
    minimum = _number(doc, "min_baseline_hours", min(24, baseline), 1, baseline, integer=True)
    return {"source": source, "event": event, "threshold": float(_number(doc, "threshold", 3.5,
                                                                         1, 100)),
            "baseline_hours": baseline, "min_baseline_hours": minimum}


def _breach_params(doc: Mapping[str, Any]) -> dict[str, Any]:
    check = doc.get("check")
    if check is not None and (not isinstance(check, str) or not check):
        _fail("check", "must be a check id (rollouts) or metric key (experiments)")
    return {"check": check}


_PARAMS: dict[str, tuple[tuple[str, ...], Any]] = {
    "srm": (("p_value", "min_units"), lambda d: {
        "p_value": float(_number(d, "p_value", 0.001, 1e-12, 0.5)),
        "min_units": _number(d, "min_units", 8, 1, 10**9, integer=True)}),
    "guardrail_breach": (("check",), _breach_params),
    "volume_drop": (("source", "event", "threshold", "baseline_hours", "min_baseline_hours"),
                    _volume_params),
    "no_exposures": (("hours",), lambda d: {"hours": float(_number(d, "hours", 24, 0.01,
                                                                   24 * 365))}),
}
_PARAMS["volume_spike"] = _PARAMS["volume_drop"]


def alert_rule_from_dict(doc: Any) -> AlertRule:
    """Validate an alert rule document (kind, severity, enabled + the kind's fields, flat)."""
    if not isinstance(doc, Mapping):
        _fail("kind", f"an alert rule must be an object, got {type(doc).__name__}")
    kind = doc.get("kind")
    if kind not in KINDS:
        _fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed, build = _PARAMS[kind]
    unknown = [name for name in doc if name not in _COMMON + allowed]
    if unknown:
        _fail(unknown[0], f"unknown field for a {kind} rule; allowed: {', '.join(allowed)}")
    severity = doc.get("severity") or "warning"
    if severity not in SEVERITIES:
        _fail("severity", f"must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    enabled = True if doc.get("enabled") is None else doc["enabled"]
    if not isinstance(enabled, bool):
        _fail("enabled", f"must be true or false, got {enabled!r}")
    return AlertRule(kind, build(doc), severity, enabled)


def alert_rule_to_dict(rule: AlertRule) -> dict[str, Any]:
    """The canonical document of a rule (its params flat, as `alert_rule_from_dict` reads them)."""
    return {"kind": rule.kind, "severity": rule.severity, "enabled": rule.enabled,
            **{k: v for k, v in rule.params.items() if v is not None}}
