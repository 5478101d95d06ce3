"""Always-valid inference by the normal-mixture sequential probability ratio test (mSPRT).

Model (Johari, Koomen, Pekelis & Walsh, "Always Valid Inference: Continuous Monitoring of
A/B Tests", Operations Research 2022;
Robbins 1970): at each look the difference estimate is diff ~ N(theta, V), with V = se**2
shrinking as data arrive. Against H0: theta = theta0 we mix the likelihood ratio over the
alternatives with a normal mixing distribution theta ~ N(theta0, tau2), tau2 being the
*mixing variance* (on the squared scale of the difference):

    LR = integral N(diff; theta, V) N(theta; theta0, tau2) dtheta / N(diff; theta0, V)
       = N(diff; theta0, V + tau2) / N(diff; theta0, V)
       = sqrt(V / (V + tau2)) * exp(tau2 * (diff - theta0)**2 / (2 V (V + tau2))).

Under H0 the LR is a nonnegative martingale with mean 1, so by Ville's inequality
P(sup_n LR_n >= 1 / alpha) <= alpha. Hence p_n = min(1, 1 / LR_n), reported as the
running minimum over looks, is an always-valid p-value. Inverting LR(theta0) < 1 / alpha
in theta0 gives the confidence sequence diff +- w with

    w**2 = (V (V + tau2) / tau2) * (2 ln(1 / alpha) + ln((V + tau2) / V)),

whose running intersection covers theta at every look with probability >= 1 - alpha
(with V = 2 sigma**2 / n this is Johari et al.'s two-sample normal mSPRT). With V
estimated from the data (plug-in se) the guarantee is asymptotic, as in every platform
that uses it.

tau2 must be fixed before the data are seen; ``default_tau2(horizon_var, alpha)`` is the
documented default, tuned so the interval is narrowest at the planned horizon.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flagship.errors import ValidationError
from flagship.experiments.stats.inference import Interval, check_alpha


@dataclass(frozen=True, slots=True)
class MsprtResult:
    """One look of the mSPRT: always-valid p-value and confidence-sequence interval."""

    log_likelihood_ratio: float
    p_value: float
    ci: Interval
    tau2: float
    reject: bool


@dataclass(frozen=True, slots=True)
class AlwaysValidSeries:
    """Always-valid p-values (running minimum) and nested intervals for a series of looks.

    ``first_rejection`` is the 0-based index of the first look with p <= alpha, if any.
    """

    p_values: tuple[float, ...]
    cis: tuple[Interval, ...]
    tau2: float
    first_rejection: int | None


def default_tau2(horizon_var: float, alpha: float = 0.05) -> float:
    """Default mixing variance: the tau2 that makes the interval narrowest at the horizon.

    With r = tau2 / V the squared half-width is V**2 (1 + r) / r * (2 ln(1/alpha) + ln(1 + r));
    setting its derivative to zero gives r = 2 ln(1/alpha) + ln(1 + r) (r ~= 8.21 at
    alpha = 0.05; the optimum Howard et al. 2021 give for normal mixtures). ``horizon_var``
    is the variance of the difference expected at the planned end of the experiment,
    e.g. (s_a**2 + s_b**2) / n_per_arm_planned.
    Fix it at design time: choosing tau2 from the data seen so far voids the guarantee.
    """
    check_alpha(alpha)
    if not (math.isfinite(horizon_var) and horizon_var > 0):
        raise ValidationError("must be a positive number", field="horizon_var")
    two_log = 2.0 * math.log(1.0 / alpha)
    r = two_log
    # A contraction (derivative 1 / (1 + r) < 1), so plain iteration converges fast.
    for _ in range(200):
        r_next = two_log + math.log1p(r)
        if abs(r_next - r) < 1e-14 * r_next:
            break
        r = r_next
    return r_next * horizon_var


def _check(diff: np.ndarray, var: np.ndarray, tau2: float) -> None:
    if not (math.isfinite(tau2) and tau2 > 0):
        raise ValidationError("the mixing variance must be a positive number", field="tau2")
    if not (np.isfinite(diff).all() and np.isfinite(var).all() and (var > 0).all()):
        raise ValidationError("needs finite differences and positive variances", field="var")


def _log_lr(diff: np.ndarray | float, var: np.ndarray | float, tau2: float) -> np.ndarray:
    total = var + tau2
    return 0.5 * np.log(var / total) + tau2 * np.square(diff) / (2.0 * var * total)


def _half_width(var: np.ndarray | float, tau2: float, alpha: float) -> np.ndarray:
    total = var + tau2
    return np.sqrt(var * total / tau2 * (2.0 * math.log(1.0 / alpha) + np.log(total / var)))


def always_valid_p_values(diffs: np.ndarray, variances: np.ndarray, tau2: float) -> np.ndarray:
    """Vectorised running-minimum always-valid p-values along the last axis (looks)."""
    d = np.asarray(diffs, dtype=float)
    v = np.asarray(variances, dtype=float)
    _check(d, v, tau2)
    p = np.minimum(1.0, np.exp(-_log_lr(d, v, tau2)))
    return np.minimum.accumulate(p, axis=-1)


def msprt_test(diff: float, var: float, tau2: float, alpha: float = 0.05,
               previous_p: float | None = None,
               previous_ci: Interval | None = None) -> MsprtResult:
    """One look: p = min(previous_p, 1 / LR) and the interval intersected with previous_ci."""
    check_alpha(alpha)
    _check(np.asarray(diff, float), np.asarray(var, float), tau2)
    log_lr = float(_log_lr(diff, var, tau2))
    p = min(1.0, math.exp(-log_lr)) if log_lr > -700 else 1.0
    if previous_p is not None:
        if not 0.0 <= previous_p <= 1.0:
            raise ValidationError("must be a p-value in [0, 1]", field="previous_p")
        p = min(p, previous_p)
    w = float(_half_width(var, tau2, alpha))
    ci = _intersect((diff - w, diff + w), previous_ci)
    return MsprtResult(log_lr, p, ci, tau2, p <= alpha)


def _intersect(ci: Interval, previous: Interval | None) -> Interval:
    if previous is None:
        return ci
    lo, hi = max(ci[0], previous[0]), min(ci[1], previous[1])
    # Disjoint intervals happen with probability <= alpha under the model; keep the sequence
    # nested and non-empty by holding the last interval rather than reporting lo > hi.
    return (lo, hi) if lo <= hi else previous


def always_valid_series(diffs: Sequence[float], variances: Sequence[float], tau2: float,
                        alpha: float = 0.05) -> AlwaysValidSeries:
    """Always-valid p-values and confidence sequence over looks in time order."""
    check_alpha(alpha)
    d = np.asarray(diffs, dtype=float)
    v = np.asarray(variances, dtype=float)
    if d.ndim != 1 or d.shape != v.shape or d.size == 0:
        raise ValidationError("needs one variance per difference, one entry per look",
                              field="variances")
    p = always_valid_p_values(d, v, tau2)
    w = _half_width(v, tau2, alpha)
    cis: list[Interval] = []
    previous: Interval | None = None
    for di, wi in zip(d, w):
        previous = _intersect((float(di - wi), float(di + wi)), previous)
        cis.append(previous)
    hits = np.flatnonzero(p <= alpha)
    first = int(hits[0]) if hits.size else None
    return AlwaysValidSeries(tuple(float(x) for x in p), tuple(cis), tau2, first)
