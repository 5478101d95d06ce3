"""A/A simulation: false-positive rates per method, vectorised rules against the engine, CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from flagship.cli import main
from flagship.cli.stats import aa_test
from flagship.errors import ValidationError
from flagship.experiments.stats import (
    always_valid_series, default_tau2, group_sequential_boundaries, group_sequential_decision,
    proportions_z_test, simulate_aa, welch_t_test,
)
from flagship.experiments.stats.simulate import (
    look_sizes, look_tests, rejections, simulate_looks,
)

ALPHA = 0.05
# At 4,000 simulations the Monte-Carlo standard error of a 5 % rate is 0.0034, so a method of
# exact level 0.05 (fixed horizon, O'Brien-Fleming) lands above 0.052 about a quarter of the
# time. 200,000 simulations (about a second) put 0.052 four standard errors away.
SIMS = 200_000


def _rates(results) -> dict[str, float]:
    return {r.method: r.false_positive_rate for r in results}


@pytest.mark.parametrize("metric, baseline, seed", [("conversion", 0.1, 1), ("mean", 3.0, 2)])
def test_false_positive_rate_of_each_method(metric: str, baseline: float, seed: int) -> None:
    results = simulate_aa(SIMS, 20, 2000, ALPHA, metric, baseline,  # type: ignore[arg-type]
                          seed=seed)
    rate = _rates(results)
    assert abs(rate["fixed_horizon"] - ALPHA) < 0.01
    assert 0.15 < rate["naive_peeking"] < 0.35  # about 0.25 with 20 looks
    assert 0.005 < rate["always_valid"] <= 0.052  # conservative, but not a test that never fires
    assert 0.045 <= rate["obrien_fleming"] <= 0.052  # spends (almost) all of alpha, no more
    within = {r.method: r.within_alpha for r in results}
    assert within == {"fixed_horizon": True, "naive_peeking": False, "always_valid": True,
                      "obrien_fleming": True}
    for r in results:
        assert r.simulations == SIMS and r.rejections == round(r.false_positive_rate * SIMS)
        p = r.false_positive_rate
        assert r.standard_error == pytest.approx(math.sqrt(p * (1 - p) / SIMS))


def test_the_briefs_size_is_deterministic_and_fast_enough() -> None:
    first = simulate_aa(4000, 20, 2000, ALPHA, "conversion", 0.1, seed=1)
    assert first == simulate_aa(4000, 20, 2000, ALPHA, "conversion", 0.1, seed=1)
    assert first != simulate_aa(4000, 20, 2000, ALPHA, "conversion", 0.1, seed=2)
    rate = _rates(first)
    assert abs(rate["fixed_horizon"] - ALPHA) < 0.01
    assert rate["naive_peeking"] > 0.15 and rate["always_valid"] <= 0.052


@pytest.mark.parametrize("metric", ["conversion", "mean"])
def test_vectorised_look_tests_are_the_engines(metric: str) -> None:
    rng = np.random.default_rng(5)
    data = simulate_looks(40, 6, 300, metric, 0.2, 1.5, rng)  # type: ignore[arg-type]
    tests = look_tests(data, metric)  # type: ignore[arg-type]
    assert list(data.n) == [50, 100, 150, 200, 250, 300]
    for i in range(0, 40, 7):
        for k in range(6):
            n = int(data.n[k])
            if metric == "conversion":
                ref = proportions_z_test(int(data.sum_a[i, k]), n, int(data.sum_b[i, k]), n)
                var = ref.se ** 2
            else:
                mean_a, mean_b = data.sum_a[i, k] / n, data.sum_b[i, k] / n
                ref = welch_t_test(n, mean_a, (data.sum_sq_a[i, k] - n * mean_a ** 2) / (n - 1),
                                   n, mean_b, (data.sum_sq_b[i, k] - n * mean_b ** 2) / (n - 1))
                var = ref.se ** 2
            assert tests.statistic[i, k] == pytest.approx(ref.statistic, rel=1e-9, abs=1e-12)
            assert tests.p_value[i, k] == pytest.approx(ref.p_value, rel=1e-7, abs=1e-12)
            assert tests.difference[i, k] == pytest.approx(ref.difference, rel=1e-9, abs=1e-15)
            assert tests.variance[i, k] == pytest.approx(var, rel=1e-9)


def test_each_methods_rule_is_the_engines_decision_look_by_look() -> None:
    """The vectorised rejection counts equal the scalar engine run one experiment at a time."""
    sims, looks, n, rate = 400, 8, 800, 0.3
    data = simulate_looks(sims, looks, n, "conversion", rate, 1.0, np.random.default_rng(9))
    tau2 = default_tau2(2 * rate * (1 - rate) / n, ALPHA)
    design = group_sequential_boundaries(look_sizes(n, looks) / n, ALPHA, "obrien_fleming")
    got = rejections(look_tests(data, "conversion"), ALPHA, tau2, np.asarray(design.efficacy))
    want = dict.fromkeys(got, 0)
    for i in range(sims):
        p_values, z_values, diffs, variances = [], [], [], []
        for k, size in enumerate(data.n):
            r = proportions_z_test(int(data.sum_a[i, k]), int(size), int(data.sum_b[i, k]),
                                   int(size))
            p_values.append(r.p_value)
            z_values.append(r.statistic)
            diffs.append(r.difference)
            variances.append(r.se ** 2)
        want["fixed_horizon"] += p_values[-1] < ALPHA
        want["naive_peeking"] += min(p_values) < ALPHA
        series = always_valid_series(diffs, variances, tau2, ALPHA)
        want["always_valid"] += series.first_rejection is not None
        decisions = [group_sequential_decision(z, k, design) for k, z in enumerate(z_values)]
        want["obrien_fleming"] += "efficacy" in decisions
    assert got == want
    assert want["naive_peeking"] > want["fixed_horizon"] > 0  # the sample exercises the rules


def test_simulated_data_have_the_stated_distribution() -> None:
    rng = np.random.default_rng(3)
    normal = simulate_looks(20_000, 4, 400, "mean", 3.0, 2.0, rng)
    last = normal.n[-1]
    mean = normal.sum_a[:, -1] / last
    var = (normal.sum_sq_a[:, -1] - last * mean ** 2) / (last - 1)
    assert mean.mean() == pytest.approx(3.0, abs=0.005)
    assert mean.std() == pytest.approx(0.1, rel=0.03)
    assert var.mean() == pytest.approx(4.0, rel=0.005)
    # Under H0 every look's Welch p-value is uniform (the chi-square batch summary is exact).
    p = look_tests(normal, "mean").p_value
    for k in range(4):
        assert scipy_stats.kstest(p[:, k], "uniform").pvalue > 1e-3
    rates = simulate_looks(20_000, 4, 400, "conversion", 0.25, 1.0, rng)
    share = rates.sum_b[:, -1] / last
    assert share.mean() == pytest.approx(0.25, abs=0.002)
    assert share.var() == pytest.approx(0.25 * 0.75 / last, rel=0.05)
    assert (np.diff(rates.sum_b, axis=1) >= 0).all()


def test_looks_without_any_variance_count_as_no_evidence() -> None:
    # At a rate of 0.1 % most early looks have no conversion in either arm.
    results = simulate_aa(3000, 20, 40, ALPHA, "conversion", 0.001, seed=4)
    assert all(0.0 <= r.false_positive_rate <= ALPHA for r in results)


@pytest.mark.parametrize("kwargs, field", [
    (dict(simulations=0), "simulations"), (dict(looks=0), "looks"), (dict(looks=101), "looks"),
    (dict(n=39, looks=20), "n"), (dict(alpha=1.0), "alpha"), (dict(metric="ratio"), "metric"),
    (dict(baseline=0.0), "baseline"), (dict(baseline=1.0), "baseline"),
    (dict(metric="mean", baseline=math.nan), "baseline"), (dict(metric="mean", std=0.0), "std"),
])
def test_rejects_bad_settings(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        simulate_aa(**{"simulations": 10, **kwargs})
    assert caught.value.field == field


def test_cli_prints_a_table_and_json() -> None:
    runner = CliRunner()
    args = ["--simulations", "4000", "--looks", "20", "--n", "2000", "--seed", "1"]
    table = runner.invoke(aa_test, args, catch_exceptions=False)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].startswith("A/A simulation: 4,000 experiments x 20 looks, 2,000 units")
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert "false-positive rate" in lines[header] and "within alpha + 2 SE" in lines[header]
    rows = lines[header + 1:]
    assert [row.split("  ")[0] for row in rows] == [
        "fixed horizon (one look)", "naive peeking (every look)", "always-valid mSPRT",
        "O'Brien-Fleming (Lan-DeMets)"]
    assert [row.split()[-1] for row in rows] == ["yes", "no", "yes", "yes"]

    done = runner.invoke(aa_test, args + ["--json"], catch_exceptions=False)
    doc = json.loads(done.output)
    assert doc["settings"] == {"simulations": 4000, "looks": 20, "n": 2000, "alpha": 0.05,
                               "metric": "conversion", "baseline": 0.1, "seed": 1, "live": False}
    rate = {m["method"]: m["false_positive_rate"] for m in doc["methods"]}
    assert rate == _rates(simulate_aa(4000, 20, 2000, seed=1))
    assert abs(rate["fixed_horizon"] - ALPHA) < 0.01 and rate["naive_peeking"] > 0.15
    assert rate["always_valid"] <= 0.052 and rate["obrien_fleming"] <= 0.052
    for method in doc["methods"]:
        assert f"{method['false_positive_rate']:.4f}" in table.output
        assert set(method) == {"method", "description", "rejections", "simulations",
                               "false_positive_rate", "standard_error", "alpha", "within_alpha"}


def test_cli_options_and_errors() -> None:
    runner = CliRunner()
    mean = runner.invoke(aa_test, ["--metric", "mean", "--baseline", "12", "--simulations",
                                   "500", "--looks", "5", "--json"])
    assert mean.exit_code == 0 and json.loads(mean.output)["settings"]["metric"] == "mean"
    for args, named in ((["--n", "10"], "--n"), (["--baseline", "1.5"], "--baseline"),
                        (["--looks", "101"], "--looks"), (["--alpha", "0"], "--alpha"),
                        (["--metric", "ratio"], "--metric")):
        bad = runner.invoke(aa_test, args)
        assert bad.exit_code == 2 and named in bad.output, (args, bad.output)


def test_the_command_plugs_into_the_flagship_group_without_importing_it() -> None:
    group = click.Group("flagship", commands={**main.commands, aa_test.name: aa_test})
    done = CliRunner().invoke(group, ["aa-test", "--simulations", "200", "--looks", "4", "--json"])
    assert done.exit_code == 0 and len(json.loads(done.output)["methods"]) == 4
    assert aa_test.name == "aa-test"
    probe = ("import sys, flagship.cli.stats\n"
             "print(sorted({'numpy', 'scipy', 'flask'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    assert loaded == "[]"
