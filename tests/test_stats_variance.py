"""Sufficient statistics, CUPED, winsorization and delta-method ratio metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flagship.errors import ValidationError
from flagship.experiments.stats import (
    SufficientStats, cuped_adjust, ratio_metric_stats, ratio_test, winsorize,
)

REL = 1e-6
CASES = range(36)


@pytest.mark.parametrize("seed", CASES)
def test_sufficient_stats_match_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.gamma(2.0, 10.0 ** rng.uniform(-1, 2), int(rng.integers(2, 3000)))
    x = y * rng.uniform(0.2, 1.0) + rng.normal(0, 1, y.size)
    s = SufficientStats.from_values(y, x)
    assert s.n == y.size
    assert s.mean == pytest.approx(np.mean(y), rel=REL)
    assert s.variance == pytest.approx(np.var(y, ddof=1), rel=REL)
    assert s.pre_mean == pytest.approx(np.mean(x), rel=REL)
    assert s.pre_variance == pytest.approx(np.var(x, ddof=1), rel=REL)
    assert s.covariance == pytest.approx(np.cov(y, x)[0, 1], rel=REL)
    assert not SufficientStats.from_values(y).has_pre


def test_sufficient_stats_validation() -> None:
    with pytest.raises(ValidationError):
        SufficientStats(n=-1, sum=0.0, sum_sq=0.0)
    with pytest.raises(ValidationError):
        SufficientStats(n=3, sum=1.0, sum_sq=1.0, pre_sum=1.0)
    with pytest.raises(ValidationError):
        _ = SufficientStats(n=1, sum=1.0, sum_sq=1.0).variance
    assert SufficientStats.from_values([3.0, 3.0, 3.0]).variance == 0.0


def _experiment(seed: int, rho: float | None = None):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(2, 5))
    rho = rng.uniform(0.0, 0.95) if rho is None else rho
    arms = []
    for i in range(k):
        n = int(rng.integers(50, 2000))
        x = rng.normal(10, 3, n)
        noise = rng.normal(0, 3, n)
        y = 2 + 0.1 * i + rho * (x - 10) + math.sqrt(1 - rho ** 2) * noise
        arms.append((y, x))
    return arms


@pytest.mark.parametrize("seed", CASES)
def test_cuped_theta_is_the_pooled_ols_slope(seed: int) -> None:
    arms = _experiment(seed)
    got = cuped_adjust([SufficientStats.from_values(y, x) for y, x in arms])
    y_all = np.concatenate([y for y, _ in arms])
    x_all = np.concatenate([x for _, x in arms])
    slope = np.polyfit(x_all, y_all, 1)[0]
    assert got.theta == pytest.approx(slope, rel=REL)
    assert got.pre_mean == pytest.approx(x_all.mean(), rel=REL)
    for (y, x), arm in zip(arms, got.variants):
        adjusted = y - slope * (x - x_all.mean())
        assert arm.mean == pytest.approx(adjusted.mean(), rel=REL)
        assert arm.variance == pytest.approx(np.var(adjusted, ddof=1), rel=REL)
        assert arm.unadjusted_variance == pytest.approx(np.var(y, ddof=1), rel=REL)
        assert arm.variance_reduction == pytest.approx(
            1 - np.var(adjusted, ddof=1) / np.var(y, ddof=1), rel=REL, abs=1e-12)


def test_cuped_reduces_variance_on_correlated_data() -> None:
    arms = _experiment(0, rho=0.8)
    got = cuped_adjust([SufficientStats.from_values(y, x) for y, x in arms])
    # With correlation rho the expected reduction is rho**2 = 0.64.
    for arm in got.variants:
        assert arm.variance_reduction == pytest.approx(0.64, abs=0.08)
    # Uncorrelated pre-period data change almost nothing.
    flat = cuped_adjust([SufficientStats.from_values(y, x) for y, x in _experiment(1, rho=0.0)])
    assert all(abs(a.variance_reduction) < 0.02 for a in flat.variants)


def test_cuped_needs_pre_exposure_data_and_tolerates_a_constant_pre_period() -> None:
    with pytest.raises(ValidationError):
        cuped_adjust([SufficientStats.from_values([1.0, 2.0])])
    const = cuped_adjust([SufficientStats.from_values([1.0, 2.0, 4.0], [5.0, 5.0, 5.0])] * 2)
    assert const.theta == 0.0 and const.variants[0].variance_reduction == 0.0


@pytest.mark.parametrize("seed", CASES)
def test_winsorize_caps_at_the_interpolated_percentile(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    values = rng.pareto(1.5, int(rng.integers(1, 2000)))
    pct = float(rng.choice([50.0, 90.0, 95.0, 99.0, 99.9, 100.0]))
    cap = stats.scoreatpercentile(values, pct)  # scipy's linear interpolation
    got = winsorize(values.tolist(), pct)
    np.testing.assert_allclose(got, np.minimum(values, cap), rtol=REL)
    assert got.max() == pytest.approx(min(cap, values.max()), rel=REL)


def _ratio_units(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(300 + seed)
    n = int(rng.integers(20, 5000))
    sessions = rng.poisson(rng.uniform(1, 8), n) + 1
    clicks = rng.binomial(sessions, rng.uniform(0.05, 0.6))
    return clicks.astype(float), sessions.astype(float)


def _stats(num: np.ndarray, den: np.ndarray):
    return ratio_metric_stats(num.size, num.sum(), den.sum(), num @ num, den @ den, num @ den)


@pytest.mark.parametrize("seed", CASES)
def test_ratio_variance_is_the_delta_method(seed: int) -> None:
    num, den = _ratio_units(seed)
    got = _stats(num, den)
    # Gradient of mean_num / mean_den times the covariance of the two means.
    mu_n, mu_d = num.mean(), den.mean()
    grad = np.array([1 / mu_d, -mu_n / mu_d ** 2])
    expected = grad @ (np.cov(num, den) / num.size) @ grad
    assert got.ratio == pytest.approx(num.sum() / den.sum(), rel=REL)
    assert got.variance == pytest.approx(expected, rel=REL)
    assert got.se == pytest.approx(math.sqrt(expected), rel=REL)


def test_ratio_variance_is_calibrated() -> None:
    rng = np.random.default_rng(9)
    sessions = rng.poisson(3, (4000, 400)) + 1
    clicks = rng.binomial(sessions, 0.2).astype(float)
    ratios = clicks.sum(1) / sessions.sum(1)
    deltas = [_stats(c, s.astype(float)).variance for c, s in zip(clicks[:400], sessions[:400])]
    assert np.mean(deltas) == pytest.approx(np.var(ratios, ddof=1), rel=0.08)


@pytest.mark.parametrize("seed", CASES)
def test_ratio_test_is_a_z_test_on_the_ratios(seed: int) -> None:
    a, b = _stats(*_ratio_units(seed)), _stats(*_ratio_units(1000 + seed))
    got = ratio_test(a, b, alpha=0.1)
    se = math.sqrt(a.variance + b.variance)
    z = (b.ratio - a.ratio) / se
    assert got.statistic == pytest.approx(z, rel=REL)
    assert got.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=REL)
    q = stats.norm.isf(0.05)
    assert got.ci == pytest.approx((b.ratio - a.ratio - q * se, b.ratio - a.ratio + q * se),
                                   rel=REL)
    rel_se = math.sqrt(b.variance + (b.ratio / a.ratio) ** 2 * a.variance) / a.ratio
    assert got.relative_ci == pytest.approx((b.ratio / a.ratio - 1 - q * rel_se,
                                             b.ratio / a.ratio - 1 + q * rel_se), rel=REL)


def test_ratio_rejects_a_zero_denominator() -> None:
    with pytest.raises(ValidationError):
        ratio_metric_stats(10, 5.0, 0.0, 5.0, 0.0, 0.0)
