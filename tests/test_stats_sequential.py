"""mSPRT always-valid p-values and confidence sequences: formula, validity and A/A behaviour."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from flagship.errors import ValidationError
from flagship.experiments.stats import (
    always_valid_p_values, always_valid_series, default_tau2, msprt_test, welch_t_test,
)

REL = 1e-6
CASES = range(36)


def _look(seed: int) -> tuple[float, float, float, float]:
    rng = np.random.default_rng(seed)
    var = float(10.0 ** rng.uniform(-4, 1))
    tau2 = var * float(10.0 ** rng.uniform(-1, 2))
    diff = float(rng.normal(0, 3 * math.sqrt(var)))
    return diff, var, tau2, float(rng.choice([0.01, 0.05, 0.1]))


@pytest.mark.parametrize("seed", CASES)
def test_likelihood_ratio_is_the_normal_mixture(seed: int) -> None:
    diff, var, tau2, alpha = _look(seed)
    got = msprt_test(diff, var, tau2, alpha)
    # The mixture of N(diff; theta, V) over theta ~ N(0, tau2) is N(diff; 0, V + tau2).
    ref = (stats.norm.logpdf(diff, 0, math.sqrt(var + tau2))
           - stats.norm.logpdf(diff, 0, math.sqrt(var)))
    assert got.log_likelihood_ratio == pytest.approx(ref, rel=REL, abs=1e-12)
    assert got.p_value == pytest.approx(min(1.0, math.exp(-ref)), rel=REL)
    assert got.reject == (got.p_value <= alpha)


@pytest.mark.parametrize("seed", range(8))
def test_likelihood_ratio_by_quadrature(seed: int) -> None:
    diff, var, tau2, _ = _look(seed)
    sd = math.sqrt(var)
    mixed, _ = integrate.quad(lambda th: stats.norm.pdf(diff, th, sd)
                              * stats.norm.pdf(th, 0, math.sqrt(tau2)),
                              -np.inf, np.inf, epsabs=0, epsrel=1e-11)
    ref = math.log(mixed / stats.norm.pdf(diff, 0, sd))
    assert msprt_test(diff, var, tau2).log_likelihood_ratio == pytest.approx(ref, rel=1e-8,
                                                                             abs=1e-10)


@pytest.mark.parametrize("seed", CASES)
def test_confidence_sequence_inverts_the_test(seed: int) -> None:
    diff, var, tau2, alpha = _look(seed)
    lo, hi = msprt_test(diff, var, tau2, alpha).ci
    assert lo < diff < hi and diff - lo == pytest.approx(hi - diff, rel=1e-9)
    # At each end the mixture LR for H0: theta = end is exactly 1 / alpha.
    for end in (lo, hi):
        log_lr = (stats.norm.logpdf(diff - end, 0, math.sqrt(var + tau2))
                  - stats.norm.logpdf(diff - end, 0, math.sqrt(var)))
        assert log_lr == pytest.approx(math.log(1 / alpha), rel=1e-9)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.2])
def test_default_tau2_minimises_the_half_width_at_the_horizon(alpha: float) -> None:
    v = 0.37

    def width(log_tau2: float) -> float:
        t2 = math.exp(log_tau2)
        return msprt_test(0.0, v, t2, alpha).ci[1]

    best = optimize.minimize_scalar(width, bounds=(-5, 10), method="bounded",
                                    options={"xatol": 1e-10})
    assert default_tau2(v, alpha) == pytest.approx(math.exp(best.x), rel=1e-4)
    assert default_tau2(1.0, 0.05) == pytest.approx(8.21, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(1e-3, 10)), min_size=1, max_size=25),
       st.floats(1e-2, 10))
def test_always_valid_p_never_rises_and_intervals_nest(looks: list, tau2: float) -> None:
    diffs, variances = zip(*looks)
    series = always_valid_series(diffs, variances, tau2, alpha=0.05)
    p = np.array(series.p_values)
    assert (np.diff(p) <= 0).all() and ((p >= 0) & (p <= 1)).all()
    for (lo0, hi0), (lo1, hi1) in zip(series.cis, series.cis[1:]):
        assert lo0 <= lo1 <= hi1 <= hi0
    # Chaining single looks gives the same answer as the series.
    prev_p, prev_ci = None, None
    for i, (d, v) in enumerate(looks):
        look = msprt_test(d, v, tau2, 0.05, previous_p=prev_p, previous_ci=prev_ci)
        assert look.p_value == pytest.approx(series.p_values[i], rel=1e-12)
        assert look.ci == series.cis[i]
        prev_p, prev_ci = look.p_value, look.ci


def _simulate(n_sims: int, peeks: int, batch: int, effect: float, seed: int):
    """Cumulative mean differences and Welch variances at each peek, per simulated test.

    Normal data are summarised exactly per batch: the batch sum is normal and the centred
    sum of squares is an independent sigma**2 chi-square with batch - 1 df.
    """
    rng = np.random.default_rng(seed)
    out = []
    for mu in (0.0, effect):
        s = rng.normal(mu * batch, math.sqrt(batch), (n_sims, peeks))
        ss = rng.chisquare(batch - 1, (n_sims, peeks)) + s ** 2 / batch
        n = batch * np.arange(1, peeks + 1)
        cs, css = s.cumsum(axis=1), ss.cumsum(axis=1)
        mean = cs / n
        out.append((mean, (css - n * mean ** 2) / (n - 1) / n, n))
    (ma, va, n), (mb, vb, _) = out
    return mb - ma, va + vb, n


N_SIMS, PEEKS, BATCH, ALPHA = 2000, 20, 50, 0.05
MC_SE = math.sqrt(ALPHA * (1 - ALPHA) / N_SIMS)


def test_aa_peeking_inflates_naive_fpr_but_not_the_always_valid_p() -> None:
    diff, var, _ = _simulate(N_SIMS, PEEKS, BATCH, 0.0, seed=7)
    naive = 2 * stats.norm.sf(np.abs(diff) / np.sqrt(var))
    naive_fpr = (naive < ALPHA).any(axis=1).mean()
    tau2 = default_tau2(2.0 / (PEEKS * BATCH), ALPHA)  # planned horizon, known at design time
    valid_fpr = (always_valid_p_values(diff, var, tau2)[:, -1] <= ALPHA).mean()
    assert naive_fpr > 0.1
    assert valid_fpr <= ALPHA + 3 * MC_SE
    # The vectorised kernel is the series function, row by row.
    row = always_valid_series(diff[3], var[3], tau2, ALPHA)
    np.testing.assert_allclose(always_valid_p_values(diff[3], var[3], tau2), row.p_values)


def test_fixed_horizon_single_look_has_nominal_fpr() -> None:
    n_sims = 40_000
    diff, var, n = _simulate(n_sims, 1, PEEKS * BATCH, 0.0, seed=11)
    p = 2 * stats.t.sf(np.abs(diff[:, 0]) / np.sqrt(var[:, 0]), 2 * n[0] - 2)
    assert abs((p < ALPHA).mean() - ALPHA) < 0.01
    # The simulated statistic is the engine's Welch test.
    m_b, m_a = diff[0, 0] + 1.0, 1.0
    got = welch_t_test(n[0], m_a, var[0, 0] * n[0] / 2, n[0], m_b, var[0, 0] * n[0] / 2)
    assert got.p_value == pytest.approx(p[0], rel=1e-3)


def test_confidence_sequence_covers_a_real_effect_at_every_look() -> None:
    effect = 0.15
    diff, var, _ = _simulate(N_SIMS, PEEKS, BATCH, effect, seed=13)
    tau2 = default_tau2(2.0 / (PEEKS * BATCH), ALPHA)
    # theta is excluded at some look exactly when the p-value for H0: theta = effect hits alpha.
    missed = (always_valid_p_values(diff - effect, var, tau2)[:, -1] <= ALPHA).mean()
    assert missed <= ALPHA + 3 * MC_SE
    covered = [lo <= effect <= hi for i in range(200)
               for lo, hi in always_valid_series(diff[i], var[i], tau2, ALPHA).cis]
    assert np.mean(covered) >= 1 - ALPHA
    # ...and with a real effect the always-valid test does find it.
    assert (always_valid_p_values(diff, var, tau2)[:, -1] <= ALPHA).mean() > 0.5


@pytest.mark.parametrize("bad", [dict(var=0.0), dict(tau2=-1.0), dict(alpha=0.0),
                                 dict(previous_p=1.5), dict(diff=math.inf)])
def test_rejects_bad_input(bad: dict) -> None:
    with pytest.raises(ValidationError):
        msprt_test(**{**dict(diff=0.1, var=0.01, tau2=0.1, alpha=0.05), **bad})
    with pytest.raises(ValidationError):
        always_valid_series([0.1, 0.2], [0.01], 0.1)
