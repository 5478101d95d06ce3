"""Chi-square, Fisher, the conversion test and SRM against scipy and statsmodels."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest

from flagship.errors import ValidationError
from flagship.experiments.stats import (
    chi_square_test, conversion_test, fisher_exact_test, srm_test,
)

REL = 1e-6
CASES = range(36)
SCIPY_ALT = {"two-sided": "two-sided", "larger": "greater", "smaller": "less"}


def _table(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = (2, 2) if seed % 2 == 0 else tuple(rng.integers(2, 5, size=2))
    return rng.integers(1, rng.choice([8, 60, 2000]), size=(rows, cols))


@pytest.mark.parametrize("correction", [True, False])
@pytest.mark.parametrize("seed", CASES)
def test_chi_square_matches_chi2_contingency(seed: int, correction: bool) -> None:
    table = _table(seed)
    ref = stats.chi2_contingency(table, correction=correction)
    got = chi_square_test(table.tolist(), correction=correction)
    assert got.statistic == pytest.approx(ref.statistic, rel=REL, abs=1e-12)
    assert got.p_value == pytest.approx(ref.pvalue, rel=REL)
    assert got.dof == ref.dof
    np.testing.assert_allclose(np.array(got.expected), ref.expected_freq, rtol=REL)


def test_chi_square_rejects_empty_margins() -> None:
    with pytest.raises(ValidationError):
        chi_square_test([[0, 0], [3, 4]])
    with pytest.raises(ValidationError):
        chi_square_test([1, 2, 3])


@pytest.mark.parametrize("seed", CASES)
def test_fisher_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    table = rng.integers(0, rng.choice([6, 30, 300]), size=(2, 2))
    alt = str(rng.choice(["two-sided", "larger", "smaller"]))
    ref = stats.fisher_exact(table, alternative=SCIPY_ALT[alt])
    got = fisher_exact_test(table, alternative=alt)
    assert got.p_value == pytest.approx(ref.pvalue, rel=REL)
    np.testing.assert_allclose(got.statistic, ref.statistic, rtol=REL)


def _counts(seed: int, scale: int) -> tuple[int, int, int, int]:
    rng = np.random.default_rng(200 + seed)
    n_a, n_b = (int(x) for x in rng.integers(scale, 10 * scale, size=2))
    p = rng.uniform(0.02, 0.3)
    return int(rng.binomial(n_a, p)), n_a, int(rng.binomial(n_b, p * 1.2)), n_b


@pytest.mark.parametrize("seed", CASES)
def test_conversion_uses_fisher_for_small_expected_cells(seed: int) -> None:
    s_a, n_a, s_b, n_b = _counts(seed, 5)
    expected = stats.contingency.expected_freq([[s_b, n_b - s_b], [s_a, n_a - s_a]])
    got = conversion_test(s_a, n_a, s_b, n_b, alternative="larger")
    if (expected < 5).any():
        ref = stats.fisher_exact([[s_b, n_b - s_b], [s_a, n_a - s_a]], alternative="greater")
        assert got.test == "fisher"
        assert got.p_value == pytest.approx(ref.pvalue, rel=REL)
    else:
        assert got.test == "z"
        ref_p = proportions_ztest([s_b, s_a], [n_b, n_a], alternative="larger")[1]
        assert got.p_value == pytest.approx(ref_p, rel=REL)
    assert got.difference == pytest.approx(s_b / n_b - s_a / n_a, abs=1e-15)


@pytest.mark.parametrize("seed", CASES)
def test_conversion_uses_the_z_test_for_large_samples(seed: int) -> None:
    s_a, n_a, s_b, n_b = _counts(seed, 2000)
    got = conversion_test(s_a, n_a, s_b, n_b)
    z, p = proportions_ztest([s_b, s_a], [n_b, n_a])
    assert got.test == "z"
    assert got.statistic == pytest.approx(z, rel=REL)
    assert got.p_value == pytest.approx(p, rel=REL)


@pytest.mark.parametrize("seed", CASES)
def test_srm_matches_scipy_chisquare(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    k = int(rng.integers(2, 6))
    weights = rng.uniform(0.5, 3, size=k)
    shares = weights / weights.sum()
    if seed % 3 == 0:  # a broken split, which the check must flag
        shares = np.roll(shares, 1) * 0.5 + shares * 0.5
    counts = rng.multinomial(int(rng.integers(1000, 200_000)), shares)
    ref = stats.chisquare(counts, f_exp=counts.sum() * weights / weights.sum())
    got = srm_test(counts.tolist(), weights.tolist())
    assert got.statistic == pytest.approx(ref.statistic, rel=REL)
    assert got.p_value == pytest.approx(ref.pvalue, rel=REL, abs=1e-300)
    assert got.dof == k - 1
    assert got.mismatch == (ref.pvalue < 0.001)


def test_srm_flags_a_real_mismatch_and_defaults_to_an_even_split() -> None:
    assert srm_test([50_000, 50_400]).mismatch is False
    assert srm_test([50_000, 51_500]).mismatch is True
    assert srm_test([1000, 3000], [1, 3]).p_value == pytest.approx(1.0)
    with pytest.raises(ValidationError):
        srm_test([10, 20], [1, 0])
