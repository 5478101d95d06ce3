"""Sample size, power and MDE against statsmodels' power classes (rel 1e-6)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower, zt_ind_solve_power
from statsmodels.stats.proportion import proportion_effectsize

from flagship.errors import ValidationError
from flagship.experiments.stats import (
    minimum_detectable_effect, power, proportion_effect_size, sample_size,
)

REL = 1e-6
CASES = range(36)
REFERENCE = {"z": NormalIndPower, "t": TTestIndPower}


def _design(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    alt = str(rng.choice(["two-sided", "larger", "smaller"]))
    d = rng.uniform(0.05, 0.8) * (-1 if alt == "smaller" else 1)
    return dict(d=float(d), alpha=float(rng.choice([0.01, 0.05, 0.1])),
                power=float(rng.uniform(0.6, 0.95)), ratio=float(rng.choice([0.5, 1, 1.5, 3])),
                k=int(rng.integers(1, 4)), alternative=alt, n=float(rng.uniform(20, 3000)))


def _tight(test: str):
    """statsmodels' solver with a tight tolerance: its default xtol=1e-5 is absolute."""
    solver = REFERENCE[test]()
    solver.start_bqexp["effect_size"] = {"xtol": 1e-14}
    return solver


@pytest.mark.parametrize("test", ["z", "t"])
@pytest.mark.parametrize("seed", CASES)
def test_sample_size_matches_statsmodels(seed: int, test: str) -> None:
    c = _design(seed)
    got = sample_size(c["d"], alpha=c["alpha"], power=c["power"], ratio=c["ratio"], k=c["k"],
                      alternative=c["alternative"], test=test)
    ref = REFERENCE[test]().solve_power(effect_size=c["d"], nobs1=None, alpha=c["alpha"] / c["k"],
                                        power=c["power"], ratio=c["ratio"],
                                        alternative=c["alternative"])
    assert got.n_control == pytest.approx(ref, rel=REL)
    assert got.n_treatment == pytest.approx(ref * c["ratio"], rel=REL)
    assert got.n_control_ceil == math.ceil(got.n_control - 1e-9)
    assert got.total == pytest.approx(ref * (1 + c["k"] * c["ratio"]), rel=REL)
    assert got.total_ceil == got.n_control_ceil + c["k"] * got.n_treatment_ceil
    assert got.alpha_per_comparison == pytest.approx(c["alpha"] / c["k"])


@pytest.mark.parametrize("seed", CASES)
def test_z_sample_size_matches_zt_ind_solve_power(seed: int) -> None:
    c = _design(seed)
    ref = zt_ind_solve_power(effect_size=c["d"], nobs1=None, alpha=c["alpha"], power=c["power"],
                             ratio=c["ratio"], alternative=c["alternative"])
    got = sample_size(c["d"], alpha=c["alpha"], power=c["power"], ratio=c["ratio"],
                      alternative=c["alternative"])
    assert got.n_control == pytest.approx(ref, rel=REL)


@pytest.mark.parametrize("test", ["z", "t"])
@pytest.mark.parametrize("seed", CASES)
def test_power_matches_statsmodels(seed: int, test: str) -> None:
    c = _design(seed)
    # Any sign of effect is fair game here, including the wrong one for a one-sided test.
    d = c["d"] * (-1 if seed % 5 == 0 else 1)
    got = power(d, n_control=c["n"], alpha=c["alpha"], ratio=c["ratio"], k=c["k"],
                alternative=c["alternative"], test=test)
    ref = REFERENCE[test]().power(effect_size=d, nobs1=c["n"], alpha=c["alpha"] / c["k"],
                                  ratio=c["ratio"], alternative=c["alternative"])
    if math.isnan(ref):
        # statsmodels' scipy.special.nctdtr gives NaN far in a tail; scipy.stats.nct does not.
        ref = _nct_power(d, c["n"], c["alpha"] / c["k"], c["ratio"], c["alternative"])
    if math.isnan(ref):
        # So far out that scipy's nct gives up too; the answer is 0 or 1 to double precision.
        ref = NormalIndPower().power(effect_size=d, nobs1=c["n"], alpha=c["alpha"] / c["k"],
                                     ratio=c["ratio"], alternative=c["alternative"])
        assert got == pytest.approx(ref, abs=1e-12)
    else:
        assert got == pytest.approx(ref, rel=REL, abs=1e-300)


def _nct_power(d: float, n1: float, alpha: float, ratio: float, alternative: str) -> float:
    df = n1 * (1 + ratio) - 2
    nc = d * math.sqrt(n1 * ratio / (1 + ratio))
    a = alpha / 2 if alternative == "two-sided" else alpha
    upper = stats.nct.sf(stats.t.isf(a, df), df, nc)
    lower = stats.nct.cdf(stats.t.ppf(a, df), df, nc)
    return {"larger": upper, "smaller": lower, "two-sided": upper + lower}[alternative]


@pytest.mark.parametrize("test", ["z", "t"])
@pytest.mark.parametrize("seed", CASES)
def test_mde_matches_statsmodels(seed: int, test: str) -> None:
    c = _design(seed)
    got = minimum_detectable_effect(c["n"], alpha=c["alpha"], power=c["power"],
                                    ratio=c["ratio"], k=c["k"], alternative=c["alternative"],
                                    test=test, std=2.0)
    # statsmodels' t solver wanders into nctdtr's NaN region for 'smaller' and returns a
    # positive non-root; by the symmetry of the noncentral t that MDE is minus 'larger''s.
    flip = test == "t" and c["alternative"] == "smaller"
    ref = float(np.squeeze(_tight(test).solve_power(
        effect_size=None, nobs1=c["n"], alpha=c["alpha"] / c["k"], power=c["power"],
        ratio=c["ratio"], alternative="larger" if flip else c["alternative"])))
    if flip:
        ref = -ref
    if c["alternative"] == "two-sided":
        ref = abs(ref)  # two roots, +-d; statsmodels may land on either
    achieved = REFERENCE[test]().power(effect_size=got.effect_size, nobs1=c["n"],
                                       alpha=c["alpha"] / c["k"], ratio=c["ratio"],
                                       alternative=c["alternative"])
    assert achieved == pytest.approx(c["power"], rel=REL)
    assert got.effect_size == pytest.approx(ref, rel=REL)
    assert got.absolute == pytest.approx(2.0 * ref, rel=REL)
    # Round trip: the MDE is exactly the effect that has the requested power.
    back = power(got.effect_size, n_control=c["n"], alpha=c["alpha"], ratio=c["ratio"],
                 k=c["k"], alternative=c["alternative"], test=test)
    assert back == pytest.approx(c["power"], rel=1e-9)


def _rates(seed: int) -> tuple[float, float, str]:
    rng = np.random.default_rng(500 + seed)
    baseline = float(rng.uniform(0.01, 0.6))
    alt = str(rng.choice(["two-sided", "larger", "smaller"]))
    rel = float(rng.uniform(0.02, 0.3)) * (-1 if alt == "smaller" else 1)
    return baseline, rel, alt


@pytest.mark.parametrize("seed", CASES)
def test_proportion_sample_size_matches_cohens_h(seed: int) -> None:
    baseline, rel, alt = _rates(seed)
    target = baseline * (1 + rel)
    h = proportion_effectsize(target, baseline)
    ref = NormalIndPower().solve_power(effect_size=h, nobs1=None, alpha=0.05, power=0.8,
                                       ratio=1.0, alternative=alt)
    assert proportion_effect_size(baseline, target) == pytest.approx(h, rel=REL)
    by_target = sample_size(baseline=baseline, target=target, alternative=alt)
    by_rel = sample_size(baseline=baseline, mde_rel=rel, alternative=alt)
    by_abs = sample_size(baseline=baseline, mde_abs=target - baseline, alternative=alt)
    for got in (by_target, by_rel, by_abs):
        assert got.n_control == pytest.approx(ref, rel=REL)
        assert got.effect_size == pytest.approx(h, rel=REL)
    assert power(n_control=ref, baseline=baseline, target=target,
                 alternative=alt) == pytest.approx(0.8, rel=REL)


@pytest.mark.parametrize("seed", CASES)
def test_proportion_mde_inverts_cohens_h(seed: int) -> None:
    baseline, _, alt = _rates(seed)
    n = float(np.random.default_rng(seed).uniform(500, 50_000))
    got = minimum_detectable_effect(n, baseline=baseline, alternative=alt)
    h = float(np.squeeze(_tight("z").solve_power(effect_size=None, nobs1=n, alpha=0.05,
                                                 power=0.8, ratio=1.0, alternative=alt)))
    h = abs(h) if alt == "two-sided" else h
    assert got.effect_size == pytest.approx(h, rel=REL)
    assert proportion_effectsize(got.target, baseline) == pytest.approx(h, rel=REL)
    assert got.absolute == pytest.approx(got.target - baseline, rel=REL)
    assert got.relative == pytest.approx((got.target - baseline) / baseline, rel=REL)


def test_more_arms_and_unequal_allocation_need_more_units() -> None:
    one = sample_size(0.1)
    assert sample_size(0.1, k=3).n_control > one.n_control
    skewed = sample_size(0.1, ratio=0.25)
    assert skewed.total > one.total
    assert skewed.n_treatment == pytest.approx(skewed.n_control * 0.25)


@pytest.mark.parametrize("bad", [
    dict(effect_size=0.0), dict(effect_size=-0.2, alternative="larger"),
    dict(effect_size=0.2, ratio=0.0), dict(effect_size=0.2, k=0),
    dict(baseline=0.1), dict(baseline=0.1, target=0.2, mde_abs=0.1),
    dict(baseline=0.1, target=0.12, test="t"), dict(effect_size=0.2, baseline=0.1, target=0.2),
    dict(baseline=0.9, mde_abs=0.2), dict(effect_size=0.2, power=0.01, alpha=0.05),
])
def test_rejects_impossible_designs(bad: dict) -> None:
    with pytest.raises(ValidationError):
        sample_size(**bad)
