"""Welch's t, the two-proportion z-test and Mann-Whitney against scipy and statsmodels."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from flagship.errors import ValidationError
from flagship.experiments.stats import mann_whitney_test, proportions_z_test, welch_t_test

REL = 1e-6
CASES = range(36)
SCIPY_ALT = {"two-sided": "two-sided", "larger": "greater", "smaller": "less"}


def _alternative(rng: np.random.Generator) -> str:
    return str(rng.choice(["two-sided", "larger", "smaller"]))


def _samples(seed: int) -> tuple[np.ndarray, np.ndarray, float, str]:
    rng = np.random.default_rng(seed)
    n_a, n_b = rng.integers(2, 400, size=2)
    scale = 10.0 ** rng.uniform(-2, 3)
    a = rng.normal(rng.uniform(-1, 3) * scale, rng.uniform(0.2, 3) * scale, n_a)
    b = rng.lognormal(0, rng.uniform(0.1, 1.0), n_b) * scale + rng.normal(0, scale)
    return a, b, float(rng.choice([0.01, 0.05, 0.1, 0.2])), _alternative(rng)


@pytest.mark.parametrize("seed", CASES)
def test_welch_matches_scipy_ttest_ind(seed: int) -> None:
    a, b, alpha, alt = _samples(seed)
    ref = stats.ttest_ind(b, a, equal_var=False, alternative=SCIPY_ALT[alt])
    got = welch_t_test(a.size, a.mean(), a.var(ddof=1), b.size, b.mean(), b.var(ddof=1),
                       alpha=alpha, alternative=alt)
    ci = ref.confidence_interval(confidence_level=1 - alpha)
    assert got.statistic == pytest.approx(ref.statistic, rel=REL)
    assert got.p_value == pytest.approx(ref.pvalue, rel=REL)
    assert got.df == pytest.approx(ref.df, rel=REL)
    assert got.ci == pytest.approx((ci.low, ci.high), rel=REL)
    assert got.difference == pytest.approx(b.mean() - a.mean(), rel=REL)


@pytest.mark.parametrize("seed", CASES)
def test_welch_matches_scipy_from_stats(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    n_a, n_b = (int(x) for x in rng.integers(2, 100_000, size=2))
    m_a, m_b = rng.normal(5, 2, size=2)
    v_a, v_b = rng.uniform(0.01, 50, size=2)
    ref = stats.ttest_ind_from_stats(m_a, math.sqrt(v_a), n_a, m_b, math.sqrt(v_b), n_b,
                                     equal_var=False)
    got = welch_t_test(n_a, m_a, v_a, n_b, m_b, v_b)
    # scipy's statistic is for its first sample minus its second, i.e. a - b here.
    assert got.statistic == pytest.approx(-ref.statistic, rel=REL)
    assert got.p_value == pytest.approx(ref.pvalue, rel=REL)
    # statistic is for b - a: swapping the arms flips its sign and keeps the p-value.
    swapped = welch_t_test(n_b, m_b, v_b, n_a, m_a, v_a)
    assert swapped.statistic == pytest.approx(-got.statistic, rel=REL)
    assert swapped.p_value == pytest.approx(got.p_value, rel=REL)


def _delta_relative_se(m_a: float, se_a: float, m_b: float, se_b: float) -> float:
    """Delta method with a numerically differentiated gradient of (b - a) / |a|."""
    h_a, h_b = 1e-6 * abs(m_a), 1e-6 * max(abs(m_b), 1e-12)
    g = lambda a, b: (b - a) / abs(a)  # noqa: E731
    da = (g(m_a + h_a, m_b) - g(m_a - h_a, m_b)) / (2 * h_a)
    db = (g(m_a, m_b + h_b) - g(m_a, m_b - h_b)) / (2 * h_b)
    return math.sqrt(da ** 2 * se_a ** 2 + db ** 2 * se_b ** 2)


@pytest.mark.parametrize("seed", CASES)
def test_welch_relative_lift_is_the_delta_method(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    n_a, n_b = (int(x) for x in rng.integers(50, 5000, size=2))
    m_a = rng.uniform(1, 20) * rng.choice([-1, 1])
    m_b = m_a * rng.uniform(0.7, 1.4)
    v_a, v_b = rng.uniform(1, 30, size=2)
    got = welch_t_test(n_a, m_a, v_a, n_b, m_b, v_b, alpha=0.05)
    assert got.relative_estimable and got.relative_reason is None
    assert got.relative_lift == pytest.approx((m_b - m_a) / abs(m_a), rel=REL)
    assert (got.relative_lift > 0) == (m_b > m_a)  # the sign of the difference, whatever a's
    se = _delta_relative_se(m_a, math.sqrt(v_a / n_a), m_b, math.sqrt(v_b / n_b))
    z = stats.norm.isf(0.025)
    assert got.relative_ci == pytest.approx((got.relative_lift - z * se,
                                             got.relative_lift + z * se), rel=1e-5)


def test_relative_ci_is_not_estimable_when_control_ci_covers_zero() -> None:
    got = welch_t_test(30, 0.1, 4.0, 30, 0.5, 4.0)
    assert got.relative_lift == pytest.approx(4.0)
    assert got.relative_ci is None and not got.relative_estimable
    assert "not estimable" in got.relative_reason
    zero = welch_t_test(30, 0.0, 4.0, 30, 0.5, 4.0)
    assert zero.relative_lift is None and zero.relative_ci is None


@pytest.mark.parametrize("bad", [dict(n_a=1), dict(var_b=-1.0), dict(mean_a=math.nan),
                                 dict(var_a=0.0, var_b=0.0), dict(alpha=1.5),
                                 dict(alternative="bigger")])
def test_welch_rejects_bad_input(bad: dict) -> None:
    args = dict(n_a=10, mean_a=1.0, var_a=1.0, n_b=10, mean_b=1.2, var_b=1.0)
    with pytest.raises(ValidationError):
        welch_t_test(**{**args, **bad})


def _conversions(seed: int) -> tuple[int, int, int, int, float, str]:
    rng = np.random.default_rng(3000 + seed)
    n_a, n_b = (int(x) for x in rng.integers(30, 50_000, size=2))
    p = rng.uniform(0.01, 0.6)
    s_a = int(rng.binomial(n_a, p))
    s_b = int(rng.binomial(n_b, p * rng.uniform(0.8, 1.25)))
    return s_a, n_a, s_b, n_b, float(rng.choice([0.01, 0.05, 0.1])), _alternative(rng)


@pytest.mark.parametrize("seed", CASES)
def test_proportions_match_statsmodels(seed: int) -> None:
    s_a, n_a, s_b, n_b, alpha, alt = _conversions(seed)
    z, p = proportions_ztest([s_b, s_a], [n_b, n_a], alternative=alt)
    got = proportions_z_test(s_a, n_a, s_b, n_b, alpha=alpha, alternative=alt)
    assert got.statistic == pytest.approx(z, rel=REL)
    assert got.p_value == pytest.approx(p, rel=REL)
    # One-sided intervals at alpha are the matching end of the two-sided one at 2 alpha.
    level = alpha if alt == "two-sided" else 2 * alpha
    lo, hi = confint_proportions_2indep(s_b, n_b, s_a, n_a, method="wald", compare="diff",
                                        alpha=level)
    expected = {"two-sided": (lo, hi), "larger": (lo, math.inf), "smaller": (-math.inf, hi)}
    assert got.ci == pytest.approx(expected[alt], rel=REL)
    assert got.difference == pytest.approx(s_b / n_b - s_a / n_a, rel=REL, abs=1e-15)


@pytest.mark.parametrize("seed", CASES)
def test_proportions_relative_lift_is_the_delta_method(seed: int) -> None:
    s_a, n_a, s_b, n_b, alpha, _ = _conversions(seed)
    got = proportions_z_test(s_a, n_a, s_b, n_b, alpha=alpha)
    p_a, p_b = s_a / n_a, s_b / n_b
    se_a, se_b = math.sqrt(p_a * (1 - p_a) / n_a), math.sqrt(p_b * (1 - p_b) / n_b)
    assert got.relative_lift == pytest.approx(p_b / p_a - 1, rel=REL)
    if p_a <= stats.norm.isf(alpha / 2) * se_a:
        assert got.relative_ci is None
        return
    se = _delta_relative_se(p_a, se_a, p_b, se_b)
    z = stats.norm.isf(alpha / 2)
    assert got.relative_ci == pytest.approx((got.relative_lift - z * se,
                                             got.relative_lift + z * se), rel=1e-5)


def test_proportions_degenerate_rates_carry_no_evidence() -> None:
    got = proportions_z_test(0, 100, 0, 120)
    assert (got.statistic, got.p_value) == (0.0, 1.0)
    assert got.relative_lift is None and not got.relative_estimable
    with pytest.raises(ValidationError):
        proportions_z_test(101, 100, 3, 100)


@pytest.mark.parametrize("seed", CASES)
def test_mann_whitney_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(4000 + seed)
    n_a, n_b = (int(x) for x in rng.integers(3, 120, size=2))
    a = rng.exponential(1.0, n_a)
    b = rng.exponential(rng.uniform(0.7, 1.5), n_b)
    if seed % 3 == 0:  # ties, the case the asymptotic correction is for
        a, b = np.round(a, 1), np.round(b, 1)
    alt = _alternative(rng)
    ref = stats.mannwhitneyu(b, a, alternative=SCIPY_ALT[alt])
    got = mann_whitney_test(a, b, alternative=alt)
    assert got.statistic == pytest.approx(ref.statistic, rel=REL)
    assert got.p_value == pytest.approx(ref.pvalue, rel=REL)
    # Rank-biserial correlation = P(b > a) - P(b < a) over all pairs.
    sign = np.sign(b[None, :] - a[:, None])
    assert got.rank_biserial == pytest.approx(sign.mean(), rel=REL, abs=1e-12)
    assert (got.n_a, got.n_b) == (n_a, n_b)
