"""Built-in guardrail checks (pure but for the webhook's HTTP call);
`flagship/plugins/default_guardrails.py` registers them through the same hook as
third-party ones.

- ``metric_regression``: treatment vs the mirrored control on one metric with the
  always-valid confidence sequence (mSPRT) of the stats engine. With ``harm`` the
  difference oriented so that positive is worse: fail when the whole interval lies beyond
  ``fail_margin``, pass when it lies below ``ni_margin``, else inconclusive.
- ``metric_threshold``: an arm's mean / rate / sum against ``max`` and/or ``min``.
- ``srm``: chi-square sample-ratio test of the two (equal-sized) arms.
- ``min_traffic``: ``no_data`` until an arm has ``min_units`` units this step.
- ``webhook``: POST a JSON digest; 2xx pass, other status fail, no answer error.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Mapping

from flagship.errors import ValidationError
from flagship.experiments import stats
from flagship.experiments.stats.contingency import SRM_THRESHOLD
from flagship.experiments.stats.summary import sample_variance
from flagship.rollout.guardrails import (
    CheckResult, Guardrail, MetricStats, Observations, ParamError, choice_param, evidence,
    known_params, margin_param, number_param, resolve_margin, string_param,
)
from flagship.rollout.model import CheckSpec, parse_duration

DIRECTIONS = ("lower_is_better", "higher_is_better")
AGGREGATES = ("mean", "rate", "sum")
PICK_ARM = ("treatment", "control")


def _result(check: CheckSpec, outcome: str, message: str, **proof: Any) -> CheckResult:
    return CheckResult(check.id, outcome, check.severity, message, evidence(**proof))


# -- metric_regression -------------------------------------------------------------------

def _validate_regression(params: Mapping[str, Any]) -> dict[str, Any]:
    known_params(params, ("metric", "direction", "fail_margin", "ni_margin", "alpha",
                          "min_units", "horizon_units"))
    min_units = number_param(params, "min_units", 100, low=2, integer=True)
    return {"metric": string_param(params, "metric"),
            "direction": choice_param(params, "direction", DIRECTIONS, None),
            "fail_margin": margin_param(params, "fail_margin"),
            "ni_margin": margin_param(params, "ni_margin"),
            "alpha": number_param(params, "alpha", 0.05, low=1e-6, high=0.5),
            "min_units": min_units,
            "horizon_units": number_param(params, "horizon_units", max(1000, min_units),
                                          low=min_units, integer=True)}


def estimate(metric: MetricStats) -> tuple[float, float]:
    """The arm's estimate of the metric and that estimate's variance (se**2), by metric kind."""
    if metric.kind == "ratio":
        ratio = stats.ratio_metric_stats(metric.n, metric.sum, metric.den_sum, metric.sum_sq,
                                         metric.den_sum_sq, metric.num_den)
        return ratio.ratio, ratio.variance
    mean = metric.sum / metric.n
    if metric.kind == "conversion":  # binomial variance, as the experiments report uses
        return mean, mean * (1.0 - mean) / metric.n
    return mean, sample_variance(metric.n, metric.sum, metric.sum_sq) / metric.n


def _harm_sign(params: Mapping[str, Any], metric: MetricStats) -> float:
    """+1 when a larger treatment-minus-control difference is worse, else -1."""
    direction = params.get("direction") or (
        "lower_is_better" if metric.direction == "decrease" else "higher_is_better")
    return 1.0 if direction == "lower_is_better" else -1.0


def _regression(check: CheckSpec, window: Observations) -> CheckResult:
    p = check.params
    t = window.arm("treatment").metrics.get(p["metric"])
    c = window.arm("control").metrics.get(p["metric"])
    n_t, n_c = (t.n if t else 0), (c.n if c else 0)
    if t is None or c is None or min(n_t, n_c) < p["min_units"]:
        return _result(check, "no_data", f"{min(n_t, n_c)} units in the smaller arm, "
                       f"{p['min_units']} needed", method="mSPRT", n_treatment=n_t, n_control=n_c)
    try:
        (est_t, var_t), (est_c, var_c) = estimate(t), estimate(c)
    except ValidationError as err:
        return _result(check, "no_data", err.message, method="mSPRT", n_treatment=n_t,
                       n_control=n_c)
    if var_t + var_c <= 0:
        return _result(check, "inconclusive", "both arms are constant: no variance to test",
                       method="mSPRT", value=est_t, n_treatment=n_t, n_control=n_c)
    # tau2 is fixed by the planned horizon, not by how much data has arrived so far.
    horizon_var = (var_t * n_t + var_c * n_c) / p["horizon_units"]
    tau2 = stats.default_tau2(horizon_var, p["alpha"])
    look = stats.msprt_test(est_t - est_c, var_t + var_c, tau2, p["alpha"])
    return _regression_verdict(check, look, est_t, est_c, _harm_sign(p, t), n_t, n_c)


def _regression_verdict(check: CheckSpec, look: stats.MsprtResult, est_t: float, est_c: float,
                        sign: float, n_t: int, n_c: int) -> CheckResult:
    p = check.params
    fail_margin = resolve_margin(p["fail_margin"], est_c)
    ni_margin = resolve_margin(p["ni_margin"], est_c)
    harm_lo, harm_hi = sorted((sign * look.ci[0], sign * look.ci[1]))
    if harm_lo > fail_margin:
        outcome, text = "fail", f"harmful beyond the margin {fail_margin:g}"
    elif harm_hi < ni_margin:
        outcome, text = "pass", f"no worse than the margin {ni_margin:g}"
    else:
        outcome, text = "inconclusive", "the interval still spans the margins"
    message = (f"{p['metric']}: treatment {est_t:.6g} vs control {est_c:.6g}, difference "
               f"{est_t - est_c:.6g} in [{look.ci[0]:.6g}, {look.ci[1]:.6g}]; {text}")
    return _result(check, outcome, message, method="mSPRT", estimate=est_t - est_c, ci=look.ci,
                   alpha=p["alpha"], margin=fail_margin, ni_margin=ni_margin,
                   p_value=look.p_value, value=est_t, baseline=est_c, tau2=look.tau2,
                   n_treatment=n_t, n_control=n_c)


# -- metric_threshold --------------------------------------------------------------------

def _validate_threshold(params: Mapping[str, Any]) -> dict[str, Any]:
    known_params(params, ("metric", "aggregate", "arm", "max", "min", "min_units"))
    aggregate = params.get("aggregate")
    if isinstance(aggregate, str) and aggregate.lower().startswith("p"):
        raise ParamError("aggregate", "percentiles need raw values, not sufficient statistics; "
                                      "use mean, rate or sum (or an external check)")
    doc = {"metric": string_param(params, "metric"),
           "aggregate": choice_param(params, "aggregate", AGGREGATES, "mean"),
           "arm": choice_param(params, "arm", PICK_ARM, "treatment"),
           "max": number_param(params, "max", None), "min": number_param(params, "min", None),
           "min_units": number_param(params, "min_units", 1, low=1, integer=True)}
    if doc["max"] is None and doc["min"] is None:
        raise ParamError("max", "give max, min or both")
    if doc["max"] is not None and doc["min"] is not None and doc["min"] > doc["max"]:
        raise ParamError("min", f"must not exceed max ({doc['max']:g})")
    return doc


def aggregate(metric: MetricStats, how: str) -> float:
    """sum: the total; mean/rate: per unit, or sum over denominator sum for ratio metrics."""
    if how == "sum":
        return float(metric.sum)
    if metric.kind == "ratio":
        if metric.den_sum == 0:
            raise ValidationError("the denominator sums to 0", field="den_sum")
        return metric.sum / metric.den_sum
    return metric.sum / metric.n


def _threshold(check: CheckSpec, window: Observations) -> CheckResult:
    p = check.params
    metric = window.arm(p["arm"]).metrics.get(p["metric"])
    n = metric.n if metric else 0
    if metric is None or n < p["min_units"]:
        return _result(check, "no_data", f"{n} units in the {p['arm']} arm, {p['min_units']} "
                       "needed", method="threshold", **{f"n_{p['arm']}": n})
    try:
        value = aggregate(metric, p["aggregate"])
    except ValidationError as err:
        return _result(check, "no_data", err.message, method="threshold")
    above = p["max"] is not None and value > p["max"]
    below = p["min"] is not None and value < p["min"]
    limit = p["max"] if above or p["min"] is None else p["min"]
    verb = "above max" if above else "below min" if below else "within"
    message = f"{p['aggregate']} of {p['metric']} in {p['arm']} is {value:.6g}, {verb} {limit:g}"
    return _result(check, "fail" if above or below else "pass", message, method="threshold",
                   value=value, threshold=limit, **{f"n_{p['arm']}": n})


# -- srm, min_traffic --------------------------------------------------------------------

def _validate_srm(params: Mapping[str, Any]) -> dict[str, Any]:
    known_params(params, ("p_value", "min_units"))
    return {"p_value": number_param(params, "p_value", SRM_THRESHOLD,
                                    low=1e-12, high=0.5),
            "min_units": number_param(params, "min_units", 8, low=1, integer=True)}


def _srm(check: CheckSpec, window: Observations) -> CheckResult:
    p = check.params
    counts = [int(window.exposures.get(a, window.arm(a).units)) for a in PICK_ARM]
    if min(counts) < p["min_units"]:
        return _result(check, "no_data", f"{min(counts)} units in the smaller arm, "
                       f"{p['min_units']} needed", method="chi2", n_treatment=counts[0],
                       n_control=counts[1])
    test = stats.srm_test(counts, threshold=p["p_value"])
    message = (f"treatment {counts[0]} vs control {counts[1]} units: chi2 "
               f"{test.statistic:.4g}, p = {test.p_value:.3g} (fails below {p['p_value']:g})")
    return _result(check, "fail" if test.mismatch else "pass", message, method="chi2",
                   value=test.statistic, p_value=test.p_value, threshold=p["p_value"],
                   n_treatment=counts[0], n_control=counts[1])


def _validate_traffic(params: Mapping[str, Any]) -> dict[str, Any]:
    known_params(params, ("min_units", "arm"))
    return {"min_units": number_param(params, "min_units", low=1, integer=True),
            "arm": choice_param(params, "arm", PICK_ARM + ("both",), "treatment")}


def _traffic(check: CheckSpec, window: Observations) -> CheckResult:
    p = check.params
    arms = PICK_ARM if p["arm"] == "both" else (p["arm"],)
    counts = {arm: int(window.step_units.get(arm, 0)) for arm in arms}
    low = min(counts.values())
    outcome = "pass" if low >= p["min_units"] else "no_data"
    seen = ", ".join(f"{arm} {n}" for arm, n in counts.items())
    return _result(check, outcome, f"units this step: {seen}; {p['min_units']} needed per arm",
                   method="count", value=low, threshold=p["min_units"],
                   **{f"n_{arm}": n for arm, n in counts.items()})


# -- webhook -----------------------------------------------------------------------------

def _validate_webhook(params: Mapping[str, Any]) -> dict[str, Any]:
    known_params(params, ("url", "timeout", "headers"))
    url = string_param(params, "url")
    if not url.startswith(("http://", "https://")):
        raise ParamError("url", f"must be an http:// or https:// URL, got {url!r}")
    try:
        timeout = parse_duration(params.get("timeout") if params.get("timeout") is not None else 5)
    except ValueError as err:
        raise ParamError("timeout", str(err)) from None
    if not 0 < timeout <= 60:
        raise ParamError("timeout", f"must be more than 0 and at most 60 s, got {timeout:g} s")
    headers = params.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ParamError("headers", "must be an object of header name -> string value")
    return {"url": url, "timeout": timeout, "headers": dict(headers)}


def _webhook(check: CheckSpec, window: Observations) -> CheckResult:
    p = check.params
    public = {k: v for k, v in p.items() if k != "headers"}  # headers may carry secrets
    body = {"rollout": dict(window.rollout),
            "check": {"id": check.id, "type": check.type, "severity": check.severity,
                      "params": public},
            "observations": window.summary()}
    request = urllib.request.Request(
        p["url"], data=json.dumps(body, default=str).encode(), method="POST",
        headers={"Content-Type": "application/json", **p["headers"]})
    try:
        with urllib.request.urlopen(request, timeout=p["timeout"]) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:  # timeouts and refused connections
        reason = getattr(err, "reason", err)
        return _result(check, "error", f"POST {p['url']} got no answer: {reason}", method="http")
    outcome = "pass" if 200 <= status < 300 else "fail"
    return _result(check, outcome, f"POST {p['url']} answered {status}", method="http",
                   http_status=status)


BUILTINS = (
    Guardrail("metric_regression", _validate_regression, _regression, comparative=True,
              description="treatment vs mirrored control on a metric, always-valid (mSPRT)"),
    Guardrail("metric_threshold", _validate_threshold, _threshold,
              description="an arm's mean, rate or sum of a metric against max / min"),
    Guardrail("srm", _validate_srm, _srm, comparative=True,
              description="sample-ratio mismatch between treatment and control (chi-square)"),
    Guardrail("min_traffic", _validate_traffic, _traffic,
              description="no data until an arm has min_units units this step"),
    Guardrail("webhook", _validate_webhook, _webhook,
              description="POST a JSON digest to a URL: 2xx pass, other status fail"),
)
