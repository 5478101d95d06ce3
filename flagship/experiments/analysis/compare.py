"""One metric, one treatment against the control: the test suited to the metric kind,
CUPED, relative lift, power, and the guardrail's non-inferiority test."""
from __future__ import annotations

import math
from typing import Any

from scipy import stats as scipy_stats

from flagship.errors import FlagshipError
from flagship.experiments import stats as engine
from flagship.experiments.analysis.variants import VariantStats
from flagship.experiments.model import Experiment, Metric


def interval(ci: Any) -> list[float | None]:
    return [None if v is None or not math.isfinite(v) else float(v) for v in ci]


def estimate(metric: Metric, a: VariantStats, b: VariantStats, alpha: float,
             cuped: dict[str, Any] | None) -> dict[str, Any]:
    """Fisher/z for conversions, the delta method for ratios and means (a ratio of per-unit
    sums), Welch (on CUPED-adjusted values when pre-exposure data helps) otherwise."""
    if metric.kind == "conversion":
        r = engine.conversion_test(int(round(a.sum)), a.n, int(round(b.sum)), b.n, alpha)
        pa, pb = r.rate_a, r.rate_b
        se = math.sqrt(pa * (1 - pa) / a.n + pb * (1 - pb) / b.n)
        return {"test": "fisher_exact" if r.test == "fisher" else "proportions_z", "result": r, "se": se}
    if metric.is_ratio:
        ra = engine.ratio_metric_stats(a.n, a.sum, a.den_sum, a.sum_sq, a.den_sum_sq, a.num_den)
        rb = engine.ratio_metric_stats(b.n, b.sum, b.den_sum, b.sum_sq, b.den_sum_sq, b.num_den)
        r = engine.ratio_test(ra, rb, alpha)
        return {"test": "ratio_delta_method", "result": r, "se": r.se}
    if cuped is not None:
        ca, cb = cuped["variants"][a.variant], cuped["variants"][b.variant]
        r = engine.welch_t_test(a.n, ca.mean, ca.variance, b.n, cb.mean, cb.variance, alpha)
        return {"test": "welch_t_cuped", "result": r, "se": r.se}
    r = engine.welch_t_test(a.n, a.mean, a.variance, b.n, b.mean, b.variance, alpha)
    return {"test": "welch_t", "result": r, "se": r.se}


def cuped(metric: Metric, stats: dict[str, VariantStats]) -> dict[str, Any] | None:
    """CUPED over every variant when pre-exposure data reduces the variance, else None."""
    if metric.kind == "conversion" or metric.is_ratio or not any(s.pre_sum_sq for s in stats.values()):
        return None
    try:
        adjusted = engine.cuped_adjust([engine.SufficientStats(
            s.n, s.sum, s.sum_sq, s.pre_sum, s.pre_sum_sq, s.cross) for s in stats.values()])
    except FlagshipError:
        return None
    variants = dict(zip(stats, adjusted.variants))
    if all(v.variance_reduction <= 0 for v in variants.values()):
        return None
    return {"theta": adjusted.theta, "variants": variants}


def _planning(metric: Metric, a: VariantStats, b: VariantStats, diff: float, se: float,
              alpha: float, target_power: float, k: int) -> dict[str, Any]:
    """Power achieved for the observed effect, and the control units still needed."""
    try:
        if metric.kind == "conversion":
            design = {"baseline": a.mean, "target": b.mean}
        elif metric.is_ratio:  # the delta-method se, as a per-unit standard deviation
            design = {"effect_size": abs(diff) / (se / math.sqrt(1 / a.n + 1 / b.n))}
        else:
            sd = math.sqrt((a.variance + b.variance) / 2)
            design = {"effect_size": abs(diff) / sd}
        ratio = b.n / a.n
        achieved = engine.power(**design, n_control=a.n, alpha=alpha, ratio=ratio, k=k)
        needed = engine.sample_size(**design, alpha=alpha, power=target_power, ratio=ratio, k=k)
        return {"power": achieved, "sample_needed_per_variant": max(0, needed.n_control_ceil - a.n)}
    except (FlagshipError, ValueError, ZeroDivisionError):
        return {"power": None, "sample_needed_per_variant": None}


def compare(metric: Metric, a: VariantStats, b: VariantStats, experiment: Experiment,
            cuped_result: dict[str, Any] | None, k: int) -> dict[str, Any]:
    """Difference, CI, relative lift and CI, p-value, CUPED and planning of `b` against `a`."""
    alpha = experiment.significance_level
    try:
        est = estimate(metric, a, b, alpha, cuped_result)
    except (FlagshipError, ValueError, ZeroDivisionError) as exc:
        return {"variant": b.variant, "error": f"not estimable: {getattr(exc, 'message', exc)}"}
    r, se = est["result"], est["se"]
    out = {"variant": b.variant, "test": est["test"], "difference": r.difference,
           "ci": interval(r.ci), "relative_lift": r.relative_lift,
           "relative_ci": interval(r.relative_ci) if r.relative_ci else None,
           "relative_note": r.relative_reason, "p_value": r.p_value, "se": se}
    if cuped_result is not None:
        out["cuped"] = {"theta": cuped_result["theta"],
                        "variance_reduction": cuped_result["variants"][b.variant].variance_reduction}
    out.update(_planning(metric, a, b, r.difference, se, alpha, experiment.power, k))
    return out


def guardrail(metric: Metric, a: VariantStats, comparison: dict[str, Any], margin: float,
              alpha: float) -> dict[str, Any]:
    """One-sided non-inferiority: is the treatment no worse than `margin` (relative to control)?"""
    if "error" in comparison or not comparison.get("se"):
        return {"status": "inconclusive", "reason": comparison.get("error", "no variance")}
    control = a.value(metric)
    baseline = abs(control) if control is not None else 0.0
    sign = 1.0 if metric.direction == "increase" else -1.0
    bound = -sign * margin * baseline  # the worst acceptable difference
    z = sign * (comparison["difference"] - bound) / comparison["se"]
    p_noninferior = float(scipy_stats.norm.sf(z))
    p_inferior = float(scipy_stats.norm.cdf(z))
    status = "ok" if p_noninferior < alpha else ("breached" if p_inferior < alpha else "inconclusive")
    return {"status": status, "margin": margin, "threshold": bound, "p_value": p_noninferior}


def is_improvement(metric: Metric, comparison: dict[str, Any]) -> bool:
    """Whether the observed difference goes the metric's good way."""
    diff = comparison.get("difference", 0.0)
    return diff > 0 if metric.direction == "increase" else diff < 0
