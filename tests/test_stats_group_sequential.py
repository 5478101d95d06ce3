"""Group-sequential boundaries: published values and crossing probabilities by own integration."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from flagship.errors import ValidationError
from flagship.experiments.stats import (
    group_sequential_boundaries, group_sequential_decision, spending_function,
)

OBF_K5 = (4.877, 3.357, 2.680, 2.290, 2.031)  # Jennison & Turnbull; DeMets & Lan 1994
FIVE = [0.2, 0.4, 0.6, 0.8, 1.0]


def crossing_probabilities(t, upper, lower, drift=0.0, panels=40, nodes=16):
    """Independent check on the Z scale: P(first crossing above / below) at each look.

    Z_k | Z_{k-1} = u ~ N(u r + drift (t_k - t_{k-1}) / sqrt(t_k), 1 - r**2), r = sqrt(t_{k-1}/t_k);
    the sub-density is integrated with composite Gauss-Legendre (not the engine's Simpson
    grid on the score scale).
    """
    x, w = np.polynomial.legendre.leggauss(nodes)
    up, down = [], []
    z = w_mass = None
    for k, tk in enumerate(t):
        if k == 0:
            mean, sd = np.array([drift * math.sqrt(tk)]), 1.0
            mass = np.array([1.0])
        else:
            r = math.sqrt(t[k - 1] / tk)
            mean, sd = z * r + drift * (tk - t[k - 1]) / math.sqrt(tk), math.sqrt(1 - r * r)
            mass = w_mass
        up.append(float(mass @ stats.norm.sf((upper[k] - mean) / sd)))
        down.append(float(mass @ stats.norm.cdf((lower[k] - mean) / sd)))
        edges = np.linspace(lower[k], upper[k], panels + 1)
        half = np.diff(edges)[:, None] / 2
        z_new = (edges[:-1, None] + half * (x[None, :] + 1)).ravel()
        wts = (half * w[None, :]).ravel()
        dens = (mass[None, :] * stats.norm.pdf((z_new[:, None] - mean[None, :]) / sd) / sd).sum(1)
        z, w_mass = z_new, wts * dens
    return np.array(up), np.array(down)


def test_published_obrien_fleming_values() -> None:
    two = group_sequential_boundaries(FIVE, alpha=0.05)
    one = group_sequential_boundaries(FIVE, alpha=0.025, alternative="larger")
    assert two.efficacy == pytest.approx(OBF_K5, abs=1e-3)
    assert one.efficacy == pytest.approx(OBF_K5, abs=1e-3)
    assert two.alpha_spent[-1] == pytest.approx(0.05)


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.1, 0.2])
@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_single_look_is_the_fixed_design(alpha: float, spending: str) -> None:
    two = group_sequential_boundaries([1.0], alpha=alpha, spending=spending)
    one = group_sequential_boundaries([1.0], alpha=alpha, spending=spending, alternative="larger")
    assert two.efficacy[0] == pytest.approx(stats.norm.isf(alpha / 2), rel=1e-9)
    assert one.efficacy[0] == pytest.approx(stats.norm.isf(alpha), rel=1e-9)


def _design(seed: int, k_range: tuple[int, int]) -> dict:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(*k_range))
    gaps = rng.uniform(0.3, 1.0, k)
    t = np.cumsum(gaps) / gaps.sum()
    if seed % 4 == 0:
        t = t * rng.uniform(0.8, 1.0)  # the final analysis comes before full information
    return dict(t=t.tolist(), alpha=float(rng.choice([0.01, 0.025, 0.05, 0.1])),
                spending=str(rng.choice(["obrien_fleming", "pocock"])),
                alternative=str(rng.choice(["two-sided", "larger"])))


@pytest.mark.parametrize("seed", range(30))
def test_two_look_crossing_probability_by_quadrature(seed: int) -> None:
    d = _design(seed, (2, 3))
    b = group_sequential_boundaries(d["t"], d["alpha"], d["spending"],
                                    alternative=d["alternative"])
    (c1, c2), (t1, t2) = b.efficacy, d["t"]
    rho = math.sqrt(t1 / t2)
    two = d["alternative"] == "two-sided"

    def cross2(z1: float) -> float:
        s = math.sqrt(1 - rho * rho)
        p = stats.norm.sf((c2 - rho * z1) / s)
        return p + stats.norm.cdf((-c2 - rho * z1) / s) if two else p

    first = stats.norm.sf(c1) * (2 if two else 1)
    second, _ = integrate.quad(lambda z: stats.norm.pdf(z) * cross2(z), -c1 if two else -40, c1,
                               epsabs=1e-14, epsrel=1e-12, limit=200)
    assert first == pytest.approx(b.alpha_spent[0], rel=1e-9, abs=1e-15)
    assert first + second == pytest.approx(d["alpha"], abs=1e-8)


@pytest.mark.parametrize("seed", range(30))
def test_cumulative_crossing_probability_equals_spent_alpha(seed: int) -> None:
    d = _design(100 + seed, (3, 7))
    b = group_sequential_boundaries(d["t"], d["alpha"], d["spending"],
                                    alternative=d["alternative"])
    two = d["alternative"] == "two-sided"
    lower = [-c if two else -40.0 for c in b.efficacy]
    up, down = crossing_probabilities(d["t"], b.efficacy, lower)
    crossed = np.cumsum(up + (down if two else 0))
    np.testing.assert_allclose(crossed, b.alpha_spent, rtol=1e-6, atol=1e-9)
    # ...and the spent alpha is the Lan-DeMets function, per side for two-sided designs.
    sides = 2 if two else 1
    expected = [sides * spending_function(t, d["alpha"] / sides, d["spending"]) for t in d["t"]]
    np.testing.assert_allclose(b.alpha_spent[:-1], expected[:-1], rtol=1e-12)
    assert b.alpha_spent[-1] == d["alpha"]


@pytest.mark.parametrize("seed", range(10))
def test_futility_spends_beta_and_reaches_the_power(seed: int) -> None:
    d = _design(200 + seed, (2, 6))
    beta = float(np.random.default_rng(seed).choice([0.1, 0.2]))
    b = group_sequential_boundaries(d["t"], d["alpha"], d["spending"], futility_beta=beta,
                                    alternative=d["alternative"])
    assert b.futility[-1] == b.efficacy[-1]
    assert all(a <= c for a, c in zip(b.futility, b.efficacy))
    up, down = crossing_probabilities(d["t"], b.efficacy, b.futility, drift=b.drift)
    assert up.sum() == pytest.approx(1 - beta, abs=1e-7)
    assert b.power == pytest.approx(1 - beta, abs=1e-7)
    expected = [spending_function(t, beta, d["spending"]) for t in d["t"][:-1]]
    np.testing.assert_allclose(np.cumsum(down)[:-1], expected, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(b.beta_spent, np.cumsum(down), rtol=1e-6, atol=1e-10)
    # Looking early costs information: more than a fixed design with the same power.
    assert b.inflation > 1.0


def test_futility_at_a_given_drift_reports_its_power() -> None:
    b = group_sequential_boundaries(FIVE, 0.05, futility_beta=0.2, drift=2.5)
    up, _ = crossing_probabilities(FIVE, b.efficacy, b.futility, drift=2.5)
    assert b.power == pytest.approx(up.sum(), abs=1e-7)
    assert b.futility[-1] == b.efficacy[-1] and b.inflation is None
    plain = group_sequential_boundaries(FIVE, 0.05, drift=2.5)
    up, down = crossing_probabilities(FIVE, plain.efficacy, [-c for c in plain.efficacy], 2.5)
    assert plain.futility is None
    assert plain.power == pytest.approx(up.sum(), abs=1e-7)


def test_decisions() -> None:
    b = group_sequential_boundaries(FIVE, 0.05, futility_beta=0.2)
    assert group_sequential_decision(5.0, 0, b) == "efficacy"
    assert group_sequential_decision(-5.0, 0, b) == "efficacy"  # significant harm
    assert group_sequential_decision(1.0, 0, b) == "continue"
    assert group_sequential_decision(b.futility[2] - 0.01, 2, b) == "futility"
    assert group_sequential_decision(2.1, 4, b) == "efficacy"
    assert group_sequential_decision(1.9, 4, b) == "futility"
    smaller = group_sequential_boundaries(FIVE, 0.025, alternative="smaller")
    assert group_sequential_decision(-3.4, 1, smaller) == "efficacy"
    assert group_sequential_decision(3.4, 1, smaller) == "continue"
    with pytest.raises(ValidationError):
        group_sequential_decision(1.0, 5, b)


@pytest.mark.parametrize("fractions", [[], [0.5, 0.5, 1.0], [0.0, 1.0], [0.5, 1.2], [0.7, 0.3]])
def test_rejects_bad_information_fractions(fractions: list[float]) -> None:
    with pytest.raises(ValidationError):
        group_sequential_boundaries(fractions)
