"""Example guardrail plugin: a Prometheus instant query checked against `max` and/or `min`.

Enable it with ``FLAGSHIP_PLUGINS=tests.plugins.prometheus_guardrail`` (or a ``flagship``
entry point) and add a check to a ramp policy::

    {"id": "p99-latency", "type": "prometheus_query", "url": "http://prometheus:9090",
     "query": "histogram_quantile(0.99, sum by (le) (rate(http_seconds_bucket{flag=\\"$flag\\"}[5m])))",
     "max": 0.8, "timeout": "5s", "severity": "blocking", "on_fail": "hold", "failure_limit": 2}

``$name`` in the query is replaced by that field of the rollout (``$flag``, ``$rule``, ...).
Every series of the instant vector must be within the bounds; no series (or only NaN)
is ``no_data``. A Prometheus error, a bad answer or a timeout raises, which flagship
records as ``error`` for this check (never ``fail``).
"""
from __future__ import annotations

import json
import math
import string
import urllib.parse
import urllib.request
from typing import Any, Mapping

from flagship.hookspecs import hookimpl
from flagship.rollout.guardrails import (
    CheckResult, Guardrail, Observations, ParamError, evidence, known_params, number_param,
    string_param,
)
from flagship.rollout.model import CheckSpec, parse_duration


def validate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check url, query, max/min and timeout; return the canonical params."""
    known_params(params, ("url", "query", "max", "min", "timeout"))
    url = string_param(params, "url")
    if not url.startswith(("http://", "https://")):
        raise ParamError("url", f"must be the http(s) base URL of Prometheus, got {url!r}")
    bounds = {"max": number_param(params, "max", None), "min": number_param(params, "min", None)}
    if bounds["max"] is None and bounds["min"] is None:
        raise ParamError("max", "give max, min or both")
    try:
        timeout = parse_duration(5 if params.get("timeout") is None else params["timeout"])
    except ValueError as err:
        raise ParamError("timeout", str(err)) from None
    if not 0 < timeout <= 60:
        raise ParamError("timeout", "must be more than 0 and at most 60 s")
    return {"url": url.rstrip("/"), "query": string_param(params, "query"), **bounds,
            "timeout": timeout}


def instant_values(doc: Mapping[str, Any]) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each series in an /api/v1/query answer (vector or scalar)."""
    if doc.get("status") != "success":
        raise RuntimeError(f"prometheus: {doc.get('errorType')}: {doc.get('error')}")
    data = doc["data"]
    if data["resultType"] == "vector":
        return [(dict(s.get("metric", {})), float(s["value"][1])) for s in data["result"]]
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    raise ValueError(f"expected an instant vector or scalar, got {data['resultType']}")


def _query(params: Mapping[str, Any], window: Observations) -> list[tuple[dict[str, str], float]]:
    fields = {k: str(v) for k, v in window.rollout.items()}
    query = string.Template(params["query"]).safe_substitute(fields)
    url = f"{params['url']}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=params["timeout"]) as response:
        return instant_values(json.load(response))


def evaluate(check: CheckSpec, window: Observations) -> CheckResult:
    """Fail when any series is outside [min, max]; no series is no_data."""
    p = check.params
    values = [(labels, v) for labels, v in _query(p, window) if math.isfinite(v)]
    if not values:
        return CheckResult(check.id, "no_data", check.severity, "the query returned no series",
                           evidence(method="prometheus"))
    high = max(values, key=lambda item: item[1])
    low = min(values, key=lambda item: item[1])
    if p["max"] is not None and high[1] > p["max"]:
        outcome, (labels, value), threshold = "fail", high, p["max"]
    elif p["min"] is not None and low[1] < p["min"]:
        outcome, (labels, value), threshold = "fail", low, p["min"]
    else:
        outcome, (labels, value) = "pass", high if p["max"] is not None else low
        threshold = p["max"] if p["max"] is not None else p["min"]
    message = f"{value:g} for {labels or 'the query'} ({outcome} against {threshold:g})"
    return CheckResult(check.id, outcome, check.severity, message,
                       evidence(method="prometheus", value=value, threshold=threshold,
                                series=len(values)))


@hookimpl
def register_guardrails() -> list[Guardrail]:
    """The `prometheus_query` check type."""
    return [Guardrail("prometheus_query", validate, evaluate,
                      description="a Prometheus instant query against max / min")]
