"""A/A experiments through the real pipeline: the false-positive rates stay at their levels."""
from __future__ import annotations

import json

from click.testing import CliRunner
from scipy import stats

from flagship.cli import main
from flagship.db import upgrade
from flagship.experiments.aa import LiveSettings, run_live
from flagship.runtime import make_runtime


def test_live_aa_false_positive_rates_are_within_binomial_bounds(tmp_path):
    url = f"sqlite:///{tmp_path / 'aa.db'}"
    upgrade(url)
    runtime = make_runtime({"DATABASE_URL": url, "AUTH": False, "ENTRY_POINTS": False})
    try:
        fixed, valid = run_live(runtime, LiveSettings(experiments=200, n=100, hours=8, seed=3))
    finally:
        runtime.close()
    assert fixed.simulations == valid.simulations >= 195  # every experiment gave an answer
    # 200 experiments at alpha 0.05: the fixed test rejects about 10 times; 1-in-1000 bounds
    low, high = stats.binom.ppf([0.001, 0.999], fixed.simulations, 0.05)
    assert low <= fixed.rejections <= high, fixed
    # the always-valid test never rejects more often than alpha, whatever the looks
    assert valid.rejections <= high, valid


def test_the_command_runs_the_live_pipeline():
    done = CliRunner().invoke(main, ["aa-test", "--live", "--simulations", "3", "--n", "30",
                                     "--looks", "4", "--json"])
    assert done.exit_code == 0, done.output
    body = json.loads(done.output)
    assert body["settings"]["live"] and [m["method"] for m in body["methods"]] == [
        "fixed_horizon", "always_valid"]
    assert all(m["simulations"] == 3 for m in body["methods"])
