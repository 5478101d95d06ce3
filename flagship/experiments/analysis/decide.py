"""Verdicts and the decision: the sample-ratio check, multiple-testing adjustment and what
to do (ship, keep running, stop for futility, stop on a breached guardrail, investigate).

Pure functions over plain data; `tests/test_analysis_decide.py` pins every outcome.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from scipy import stats as scipy_stats

from flagship.experiments import stats as engine
from flagship.experiments.analysis.compare import is_improvement
from flagship.experiments.model import Experiment, Metric
from flagship.experiments.stats.contingency import SRM_THRESHOLD

Epochs = Sequence[Mapping[str, Any]]


def _epoch_weights(epochs: Epochs, experiment: Experiment) -> dict[int, dict[str, float]]:
    table = {int(e["epoch"]): dict(e["weights"]) for e in epochs}
    return table or {1: experiment.weights}


def srm(experiment: Experiment, counts: Mapping[tuple[int, str], int], epochs: Epochs) -> dict[str, Any]:
    """Sample-ratio check against the weights in effect when each unit was assigned.

    `counts` are exposed units by (weight epoch, variant). Each epoch's units are tested
    against that epoch's weights and the chi-square statistics add up (their degrees of
    freedom too), so a mid-run weight change never raises a false alarm.
    """
    names = experiment.variant_names
    weights = _epoch_weights(epochs, experiment)
    observed = {n: 0 for n in names}
    statistic, dof = 0.0, 0
    for epoch in sorted({e for e, _ in counts}):
        row = [counts.get((epoch, n), 0) for n in names]
        for n, c in zip(names, row):
            observed[n] += c
        if sum(row) == 0:
            continue
        planned = weights.get(epoch, experiment.weights)
        result = engine.srm_test(row, [planned.get(n, 0.0) or 1e-12 for n in names])
        statistic, dof = statistic + result.statistic, dof + result.dof
    if dof == 0:
        return {"checked": False, "mismatch": False, "warning": None, "observed": observed}
    p_value = float(scipy_stats.chi2.sf(statistic, dof))
    mismatch = p_value < SRM_THRESHOLD
    out: dict[str, Any] = {
        "checked": True, "p_value": p_value, "statistic": statistic, "dof": dof,
        "mismatch": mismatch, "observed": observed,
        "warning": (f"SAMPLE RATIO MISMATCH (p = {p_value:.2g}): the split differs from the "
                    "configured weights, so every result below is suspect; find the cause before "
                    "reading them") if mismatch else None}
    if len(weights) > 1:
        changes = [{"epoch": int(e["epoch"]), "since": e["since"], "weights": e["weights"]}
                   for e in epochs[1:]]
        out["weight_changes"] = changes
        out["note"] = (f"the variant weights changed {len(changes)} time(s) mid-run (first at "
                       f"{changes[0]['since']}); each unit is checked against the weights in effect "
                       "when it was assigned")
    return out


def adjust(report: Mapping[str, dict[str, Any]], success: Sequence[str], experiment: Experiment) -> None:
    """Multiple-testing correction over the family success metrics x treatments (in place)."""
    family = [c for m in success for c in report[m]["comparisons"] if "p_value" in c]
    method = experiment.multiple_testing
    ps = [c["p_value"] for c in family]
    adjusted = ps if method == "none" or not family else list(engine.adjust_p_values(ps, method))
    for comparison, p in zip(family, adjusted):
        comparison["adjusted_p_value"] = float(p)
        comparison["significant"] = bool(p < experiment.significance_level)
    # the always-valid p-values of the same family, adjusted the same way (a correction for
    # multiple tests holds for any valid p-values, these are valid at every look); a member
    # without one yet counts as p = 1, so the family never shrinks
    ps = [(c.get("always_valid") or {}).get("p_value", 1.0) for c in family]
    adjusted = ps if method == "none" or not family else list(engine.adjust_p_values(ps, method))
    for comparison, p in zip(family, adjusted):
        if "p_value" in (comparison.get("always_valid") or {}):
            comparison["always_valid"]["adjusted_p_value"] = float(p)
            comparison["always_valid"]["significant"] = bool(p < experiment.significance_level)
    for entry in report.values():
        for comparison in entry["comparisons"]:
            if entry["role"] == "guardrail" and "p_value" in comparison and "significant" not in comparison:
                comparison["significant"] = comparison["p_value"] < experiment.significance_level


def decide(report: Mapping[str, dict[str, Any]], metrics: Mapping[str, Metric], success: Sequence[str],
           srm_result: Mapping[str, Any], experiment: Experiment,
           counts: Mapping[str, int]) -> dict[str, Any]:
    """What to do, in precedence order: investigate an SRM, stop on a breached guardrail,
    ship a significant improvement of the primary metric, stop for futility once every
    variant reached the minimum sample, else keep running.

    Which test may call a winner depends on when one looks. At or past the planned sample
    (`minimum_sample_size` in every variant), the fixed-horizon test it was planned for.
    Before it, or with no planned sample, only the always-valid test: the dashboard is
    looked at again and again, and a fixed-horizon p-value checked at every look finds a
    "winner" in about a quarter of A/A tests (`flagship aa-test`), while the always-valid
    one keeps its error rate at any look.
    """
    if srm_result.get("mismatch"):
        return {"action": "investigate", "reason": srm_result["warning"]}
    for entry in report.values():
        for c in entry["comparisons"]:
            if c.get("guardrail", {}).get("status") == "breached":
                return {"action": "stop", "reason": f"guardrail {entry['metric']} breached by {c['variant']}"}
    needed = experiment.minimum_sample_size
    smallest = min((counts.get(n, 0) for n in experiment.variant_names), default=0)
    planned = bool(needed) and smallest >= needed
    early: list[dict[str, Any]] = []  # significant by the fixed test only, before the plan
    if success:
        primary = report[success[0]]
        metric = metrics[success[0]]
        improving = [c for c in primary["comparisons"] if is_improvement(metric, c)]
        if planned:
            winners = [c for c in improving if c.get("significant")]
        else:
            winners = [c for c in improving if _sequentially_better(metric, c)]
            early = [c for c in improving if c.get("significant") and c not in winners]
        if winners:
            best = max(winners, key=lambda c: abs(c["difference"]))
            evidence = (f"adjusted p = {best['adjusted_p_value']:.3g} at the planned sample" if planned
                        else f"always-valid adjusted p = {best['always_valid']['adjusted_p_value']:.3g},"
                             " conclusive at any look")
            return {"action": "ship", "variant": best["variant"],
                    "reason": f"{best['variant']} improves {success[0]} ({evidence})"}
    if planned:
        return {"action": "stop_for_futility",
                "reason": f"every variant reached {needed} units without a significant improvement"}
    progress = f"{smallest} of {needed} units per variant" if needed else f"{smallest} units in the smallest variant"
    if early:
        lead = max(early, key=lambda c: abs(c["difference"]))
        return {"action": "keep_running",
                "reason": f"{lead['variant']} leads on {success[0]} (adjusted p = "
                          f"{lead['adjusted_p_value']:.3g}), but before the planned sample only the "
                          f"always-valid test may call it ({progress})"}
    return {"action": "keep_running", "reason": f"no conclusive result yet ({progress})"}


def _sequentially_better(metric: Metric, comparison: Mapping[str, Any]) -> bool:
    """The always-valid test is significant and its confidence sequence lies wholly on the
    metric's good side. The always-valid p-value is a running minimum and carries no
    direction; the sequence (a running intersection) does, so a lead that reversed since
    cannot be shipped on an old p-value."""
    sequential = comparison.get("always_valid") or {}
    bounds = sequential.get("confidence_sequence")
    if not sequential.get("significant") or not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        return False
    low, high = bounds
    if low is None or high is None:
        return False
    return low > 0 if metric.direction == "increase" else high < 0
