"""Sequential looks derived from the data: the cumulative state at each hour in which
the data changed, so the always-valid p-value and confidence sequence are a pure function
of the data (the same data give the same answer whoever looked and when).

The mixing variance tau^2 is fixed at the first look that can estimate a variance, from
the planned sample size (``default_tau2``); every later look uses it unchanged.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np

from flagship.experiments import stats as engine
from flagship.experiments.analysis.compare import interval
from flagship.experiments.analysis.variants import VariantStats, from_sums
from flagship.experiments.model import Metric

HOUR = 3600
MAX_LOOKS = 2000  # beyond this many changed hours, looks are taken every few hours

Changes = Mapping[str, Mapping[int, Sequence[float]]]   # variant -> hour -> sums changes
Exposed = Mapping[str, Mapping[int, int]]               # variant -> hour -> new units


def hour_iso(period: int) -> str:
    return datetime.fromtimestamp((period + 1) * HOUR, timezone.utc).isoformat()


def cumulative(metric: Metric, names: Sequence[str], changes: Changes,
               exposed: Exposed) -> list[tuple[int, dict[str, VariantStats]]]:
    """Each variant's statistics at the end of every hour in which anything changed."""
    hours = sorted({h for v in names for h in (*changes.get(v, {}), *exposed.get(v, {}))})
    if not hours:
        return []
    step = max(1, math.ceil(len(hours) / MAX_LOOKS))
    looks = hours[step - 1::step]
    if looks[-1] != hours[-1]:
        looks.append(hours[-1])
    index = {h: i for i, h in enumerate(hours)}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for v in names:
        sums = np.zeros((len(hours), 9))
        units = np.zeros(len(hours))
        for h, row in changes.get(v, {}).items():
            sums[index[h]] = row
        for h, n in exposed.get(v, {}).items():
            units[index[h]] = n
        out[v] = (np.cumsum(sums, axis=0), np.cumsum(units))
    result = []
    for h in looks:
        i = index[h]
        result.append((h, {v: from_sums(v, int(out[v][1][i]), tuple(out[v][0][i]), metric) for v in names}))
    return result


def _diff_var(metric: Metric, a: VariantStats, b: VariantStats) -> tuple[float, float] | None:
    """The difference b - a and its variance by the normal approximation, or None."""
    if a.n < 2 or b.n < 2:
        return None
    if metric.is_ratio:
        try:
            ra = engine.ratio_metric_stats(a.n, a.sum, a.den_sum, a.sum_sq, a.den_sum_sq, a.num_den)
            rb = engine.ratio_metric_stats(b.n, b.sum, b.den_sum, b.sum_sq, b.den_sum_sq, b.num_den)
            r = engine.ratio_test(ra, rb)
        except Exception:  # noqa: BLE001 - a look that cannot be estimated is skipped
            return None
        return r.difference, r.se * r.se
    if metric.kind == "conversion":
        pa, pb = a.mean, b.mean
        return pb - pa, pa * (1 - pa) / a.n + pb * (1 - pb) / b.n
    return b.mean - a.mean, a.variance / a.n + b.variance / b.n


def sequential_series(metric: Metric, looks: Sequence[tuple[int, Mapping[str, VariantStats]]],
                      control: str, treatment: str, alpha: float,
                      planned_n: int) -> tuple[list[int], Any, float] | None:
    """(hours, `AlwaysValidSeries`, tau^2) over the looks that can be estimated, or None."""
    diffs: list[float] = []
    variances: list[float] = []
    hours: list[int] = []
    tau2: float | None = None
    for hour, stats in looks:
        found = _diff_var(metric, stats[control], stats[treatment])
        if found is None or not (math.isfinite(found[0]) and math.isfinite(found[1]) and found[1] > 0):
            continue
        if tau2 is None:
            a, planned = stats[control], max(planned_n, stats[control].n, 2)
            tau2 = engine.default_tau2(found[1] * a.n / planned, alpha)
        diffs.append(found[0])
        variances.append(found[1])
        hours.append(hour)
    if tau2 is None:
        return None
    return hours, engine.always_valid_series(diffs, variances, tau2, alpha), tau2


def sequential(metric: Metric, looks: Sequence[tuple[int, Mapping[str, VariantStats]]], control: str,
               treatment: str, alpha: float, planned_n: int) -> dict[str, Any] | None:
    """The always-valid p-value (running minimum) and confidence sequence (running
    intersection) of `treatment` vs `control` after the last look; None before any estimate."""
    found = sequential_series(metric, looks, control, treatment, alpha, planned_n)
    if found is None:
        return None
    hours, series, tau2 = found
    return {"p_value": series.p_values[-1], "confidence_sequence": interval(series.cis[-1]),
            "tau2": tau2, "looks": len(hours), "first_look": hour_iso(hours[0]),
            "last_look": hour_iso(hours[-1]), "cadence": "hourly"}
