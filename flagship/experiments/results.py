"""Experiment results: SRM first, then every metric's comparisons, guardrails, a decision."""
from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa
from scipy import stats as scipy_stats

from flagship.errors import FlagshipError, NotFoundError
from flagship.experiments import analysis, looks
from flagship.experiments.store import aggregates as aggregate
from flagship.experiments import stats as engine
from flagship.experiments.analysis import VariantStats
from flagship.experiments.metrics import Metric, metrics_by_key
from flagship.experiments.store.config import ExperimentRecord
from flagship.runtime import Runtime


def _interval(ci: Any) -> list[float | None]:
    return [None if v is None or not math.isfinite(v) else float(v) for v in ci]


def _estimate(metric: Metric, a: VariantStats, b: VariantStats, alpha: float,
              cuped: dict[str, Any] | None) -> dict[str, Any]:
    """The test suited to the metric kind: Fisher/z for conversions, delta method for ratios,
    Welch (on CUPED-adjusted values when pre-exposure data helps) otherwise."""
    if metric.kind == "conversion":
        r = engine.conversion_test(int(round(a.sum)), a.n, int(round(b.sum)), b.n, alpha)
        pa, pb = r.rate_a, r.rate_b
        se = math.sqrt(pa * (1 - pa) / a.n + pb * (1 - pb) / b.n)
        return {"test": "fisher_exact" if r.test == "fisher" else "proportions_z", "result": r, "se": se}
    if metric.kind == "ratio":
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


def _cuped(metric: Metric, stats: dict[str, VariantStats]) -> dict[str, Any] | None:
    if metric.kind in ("conversion", "ratio") or not any(s.pre_sum_sq for s in stats.values()):
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
        elif metric.kind == "ratio":  # the delta-method se, as a per-unit standard deviation
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


def _compare(metric: Metric, a: VariantStats, b: VariantStats, doc: dict[str, Any],
             cuped: dict[str, Any] | None, k: int,
             previous: dict[str, Any] | None = None) -> dict[str, Any]:
    alpha = doc["significance_level"]
    try:
        est = _estimate(metric, a, b, alpha, cuped)
    except (FlagshipError, ValueError, ZeroDivisionError) as exc:
        return {"variant": b.variant, "error": f"not estimable: {getattr(exc, 'message', exc)}"}
    r, se = est["result"], est["se"]
    planned = max(doc.get("minimum_sample_size") or 0, a.n, 2)
    # the difference's variance expected at the planned sample size (the mSPRT's tau^2
    # is fixed from it); for ratios, the delta-method variance scaled to that size
    horizon_var = ((a.variance + b.variance) / planned if metric.kind != "ratio"
                   else se * se * a.n / planned)
    out = {"variant": b.variant, "test": est["test"], "difference": r.difference,
           "ci": _interval(r.ci), "relative_lift": r.relative_lift,
           "relative_ci": _interval(r.relative_ci) if r.relative_ci else None,
           "relative_note": r.relative_reason, "p_value": r.p_value, "se": se}
    if horizon_var > 0 and se > 0:
        tau2 = previous["tau2"] if previous else engine.default_tau2(horizon_var, alpha)
        sequential = engine.msprt_test(
            r.difference, se * se, tau2, alpha, previous_p=previous["p_value"] if previous else None,
            previous_ci=tuple(previous["ci"]) if previous else None)
        out["always_valid"] = {"p_value": sequential.p_value, "confidence_sequence": _interval(sequential.ci),
                               "tau2": sequential.tau2, "looks": (previous or {}).get("looks", 0) + 1}
    if cuped is not None:
        out["cuped"] = {"theta": cuped["theta"],
                        "variance_reduction": cuped["variants"][b.variant].variance_reduction}
    out.update(_planning(metric, a, b, r.difference, se, alpha, doc.get("power", 0.8), k))
    return out


def _guardrail(metric: Metric, a: VariantStats, comparison: dict[str, Any], margin: float,
               alpha: float) -> dict[str, Any]:
    """One-sided non-inferiority: is the treatment no worse than `margin` (relative to control)?"""
    if "error" in comparison or not comparison.get("se"):
        return {"status": "inconclusive", "reason": comparison.get("error", "no variance")}
    baseline = abs(a.sum / a.den_sum) if metric.kind == "ratio" and a.den_sum else abs(a.mean)
    sign = 1.0 if metric.direction == "increase" else -1.0
    bound = -sign * margin * baseline  # the worst acceptable difference
    z = sign * (comparison["difference"] - bound) / comparison["se"]
    p_noninferior = float(scipy_stats.norm.sf(z))
    p_inferior = float(scipy_stats.norm.cdf(z))
    status = "ok" if p_noninferior < alpha else ("breached" if p_inferior < alpha else "inconclusive")
    return {"status": status, "margin": margin, "threshold": bound, "p_value": p_noninferior}


def _good(metric: Metric, comparison: dict[str, Any]) -> bool:
    diff = comparison.get("difference", 0.0)
    return diff > 0 if metric.direction == "increase" else diff < 0


def _load(runtime: Runtime, key: str) -> tuple[ExperimentRecord, dict[str, Metric], dict, dict, dict]:
    aggregate.catch_up(runtime.db)
    with runtime.db.session() as session:
        record = session.execute(sa.select(ExperimentRecord).where(ExperimentRecord.key == key)).scalar_one_or_none()
        if record is None:
            raise NotFoundError(f"experiment {key!r} not found")
        metrics = metrics_by_key(session, aggregate.metric_keys(record.document))
        conn = session.connection()
        names = [v["variant"] for v in record.document["variants"]]
        counts = analysis.exposure_counts(conn, key)
        stats = {m: analysis.variant_stats(conn, key, metric, names, counts) for m, metric in metrics.items()}
        previous = looks.load(conn, key)
        session.expunge(record)
    return record, metrics, stats, counts, previous


def results(runtime: Runtime, key: str) -> dict[str, Any]:
    """The full analysis of an experiment (GET /experiments/{key}/results)."""
    record, metrics, stats, counts, previous = _load(runtime, key)
    doc = record.document
    variants = doc["variants"]
    control = next(v["variant"] for v in variants if v["is_control"])
    treatments = [v["variant"] for v in variants if not v["is_control"]]
    srm = _srm(variants, counts)
    success = [m for m in doc.get("success_metrics", []) if m in metrics]
    guards = {g["metric"]: g.get("margin", 0.0) for g in doc.get("guardrail_metrics", []) if g["metric"] in metrics}
    report: dict[str, dict[str, Any]] = {}
    for metric_key in dict.fromkeys(success + list(guards)):
        metric, by_variant = metrics[metric_key], stats[metric_key]
        cuped = _cuped(metric, by_variant)
        report[metric_key] = {
            "metric": metric_key, "kind": metric.kind, "direction": metric.direction,
            "role": "success" if metric_key in success else "guardrail",
            "variants": {v: {"units": s.n, "mean": (s.sum / s.den_sum if metric.kind == "ratio" and s.den_sum else s.mean),
                             "variance": s.variance} for v, s in by_variant.items()},
            "comparisons": [_compare(metric, by_variant[control], by_variant[t], doc, cuped,
                                     len(treatments), previous.get((metric_key, t)))
                            for t in treatments]}
        if metric_key in guards:
            for comparison in report[metric_key]["comparisons"]:
                comparison["guardrail"] = _guardrail(metric, by_variant[control], comparison,
                                                     guards[metric_key], doc["significance_level"])
    _adjust(report, success, doc)
    looks.save(runtime.db, key, _sequential_state(report), runtime.clock())
    return {"experiment": key, "status": record.status, "control": control, "srm": srm,
            "multiple_testing": doc.get("multiple_testing", "holm"),
            "significance_level": doc["significance_level"],
            "metrics": list(report.values()), "decision": _decide(report, metrics, success, srm, doc, counts)}


def _sequential_state(report: dict[str, dict[str, Any]]) -> looks.State:
    state: looks.State = {}
    for entry in report.values():
        for c in entry["comparisons"]:
            seq = c.get("always_valid")
            if seq and None not in seq["confidence_sequence"]:
                state[(entry["metric"], c["variant"])] = {
                    "tau2": seq["tau2"], "p_value": seq["p_value"],
                    "ci": tuple(seq["confidence_sequence"]), "looks": seq["looks"]}
    return state


def _srm(variants: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
    observed = [counts.get(v["variant"], 0) for v in variants]
    if sum(observed) == 0:
        return {"checked": False, "mismatch": False, "warning": None}
    r = engine.srm_test(observed, [v["weight"] for v in variants])
    warning = (f"SAMPLE RATIO MISMATCH (p = {r.p_value:.2g}): the split differs from the configured "
               "weights, so every result below is suspect; find the cause before reading them"
               if r.mismatch else None)
    return {"checked": True, "p_value": r.p_value, "mismatch": r.mismatch, "warning": warning,
            "observed": {v["variant"]: n for v, n in zip(variants, observed)}}


def _adjust(report: dict[str, dict[str, Any]], success: list[str], doc: dict[str, Any]) -> None:
    """Multiple-testing correction over the family success metrics x treatments."""
    family = [c for m in success for c in report[m]["comparisons"] if "p_value" in c]
    method = doc.get("multiple_testing", "holm")
    adjusted = ([c["p_value"] for c in family] if method == "none" or not family
                else engine.adjust_p_values([c["p_value"] for c in family], method))
    for comparison, p in zip(family, adjusted):
        comparison["adjusted_p_value"] = float(p)
        comparison["significant"] = bool(p < doc["significance_level"])
    for entry in report.values():
        for comparison in entry["comparisons"]:
            if entry["role"] == "guardrail" and "p_value" in comparison and "significant" not in comparison:
                comparison["significant"] = comparison["p_value"] < doc["significance_level"]


def _decide(report: dict[str, dict[str, Any]], metrics: dict[str, Metric], success: list[str],
            srm: dict[str, Any], doc: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    if srm.get("mismatch"):
        return {"action": "investigate", "reason": srm["warning"]}
    for entry in report.values():
        for c in entry["comparisons"]:
            if c.get("guardrail", {}).get("status") == "breached":
                return {"action": "stop", "reason": f"guardrail {entry['metric']} breached by {c['variant']}"}
    if success:
        primary = report[success[0]]
        winners = [c for c in primary["comparisons"] if c.get("significant") and _good(metrics[success[0]], c)]
        if winners:
            best = max(winners, key=lambda c: abs(c["difference"]))
            return {"action": "ship", "variant": best["variant"],
                    "reason": f"{best['variant']} improves {success[0]} (adjusted p = {best['adjusted_p_value']:.3g})"}
    needed = doc.get("minimum_sample_size") or 0
    smallest = min(counts.values()) if counts else 0
    if needed and smallest >= needed:
        return {"action": "stop_for_futility",
                "reason": f"every variant reached {needed} units without a significant improvement"}
    progress = f"{smallest} of {needed} units per variant" if needed else f"{smallest} units in the smallest variant"
    return {"action": "keep_running", "reason": f"no conclusive result yet ({progress})"}
