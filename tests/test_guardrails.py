"""Guardrail checks: the built-ins against hand/scipy-computed numbers, isolation, the hooks."""
from __future__ import annotations

import inspect
import json
import math
import socket
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np
import pytest
from scipy import optimize, stats

from flagship import hookspecs
from flagship.errors import ConfigError, ValidationError
from flagship.hookspecs import hookimpl
from flagship.plugins import call_notifiers, describe_plugins, guardrail_table, make_plugin_manager
from flagship.rollout.guardrails import (
    Arm, CheckResult, Guardrail, MetricStats, Observations, build_guardrail_table,
    default_guardrails, evidence, run_checks, sample_units, split_alpha,
)
from flagship.rollout.model import Policy, RolloutState, policy_from_dict
from flagship.rollout.plan import decide

TABLE = default_guardrails()


def policy(*checks: dict[str, Any], percent: float = 10) -> Policy:
    return policy_from_dict({"evaluation_interval": 1, "steps": [
        {"percent": percent, "min_duration": 1, "min_units": 0}], "checks": list(checks)}, TABLE)


def stats_of(values: Any, kind: str = "mean", direction: str = "decrease") -> MetricStats:
    x = np.asarray(values, dtype=float)
    return MetricStats(int(x.size), float(x.sum()), float(x @ x), kind, direction)


def window(treatment: dict[str, MetricStats], control: dict[str, MetricStats],
           percent_bp: int = 1000, **fields: Any) -> Observations:
    arms = {"treatment": Arm(max((m.n for m in treatment.values()), default=0), treatment),
            "control": Arm(max((m.n for m in control.values()), default=0), control)}
    return Observations(now=1000.0, arms=arms, percent_bp=percent_bp, **fields)


def run_one(check: dict[str, Any], observations: Observations) -> CheckResult:
    [result] = run_checks(policy(check), observations, TABLE)
    return result


def msprt_reference(diff: float, var: float, horizon_var: float, alpha: float) -> dict[str, Any]:
    """The confidence sequence computed from first principles (scipy root for tau2)."""
    two_log = 2 * math.log(1 / alpha)
    r = optimize.brentq(lambda r: r - two_log - math.log1p(r), 1e-9, 1e3, xtol=1e-14)
    tau2 = r * horizon_var
    half = math.sqrt(var * (var + tau2) / tau2 * (two_log + math.log((var + tau2) / var)))
    lr = math.sqrt(var / (var + tau2)) * math.exp(tau2 * diff ** 2 / (2 * var * (var + tau2)))
    return {"ci": [diff - half, diff + half], "p_value": min(1.0, 1 / lr), "tau2": tau2}


# -- metric_regression ---------------------------------------------------------------------

RNG = np.random.default_rng(20240611)
WORSE = RNG.normal(1.4, 1.0, 600)
BASE = RNG.normal(1.0, 1.0, 600)
SAME = RNG.normal(1.0, 1.0, 600)


def test_regression_mean_metric_matches_the_reference_and_fails_on_harm() -> None:
    check = {"id": "latency", "type": "metric_regression", "metric": "m", "min_units": 50,
             "horizon_units": 2000}
    result = run_one(check, window({"m": stats_of(WORSE)}, {"m": stats_of(BASE)}))
    var = stats.sem(WORSE) ** 2 + stats.sem(BASE) ** 2
    horizon = (np.var(WORSE, ddof=1) + np.var(BASE, ddof=1)) / 2000
    ref = msprt_reference(WORSE.mean() - BASE.mean(), var, horizon, 0.05)
    assert result.outcome == "fail" and ref["ci"][0] > 0
    assert result.evidence["estimate"] == pytest.approx(WORSE.mean() - BASE.mean(), rel=1e-12)
    assert result.evidence["ci"] == pytest.approx(ref["ci"], rel=1e-9)
    assert result.evidence["p_value"] == pytest.approx(ref["p_value"], rel=1e-9, abs=1e-300)
    assert result.evidence["tau2"] == pytest.approx(ref["tau2"], rel=1e-9)
    assert (result.evidence["n_treatment"], result.evidence["n_control"]) == (600, 600)
    assert result.evidence["method"] == "mSPRT" and result.evidence["alpha"] == 0.05


def test_regression_direction_margins_and_inconclusive() -> None:
    base = {"type": "metric_regression", "metric": "m", "min_units": 50}
    worse = window({"m": stats_of(WORSE)}, {"m": stats_of(BASE)})
    better = run_one(base | {"id": "up", "direction": "higher_is_better"}, worse)
    assert better.outcome == "pass"  # the same data read the other way round is an improvement
    by_metric = window({"m": stats_of(WORSE, direction="increase")}, {"m": stats_of(BASE)})
    assert run_one(base | {"id": "m"}, by_metric).outcome == "pass"
    lenient = run_one(base | {"id": "wide", "fail_margin": "200%"}, worse)
    assert lenient.outcome == "inconclusive"
    assert lenient.evidence["margin"] == pytest.approx(2 * abs(BASE.mean()))
    same = run_one(base | {"id": "same"}, window({"m": stats_of(SAME)}, {"m": stats_of(BASE)}))
    assert same.outcome == "inconclusive"
    ni = run_one(base | {"id": "ni", "ni_margin": 1.5},
                 window({"m": stats_of(SAME)}, {"m": stats_of(BASE)}))
    assert ni.outcome == "pass" and ni.evidence["ci"][1] < 1.5


def test_regression_conversion_uses_the_binomial_variance() -> None:
    t = MetricStats(2000, 260, 260, "conversion", "decrease")
    c = MetricStats(2000, 180, 180, "conversion", "decrease")
    result = run_one({"type": "metric_regression", "metric": "err", "min_units": 100},
                     window({"err": t}, {"err": c}))
    pt, pc = 0.13, 0.09
    var = pt * (1 - pt) / 2000 + pc * (1 - pc) / 2000
    ref = msprt_reference(pt - pc, var, var * 2000 / 1000, 0.05)
    assert result.evidence["ci"] == pytest.approx(ref["ci"], rel=1e-9)
    assert result.outcome == ("fail" if ref["ci"][0] > 0 else "inconclusive") == "fail"


def test_regression_ratio_metric_uses_the_delta_method() -> None:
    rng = np.random.default_rng(3)
    den_t, den_c = rng.poisson(5, 800) + 1.0, rng.poisson(5, 800) + 1.0
    num_t, num_c = rng.binomial(den_t.astype(int), 0.30), rng.binomial(den_c.astype(int), 0.20)

    def ratio(num: np.ndarray, den: np.ndarray) -> tuple[MetricStats, float, float]:
        r = num.sum() / den.sum()
        cov = np.cov(num, den, ddof=1)
        var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (num.size * den.mean() ** 2)
        m = MetricStats(num.size, float(num.sum()), float(num @ num), "ratio", "increase",
                        float(den.sum()), float(den @ den), float(num @ den))
        return m, r, var

    (mt, rt, vt), (mc, rc, vc) = ratio(num_t, den_t), ratio(num_c, den_c)
    result = run_one({"type": "metric_regression", "metric": "ctr", "min_units": 100,
                      "horizon_units": 1000}, window({"ctr": mt}, {"ctr": mc}))
    ref = msprt_reference(rt - rc, vt + vc, (vt * 800 + vc * 800) / 1000, 0.05)
    assert result.evidence["value"] == pytest.approx(rt) and result.evidence["baseline"] == pytest.approx(rc)
    assert result.evidence["ci"] == pytest.approx(ref["ci"], rel=1e-9)
    assert result.outcome == "pass"  # higher is better and the ratio clearly rose


def test_regression_no_data_and_no_variance() -> None:
    check = {"type": "metric_regression", "metric": "m", "min_units": 100}
    few = window({"m": stats_of(WORSE[:99])}, {"m": stats_of(BASE)})
    assert run_one(check, few).outcome == "no_data"
    assert run_one(check, window({}, {"m": stats_of(BASE)})).outcome == "no_data"
    flat = MetricStats(500, 0, 0, "conversion")
    zero = run_one(check, window({"m": flat}, {"m": flat}))
    assert zero.outcome == "inconclusive" and "no variance" in zero.message


def test_alpha_is_split_across_blocking_comparative_checks() -> None:
    checks = [{"id": f"r{i}", "type": "metric_regression", "metric": "m", "min_units": 50}
              for i in range(2)]
    checks += [{"id": "s", "type": "metric_regression", "metric": "m", "min_units": 50,
                "severity": "signal"},
               {"id": "srm", "type": "srm", "severity": "blocking"}]
    p = policy(*checks)
    assert split_alpha(p) == {"r0": 0.025, "r1": 0.025}
    obs = window({"m": stats_of(WORSE)}, {"m": stats_of(BASE)})
    alphas = {r.check_id: r.evidence.get("alpha") for r in run_checks(p, obs, TABLE)}
    assert alphas == {"r0": 0.025, "r1": 0.025, "s": 0.05, "srm": None}
    assert p.check("r0").params["alpha"] == 0.05  # type: ignore[union-attr]


# -- metric_threshold ----------------------------------------------------------------------

@pytest.mark.parametrize("metric, params, outcome, value", [
    (stats_of([100, 300, 500]), {"max": 250}, "fail", 300.0),
    (stats_of([100, 300, 500]), {"max": 300}, "pass", 300.0),
    (stats_of([100, 300, 500]), {"min": 350, "max": 900}, "fail", 300.0),
    (stats_of([100, 300, 500]), {"aggregate": "sum", "max": 1000}, "pass", 900.0),
    (MetricStats(400, 36, 36, "conversion"), {"aggregate": "rate", "max": 0.05}, "fail", 0.09),
    (MetricStats(10, 30, 200, "ratio", den_sum=60, den_sum_sq=400, num_den=200),
     {"max": 0.4}, "fail", 0.5),
])
def test_threshold(metric: MetricStats, params: dict[str, Any], outcome: str, value: float) -> None:
    result = run_one({"type": "metric_threshold", "metric": "m"} | params,
                     window({"m": metric}, {}))
    assert (result.outcome, result.evidence["method"]) == (outcome, "threshold")
    assert result.evidence["value"] == pytest.approx(value)
    assert result.evidence["n_treatment"] == metric.n


def test_threshold_control_arm_and_no_data() -> None:
    check = {"type": "metric_threshold", "metric": "m", "max": 1, "arm": "control",
             "min_units": 3}
    assert run_one(check, window({}, {"m": stats_of([5, 5, 5])})).outcome == "fail"
    assert run_one(check, window({}, {"m": stats_of([5, 5])})).outcome == "no_data"
    assert run_one(check, window({"m": stats_of([5, 5, 5])}, {})).outcome == "no_data"
    with pytest.raises(ValidationError) as info:
        policy({"type": "metric_threshold", "metric": "m", "min": 5, "max": 1})
    assert info.value.field == "checks.0.min"


# -- srm, min_traffic ------------------------------------------------------------------------

@pytest.mark.parametrize("counts, outcome", [((1000, 850), "fail"), ((1000, 990), "pass"),
                                             ((7, 20), "no_data")])
def test_srm_matches_scipy(counts: tuple[int, int], outcome: str) -> None:
    obs = Observations(now=1.0, percent_bp=1000,
                       exposures={"treatment": counts[0], "control": counts[1]})
    result = run_one({"type": "srm", "severity": "health"}, obs)
    assert result.outcome == outcome
    if outcome != "no_data":
        reference = stats.chisquare(counts)
        assert result.evidence["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
        assert result.evidence["value"] == pytest.approx(reference.statistic, rel=1e-12)
        assert (reference.pvalue < 0.001) == (outcome == "fail")


def test_srm_falls_back_to_arm_units() -> None:
    obs = Observations(now=1.0, arms={"treatment": Arm(500), "control": Arm(400)})
    result = run_one({"type": "srm"}, obs)
    assert result.outcome == "fail" and result.evidence["n_control"] == 400


def test_min_traffic_reads_units_of_this_step() -> None:
    obs = Observations(now=1.0, step_units={"treatment": 30, "control": 10},
                       arms={"treatment": Arm(10_000)})
    assert run_one({"type": "min_traffic", "min_units": 20}, obs).outcome == "pass"
    both = run_one({"type": "min_traffic", "min_units": 20, "arm": "both"}, obs)
    assert both.outcome == "no_data" and both.evidence["value"] == 10


def test_sample_units_compares_both_arms_only_while_comparative_checks_run() -> None:
    obs = Observations(now=1.0, step_units={"treatment": 30, "control": 10}, percent_bp=1000)
    absolute = policy({"type": "metric_threshold", "metric": "m", "max": 1})
    comparative = policy({"type": "srm"}, percent=10)
    assert sample_units(absolute, obs) == 30 and sample_units(comparative, obs) == 10
    above = Observations(now=1.0, step_units={"treatment": 30}, percent_bp=6000)
    assert sample_units(comparative, above) == 30


# -- webhook ---------------------------------------------------------------------------------

class Receiver(BaseHTTPRequestHandler):
    """Answers POST /<status> with that status (and /slow after a second); records requests."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "body": body,  # type: ignore[attr-defined]
                                 "token": self.headers.get("X-Token")})
        if self.path == "/slow":
            time.sleep(1.0)
        status = 200 if self.path == "/slow" else int(self.path.strip("/"))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: ThreadingHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.mark.parametrize("path, outcome", [("/200", "pass"), ("/204", "pass"), ("/500", "fail"),
                                           ("/404", "fail")])
def test_webhook_status_decides(receiver: ThreadingHTTPServer, path: str, outcome: str) -> None:
    obs = Observations(now=5.0, rollout={"id": 7, "flag": "checkout"}, step_units={"treatment": 3})
    check = {"id": "smoke", "type": "webhook", "url": _url(receiver, path),
             "headers": {"X-Token": "s3cret"}}
    result = run_one(check, obs)
    assert result.outcome == outcome and result.evidence["http_status"] == int(path[1:])
    [seen] = receiver.seen  # type: ignore[attr-defined]
    assert seen["token"] == "s3cret" and seen["body"]["rollout"] == {"id": 7, "flag": "checkout"}
    assert seen["body"]["check"]["id"] == "smoke" and "headers" not in seen["body"]["check"]["params"]
    assert seen["body"]["observations"]["step_units"] == {"treatment": 3}


def test_webhook_timeout_and_refused_connection_are_errors(receiver: ThreadingHTTPServer) -> None:
    slow = run_one({"type": "webhook", "url": _url(receiver, "/slow"), "timeout": 0.2},
                   Observations(now=1.0))
    assert slow.outcome == "error" and "no answer" in slow.message
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = run_one({"type": "webhook", "url": f"http://127.0.0.1:{port}/"},
                      Observations(now=1.0))
    assert refused.outcome == "error" and "http_status" not in refused.evidence


# -- run_checks isolation, results -----------------------------------------------------------

def _raise(check: Any, obs: Any) -> CheckResult:
    raise RuntimeError("prometheus is down")


def test_a_raising_or_lying_plugin_is_an_error_and_never_touches_the_others() -> None:
    table = {
        "boom": Guardrail("boom", dict, _raise),
        "liar": Guardrail("liar", dict, lambda check, obs: "looks fine to me"),
        "weird": Guardrail("weird", dict, lambda check, obs: CheckResult("x", "maybe")),
        "good": Guardrail("good", dict, lambda check, obs: CheckResult("other", "pass", "signal")),
    }
    p = policy_from_dict({"evaluation_interval": 1, "steps": [
        {"percent": 10, "min_duration": 1, "min_units": 0}], "checks": [
        {"type": "boom"}, {"type": "liar"}, {"type": "weird"}, {"type": "good"},
        {"type": "good", "id": "orphan"}]}, table)
    results = run_checks(p, Observations(now=1.0), {k: v for k, v in table.items()})
    by_id = {r.check_id: r for r in results}
    assert by_id["boom"].outcome == "error" and "RuntimeError: prometheus is down" in by_id["boom"].message
    assert by_id["liar"].outcome == "error" and by_id["weird"].outcome == "error"
    assert (by_id["good"].outcome, by_id["good"].severity) == ("pass", "blocking")
    missing = run_checks(p, Observations(now=1.0), {"good": table["good"]})
    assert {r.check_id: r.outcome for r in missing}["boom"] == "error"
    assert "no plugin provides" in missing[0].message
    state = RolloutState(status="running", percent_bp=1000, step_started_at=0.0,
                         consecutive_ok=5)
    decision = decide(p, state, results, 10.0, units=0)
    assert decision.action == "hold" and decision.state.fail_counts == {}


def test_comparative_checks_do_not_run_above_half() -> None:
    p = policy_from_dict({"evaluation_interval": 1, "steps": [
        {"percent": 50, "min_duration": 1, "min_units": 0},
        {"percent": 75, "min_duration": 1, "min_units": 0}], "checks": [
        {"type": "srm"}, {"type": "min_traffic", "min_units": 1}]}, TABLE)
    at_half = run_checks(p, Observations(now=1.0, percent_bp=5000), TABLE)
    above = run_checks(p, Observations(now=1.0, percent_bp=7500), TABLE)
    assert [r.check_id for r in at_half] == ["srm", "min_traffic"]
    assert [r.check_id for r in above] == ["min_traffic"]


def test_results_and_observations_are_plain_and_read_only() -> None:
    result = CheckResult("c", "fail", "health", "bad", evidence(ci=(1.0, math.inf), value=None,
                                                                 n_control=3))
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["evidence"] == {"ci": [1.0, None], "n_control": 3}
    assert CheckResult.from_dict(doc) == CheckResult("c", "fail", "health", "bad",
                                                     {"ci": [1.0, None], "n_control": 3})
    obs = Observations(now=1.0, arms={"treatment": Arm(3, {"m": stats_of([1, 2, 3])})})
    with pytest.raises(TypeError):
        obs.arms["control"] = Arm()  # type: ignore[index]
    with pytest.raises(TypeError):
        obs.arm("treatment").metrics["m"] = stats_of([1])  # type: ignore[index]
    assert obs.arm("control") == Arm() and json.dumps(obs.summary())


def test_unknown_check_type_is_rejected_when_the_policy_is_saved() -> None:
    with pytest.raises(ValidationError) as info:
        policy({"id": "q", "type": "prometheus_query", "query": "up"})
    assert info.value.field == "checks.0.type" and "metric_regression" in info.value.message


# -- hooks and plugin wiring -----------------------------------------------------------------

def test_hook_register_guardrails() -> None:
    """The built-ins register through the hook; duplicate names fail at start."""
    pm = make_plugin_manager(entry_points=False)
    assert "flagship.plugins.default_guardrails" in {row["name"] for row in describe_plugins(pm)}
    assert set(guardrail_table(pm)) == {"metric_regression", "metric_threshold", "srm",
                                        "min_traffic", "webhook"}
    assert guardrail_table(pm)["srm"].comparative and not guardrail_table(pm)["webhook"].comparative
    again = types.ModuleType("again")
    again.register_guardrails = hookimpl(lambda: [TABLE["srm"]])  # type: ignore[attr-defined]
    pm.register(again, name="again")
    with pytest.raises(ConfigError, match="'srm'"):
        guardrail_table(pm)
    with pytest.raises(ConfigError):
        build_guardrail_table([[TABLE["webhook"]], [TABLE["webhook"]]])


def test_hook_notify() -> None:
    """Notifiers are called one by one and isolated."""
    pm = make_plugin_manager(entry_points=False)
    got: list[tuple[str, dict[str, Any]]] = []

    def plugin(name: str, fails: bool) -> types.ModuleType:
        module = types.ModuleType(name)

        def notify(event: dict[str, Any]) -> None:
            if fails:
                raise ConnectionError("chat is down")
            got.append((name, event))
        module.notify = hookimpl(notify)  # type: ignore[attr-defined]
        return module

    for name, fails in (("first", False), ("broken", True), ("last", False)):
        pm.register(plugin(name, fails), name=name)
    event = {"id": "t-1", "type": "rollout.holding", "at": "2024-01-01T00:00:00Z", "payload": {}}
    assert call_notifiers(pm, event) == {"broken": "ConnectionError: chat is down"}
    assert sorted(name for name, _ in got) == ["first", "last"] and got[0][1] is event
    got.clear()
    assert call_notifiers(pm, event, only=["last"]) == {} and [n for n, _ in got] == ["last"]


@pytest.mark.parametrize("name", ["register_guardrails", "notify"])
def test_new_hookspecs_are_documented(name: str) -> None:
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec) or ""
    assert hasattr(spec, "flagship_spec") and "Fires:" in doc and "Returns:" in doc
    assert len(doc) > 600
