"""The example Prometheus guardrail plugin against a real local HTTP server speaking its API."""
from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from flagship.errors import ValidationError
from flagship.plugins import guardrail_table, make_plugin_manager
from flagship.rollout.guardrails import Observations, run_checks
from flagship.rollout.model import Policy, RolloutState, policy_from_dict
from flagship.rollout.plan import decide


def vector(*values: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"instance": f"web-{i}"}, "value": [1718000000.5, v]}
        for i, v in enumerate(values)]}}


ANSWERS: dict[str, tuple[int, dict[str, Any]]] = {
    "p99_ok": (200, vector("0.41", "0.52")),
    "p99_bad": (200, vector("0.41", "0.93")),
    "floor": (200, vector("12", "3")),
    "empty": (200, vector()),
    "nan": (200, vector("NaN")),
    "scalar": (200, {"status": "success", "data": {"resultType": "scalar",
                                                    "result": [1718000000, "0.2"]}}),
    "oops(": (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
}


class FakePrometheus(BaseHTTPRequestHandler):
    """GET /api/v1/query?query=... answered from ANSWERS, as Prometheus's HTTP API would."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
        self.server.queries.append(query)  # type: ignore[attr-defined]
        status, body = ANSWERS.get(query, (200, vector()))
        if url.path != "/api/v1/query":
            status, body = 404, {"status": "error", "error": "not found"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    server.queries = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def table() -> dict[str, Any]:
    pm = make_plugin_manager(["tests.plugins.prometheus_guardrail"], entry_points=False)
    return guardrail_table(pm)


def policy(table: dict[str, Any], **check: Any) -> Policy:
    return policy_from_dict({"evaluation_interval": 1, "steps": [
        {"percent": 5, "min_duration": 1, "min_units": 0}],
        "checks": [{"id": "prom", "type": "prometheus_query", **check}]}, table)


def evaluate(prometheus: ThreadingHTTPServer, table: dict[str, Any], **check: Any) -> Any:
    url = f"http://127.0.0.1:{prometheus.server_address[1]}/"
    [result] = run_checks(policy(table, url=url, timeout=2, **check),
                          Observations(now=1.0, rollout={"flag": "checkout", "rule": "r1"}), table)
    return result


@pytest.mark.parametrize("query, bounds, outcome, value", [
    ("p99_ok", {"max": 0.8}, "pass", 0.52),
    ("p99_bad", {"max": 0.8}, "fail", 0.93),
    ("floor", {"min": 5}, "fail", 3.0),
    ("floor", {"min": 1, "max": 20}, "pass", 12.0),
    ("scalar", {"max": 0.1}, "fail", 0.2),
])
def test_instant_vector_against_bounds(prometheus: ThreadingHTTPServer, table: dict[str, Any],
                                       query: str, bounds: dict[str, float], outcome: str,
                                       value: float) -> None:
    result = evaluate(prometheus, table, query=query, **bounds)
    assert (result.outcome, result.evidence["value"]) == (outcome, value)
    assert result.evidence["method"] == "prometheus"


@pytest.mark.parametrize("query", ["empty", "nan"])
def test_no_series_is_no_data(prometheus: ThreadingHTTPServer, table: dict[str, Any],
                              query: str) -> None:
    assert evaluate(prometheus, table, query=query, max=1).outcome == "no_data"


def test_a_prometheus_error_is_an_error_and_holds(prometheus: ThreadingHTTPServer,
                                                  table: dict[str, Any]) -> None:
    result = evaluate(prometheus, table, query="oops(", max=1)
    assert result.outcome == "error" and "HTTPError" in result.message
    p = policy(table, url="http://127.0.0.1:1", query="x", max=1, on_fail="rollback",
               failure_limit=0)
    state = RolloutState(status="running", percent_bp=500, step_started_at=0.0, consecutive_ok=9)
    decision = decide(p, state, [result], 60.0, units=10)
    assert decision.action == "hold" and decision.state.status == "running"


def test_rollout_fields_are_substituted_into_the_query(prometheus: ThreadingHTTPServer,
                                                       table: dict[str, Any]) -> None:
    evaluate(prometheus, table, query='errors{flag="$flag",rule="$rule"} $missing', max=1)
    assert prometheus.queries == ['errors{flag="checkout",rule="r1"} $missing']  # type: ignore[attr-defined]


@pytest.mark.parametrize("check, field", [
    ({"url": "prometheus:9090", "query": "up", "max": 1}, "checks.0.url"),
    ({"url": "http://p", "max": 1}, "checks.0.query"),
    ({"url": "http://p", "query": "up"}, "checks.0.max"),
    ({"url": "http://p", "query": "up", "max": 1, "timeout": "2h"}, "checks.0.timeout"),
    ({"url": "http://p", "query": "up", "max": 1, "step": "1m"}, "checks.0.step"),
])
def test_params_are_validated_at_policy_save(table: dict[str, Any], check: dict[str, Any],
                                             field: str) -> None:
    with pytest.raises(ValidationError) as info:
        policy(table, **check)
    assert info.value.field == field


def test_the_plugin_joins_the_builtins(table: dict[str, Any]) -> None:
    assert {"prometheus_query", "metric_regression", "webhook"} <= set(table)
    canonical = policy(table, url="http://p:9090/", query="up", max=1).checks[0].params
    assert canonical == {"url": "http://p:9090", "query": "up", "max": 1.0, "min": None,
                         "timeout": 5.0}
