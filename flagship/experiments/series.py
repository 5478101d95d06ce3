"""One metric over time: its cumulative state at the end of each day (lift and CI per day,
to see novelty effects), with the always-valid p-value and confidence sequence of the
hourly looks up to that day."""
from __future__ import annotations

import bisect
from datetime import datetime, timedelta, timezone
from typing import Any

from flagship.errors import NotFoundError
from flagship.experiments import results
from flagship.experiments.analysis import compare, looks
from flagship.experiments.analysis.compare import interval
from flagship.runtime import Runtime

MAX_DAYS = 120
HOUR = 3600


def _day_ends(first_hour: int, last_hour: int) -> list[int]:
    """The last hour of each calendar day (UTC) from `first_hour` to `last_hour`."""
    start = datetime.fromtimestamp(first_hour * HOUR, timezone.utc).replace(hour=23)
    ends, day = [], start
    while len(ends) < MAX_DAYS:
        hour = int(day.timestamp() // HOUR)
        ends.append(min(hour, last_hour))
        if hour >= last_hour:
            break
        day += timedelta(days=1)
    return ends


def metric_report(runtime: Runtime, key: str, metric_key: str) -> dict[str, Any]:
    """`/results` for one metric plus its cumulative daily series."""
    data = results.read(runtime, key)
    full = results.analyse(data)
    entry = next((m for m in full["metrics"] if m["metric"] == metric_key), None)
    if entry is None:
        raise NotFoundError(f"experiment {key!r} has no metric {metric_key!r}")
    return {**entry, "experiment": key, "srm": full["srm"],
            "series": _series(data, metric_key)}


def _series(data: results.Data, metric_key: str) -> list[dict[str, Any]]:
    hourly = data.looks.get(metric_key, [])
    if not hourly or data.record.started_at is None:
        return []
    experiment, metric = data.experiment, data.metrics[metric_key]
    control = experiment.control
    sequences = {t: looks.sequential_series(metric, hourly, control, t, experiment.significance_level,
                                            experiment.minimum_sample_size) for t in experiment.treatments}
    hours = [h for h, _ in hourly]
    out = []
    for end in _day_ends(hours[0], hours[-1]):
        at = bisect.bisect_right(hours, end) - 1
        if at < 0:
            continue
        stats = hourly[at][1]
        comparisons = []
        for treatment in experiment.treatments:
            c = compare.compare(metric, stats[control], stats[treatment], experiment, None,
                                len(experiment.treatments))
            row = {k: c.get(k) for k in ("variant", "difference", "ci", "relative_lift", "relative_ci",
                                         "p_value", "error") if k in c}
            found = sequences[treatment]
            if found is not None and "error" not in c:
                seq_hours, series, tau2 = found
                i = bisect.bisect_right(seq_hours, end) - 1
                if i >= 0:
                    row["always_valid"] = {"p_value": series.p_values[i],
                                           "confidence_sequence": interval(series.cis[i]), "tau2": tau2}
            comparisons.append(row)
        out.append({"at": looks.hour_iso(end),
                    "variants": {v: {"units": s.n, "mean": s.value(metric)} for v, s in stats.items()},
                    "comparisons": comparisons})
    return out
