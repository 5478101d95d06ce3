"""Group-sequential designs: Lan-DeMets alpha spending with exact recursive integration.

Canonical joint distribution (Jennison & Turnbull 2000, ch. 3 and 19): at information
fraction t_k the score S_k = Z_k sqrt(t_k) has independent Gaussian increments,
S_k - S_{k-1} ~ N(drift (t_k - t_{k-1}), t_k - t_{k-1}), so corr(Z_i, Z_j) = sqrt(t_i / t_j)
for i <= j. ``drift`` is the expected Z at full information (effect / se at t = 1).
The sub-density of S_k on the continuation region is propagated look by look with
Simpson's rule on a grid (Armitage, McPherson & Rowe 1969), and crossing probabilities are
integrals of that sub-density against exact normal tails, so each boundary is solved by
brentq to ~1e-12 in z and crossing probabilities are accurate to ~1e-9.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

from flagship.errors import ValidationError
from flagship.experiments.stats.inference import Alternative, check_alpha, check_alternative
from flagship.experiments.stats.spending import (
    SPENDING_KINDS, SpendingKind, Grid, spending_function, start_grid,
)

Decision = Literal["efficacy", "futility", "continue"]
_ZMAX = 40.0  # |Z| beyond this carries no probability in double precision
# The grid stops 10 sd below the mean: the mass beyond, Phi(-10) ~ 1e-23, cannot matter.
_GRID_SDS = 10.0


@dataclass(frozen=True, slots=True)
class GroupSequentialBoundaries:
    """Z-scale boundaries per planned look, in the direction of benefit.

    Efficacy at look k when z >= efficacy[k] (or |z| >= efficacy[k] two-sided); futility
    when z < futility[k]. For alternative 'smaller' both apply to -z. ``alpha_spent`` and
    ``beta_spent`` are cumulative. ``drift`` is the expected final Z under the planned
    effect, ``power`` the design's power at that drift and ``inflation`` the maximum
    information relative to a fixed-horizon design with the same alpha and power.
    """

    information_fractions: tuple[float, ...]
    alpha: float
    spending: SpendingKind
    alternative: Alternative
    efficacy: tuple[float, ...]
    futility: tuple[float, ...] | None
    alpha_spent: tuple[float, ...]
    beta_spent: tuple[float, ...] | None
    drift: float | None
    power: float | None
    inflation: float | None


def _check_fractions(information_fractions: Sequence[float]) -> np.ndarray:
    t = np.asarray(information_fractions, dtype=float)
    if t.ndim != 1 or t.size == 0 or not np.isfinite(t).all():
        raise ValidationError("needs at least one information fraction",
                              field="information_fractions")
    if t[0] <= 0 or t[-1] > 1 or (np.diff(t) <= 0).any():
        raise ValidationError("must increase strictly within (0, 1]", field="information_fractions")
    return t


def _cumulative(t: np.ndarray, level: float, kind: SpendingKind) -> np.ndarray:
    spent = np.array([spending_function(float(x), level, kind) for x in t])
    # The final analysis spends whatever is left, even if it comes before t = 1.
    spent[-1] = level
    return spent


def _solve(f: Callable[[float], float], lo: float, hi: float) -> float:
    return float(optimize.brentq(f, lo, hi, xtol=1e-12, rtol=1e-14, maxiter=500))


def _efficacy_bound(grid: Grid, tk: float, target: float, two_sided: bool) -> float:
    """The z boundary at tk whose H0 crossing probability (given no stop yet) is ``target``."""
    root = math.sqrt(tk)

    def crossing(c: float) -> float:
        p = grid.upper(c * root, tk, 0.0)
        return p + grid.lower(-c * root, tk, 0.0) if two_sided else p

    if crossing(0.0) <= target:
        return 0.0
    # Relative residual: the early increments of OBF-type spending can be 1e-30 or smaller.
    return _solve(lambda c: crossing(c) / target - 1.0, 0.0, _ZMAX)


def _efficacy(t: np.ndarray, spent: np.ndarray, two_sided: bool) -> list[float]:
    """Efficacy boundaries under H0 (drift 0); futility is non-binding so it plays no part."""
    grid = start_grid()
    bounds: list[float] = []
    for k, tk in enumerate(t):
        c = _efficacy_bound(grid, float(tk), spent[k] - (spent[k - 1] if k else 0.0), two_sided)
        bounds.append(c)
        root = math.sqrt(tk)
        lower = -c if two_sided else -_GRID_SDS
        grid = grid.advance(tk, 0.0, max(lower, -_GRID_SDS) * root, c * root, _next_step(t, k))
    return bounds


def _next_step(t: np.ndarray, k: int) -> float | None:
    return float(t[k + 1] - t[k]) if k + 1 < t.size else None


@dataclass(frozen=True, slots=True)
class _FutilityPass:
    bounds: list[float]
    power: float
    beta_spent: list[float]  # cumulative P(stop below the futility bound by look k)


def _futility(t: np.ndarray, efficacy: list[float], beta_spent: np.ndarray,
              drift: float) -> _FutilityPass:
    """Beta-spending futility bounds at a drift, with the power and the beta actually spent.

    The last bound equals the efficacy bound: the final analysis decides either way.
    A two-sided design's lower efficacy (harm) region is counted with futility here; under
    a positive drift its probability is negligible.
    """
    grid = start_grid()
    bounds: list[float] = []
    spent: list[float] = []
    power = 0.0
    for k, tk in enumerate(t):
        root, c = math.sqrt(tk), efficacy[k]
        power += grid.upper(c * root, tk, drift)
        below_c = grid.lower(c * root, tk, drift)
        target = beta_spent[k] - (beta_spent[k - 1] if k else 0.0)
        a = c if k == t.size - 1 else _futility_bound(grid, float(tk), drift, c, below_c, target)
        bounds.append(a)
        spent.append((spent[-1] if spent else 0.0) + grid.lower(a * root, tk, drift))
        grid_low = max(a, drift * root - _GRID_SDS) * root
        grid = grid.advance(tk, drift, grid_low, c * root, _next_step(t, k))
    return _FutilityPass(bounds, power, spent)


def _futility_bound(grid: Grid, tk: float, drift: float, c: float, below_c: float,
                    target: float) -> float:
    """The z bound at tk below which P(stop for futility | drift) spends ``target``."""
    root = math.sqrt(tk)
    low = drift * root - _ZMAX
    if below_c <= target:
        return c  # cannot spend this much below c: the bounds meet and the trial ends here
    if grid.lower(low * root, tk, drift) >= target:
        return low
    return _solve(lambda a: grid.lower(a * root, tk, drift) / target - 1.0, low, c)


def _fixed_drift(alpha: float, beta: float, two_sided: bool) -> float:
    return float(stats.norm.isf(alpha / 2 if two_sided else alpha) + stats.norm.isf(beta))


def _solve_drift(t: np.ndarray, efficacy: list[float], beta_spent: np.ndarray,
                 guess: float) -> float:
    """The drift at which the final futility bound meets the efficacy bound (power = 1 - beta)."""
    last = beta_spent[-1] - (beta_spent[-2] if t.size > 1 else 0.0)

    def gap(drift: float) -> float:
        spent = _futility(t, efficacy, beta_spent, drift).beta_spent
        return spent[-1] - (spent[-2] if t.size > 1 else 0.0) - last

    lo, hi = 0.5 * guess, 1.5 * guess
    g_lo, g_hi = gap(lo), gap(hi)
    for _ in range(60):
        if g_hi <= 0 <= g_lo:
            return _solve(gap, lo, hi)
        if g_hi > 0:
            lo, g_lo, hi = hi, g_hi, 2.0 * hi
            g_hi = gap(hi)
        else:
            hi, g_hi, lo = lo, g_lo, 0.5 * lo
            g_lo = gap(lo)
    raise ValidationError("no design reaches this power; lower futility_beta",
                          field="futility_beta")


def group_sequential_boundaries(information_fractions: Sequence[float], alpha: float = 0.05,
                                spending: SpendingKind = "obrien_fleming",
                                futility_beta: float | None = None, drift: float | None = None,
                                alternative: Alternative = "two-sided",
                                ) -> GroupSequentialBoundaries:
    """Lan-DeMets efficacy boundaries, plus non-binding beta-spending futility if asked.

    Two-sided designs are symmetric and spend alpha / 2 per side with the one-sided
    spending function, e.g. 2 - 2 Phi(z_{alpha/4} / sqrt(t)) per side for OBF-type; K = 5
    equally spaced looks at alpha = 0.05 then give 4.877, 3.357, 2.680, 2.290, 2.031.

    With ``futility_beta`` and no ``drift``, the drift is solved so that the design has power
    1 - futility_beta (the bounds meet at the last look); with a ``drift`` the futility
    bounds are spent at that drift and the last one is set equal to the efficacy bound.
    Beta is spent with the same family as alpha.
    """
    t = _check_fractions(information_fractions)
    check_alpha(alpha)
    check_alternative(alternative)
    if spending not in SPENDING_KINDS:
        raise ValidationError(f"must be one of {', '.join(SPENDING_KINDS)}", field="spending")
    if drift is not None and not (math.isfinite(drift) and drift > 0):
        raise ValidationError("must be a positive expected final z", field="drift")
    two_sided = alternative == "two-sided"
    # A symmetric two-sided design is two one-sided designs at alpha / 2 each, which is the
    # convention of the published tables (DeMets & Lan 1994; Jennison & Turnbull; gsDesign).
    sides = 2.0 if two_sided else 1.0
    alpha_spent = sides * _cumulative(t, alpha / sides, spending)
    efficacy = _efficacy(t, alpha_spent, two_sided)
    futility: tuple[float, ...] | None = None
    beta_spent: tuple[float, ...] | None = None
    power: float | None = None
    inflation: float | None = None
    if futility_beta is not None:
        check_alpha(futility_beta, field="futility_beta")
        spent_b = _cumulative(t, futility_beta, spending)
        fixed = _fixed_drift(alpha, futility_beta, two_sided)
        if drift is None:
            drift = _solve_drift(t, efficacy, spent_b, fixed)
            inflation = (drift / fixed) ** 2
        done = _futility(t, efficacy, spent_b, drift)
        futility, beta_spent, power = tuple(done.bounds), tuple(done.beta_spent), done.power
    elif drift is not None:
        power = _futility(t, efficacy, np.zeros(t.size), drift).power
    return GroupSequentialBoundaries(
        tuple(float(x) for x in t), alpha, spending, alternative, tuple(efficacy), futility,
        tuple(float(a) for a in alpha_spent), beta_spent, drift, power, inflation)


def group_sequential_decision(z: float, look: int,
                              boundaries: GroupSequentialBoundaries) -> Decision:
    """Decision at a 0-based look: 'efficacy', 'futility' or 'continue' (never at the last look)."""
    k = len(boundaries.efficacy)
    if not (isinstance(look, int) and 0 <= look < k):
        raise ValidationError(f"must be a look index from 0 to {k - 1}", field="look")
    if not math.isfinite(z):
        raise ValidationError("must be a finite z statistic", field="z")
    signed = -z if boundaries.alternative == "smaller" else z
    c = boundaries.efficacy[look]
    if signed >= c or (boundaries.alternative == "two-sided" and signed <= -c):
        return "efficacy"
    if boundaries.futility is not None and signed < boundaries.futility[look]:
        return "futility"
    # The final analysis cannot continue: not crossing efficacy there means no effect shown.
    return "futility" if look == k - 1 else "continue"
