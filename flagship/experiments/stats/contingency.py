"""Count-table tests: chi-square, Fisher's exact, the conversion test and sample-ratio mismatch."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from flagship.errors import ValidationError
from flagship.experiments.stats.frequentist import SCIPY_ALTERNATIVE, proportions_z_test
from flagship.experiments.stats.inference import (
    Alternative, Interval, check_alpha, check_alternative,
)

SRM_THRESHOLD = 0.001
# The usual rule of thumb for when the chi-square / z approximation is trustworthy.
MIN_EXPECTED_CELL = 5.0

Table = Sequence[Sequence[float]] | np.ndarray


@dataclass(frozen=True, slots=True)
class ChiSquareResult:
    """Pearson chi-square test of independence on an r x c table."""

    statistic: float
    p_value: float
    dof: int
    expected: tuple[tuple[float, ...], ...]


@dataclass(frozen=True, slots=True)
class FisherResult:
    """Fisher's exact test on a 2x2 table; statistic is the sample odds ratio."""

    statistic: float
    p_value: float


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """A conversion-rate comparison that chose Fisher or the z-test from the expected cells."""

    test: Literal["fisher", "z"]
    statistic: float
    p_value: float
    rate_a: float
    rate_b: float
    difference: float
    ci: Interval
    relative_lift: float | None
    relative_ci: Interval | None
    relative_estimable: bool
    relative_reason: str | None


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Chi-square goodness-of-fit of observed assignment counts to the planned weights."""

    statistic: float
    p_value: float
    dof: int
    expected: tuple[float, ...]
    mismatch: bool


def _table(table: Table, shape: tuple[int, int] | None = None) -> np.ndarray:
    obs = np.asarray(table, dtype=float)
    if obs.ndim != 2 or obs.shape[0] < 2 or obs.shape[1] < 2:
        raise ValidationError("must be a table with at least 2 rows and 2 columns", field="table")
    if shape is not None and obs.shape != shape:
        raise ValidationError("must be a 2x2 table", field="table")
    if not np.isfinite(obs).all() or (obs < 0).any():
        raise ValidationError("counts must be finite and non-negative", field="table")
    return obs


def _expected(obs: np.ndarray) -> np.ndarray:
    return np.outer(obs.sum(axis=1), obs.sum(axis=0)) / obs.sum()


def chi_square_test(table: Table, correction: bool = True) -> ChiSquareResult:
    """Chi-square test of independence; Yates-corrected when dof == 1 and correction is set."""
    obs = _table(table)
    if obs.sum() == 0 or (obs.sum(axis=0) == 0).any() or (obs.sum(axis=1) == 0).any():
        raise ValidationError("every row and column needs at least one count", field="table")
    expected = _expected(obs)
    dof = (obs.shape[0] - 1) * (obs.shape[1] - 1)
    if dof == 1 and correction:
        # Yates: move each cell 0.5 toward its expectation, never past it (as scipy, gh-13875).
        diff = expected - obs
        obs = obs + np.sign(diff) * np.minimum(0.5, np.abs(diff))
    statistic = float(((obs - expected) ** 2 / expected).sum())
    return ChiSquareResult(statistic, float(stats.chi2.sf(statistic, dof)), dof,
                           tuple(tuple(float(v) for v in row) for row in expected))


def fisher_exact_test(table: Table, alternative: Alternative = "two-sided") -> FisherResult:
    """Fisher's exact test on [[a, b], [c, d]]; 'larger' means odds ratio ad/bc > 1."""
    obs = _table(table, shape=(2, 2))
    check_alternative(alternative)
    if not np.array_equal(obs, np.round(obs)):
        raise ValidationError("counts must be whole numbers", field="table")
    res = stats.fisher_exact(obs.astype(np.int64), alternative=SCIPY_ALTERNATIVE[alternative])
    return FisherResult(float(res.statistic), float(res.pvalue))


def conversion_test(successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05,
                    alternative: Alternative = "two-sided") -> ConversionResult:
    """Fisher's exact test when any expected 2x2 cell is below 5, else the pooled z-test."""
    z = proportions_z_test(successes_a, n_a, successes_b, n_b, alpha, alternative)
    # Treatment on the first row so the odds ratio, like the lift, reads treatment vs control.
    table = np.array([[successes_b, n_b - successes_b], [successes_a, n_a - successes_a]], float)
    if (_expected(table) < MIN_EXPECTED_CELL).any():
        fisher = fisher_exact_test(table, alternative)
        test: Literal["fisher", "z"] = "fisher"
        statistic, pv = fisher.statistic, fisher.p_value
    else:
        test, statistic, pv = "z", z.statistic, z.p_value
    return ConversionResult(test, statistic, pv, z.rate_a, z.rate_b, z.difference, z.ci,
                            z.relative_lift, z.relative_ci, z.relative_estimable,
                            z.relative_reason)


def srm_test(counts: Sequence[int], weights: Sequence[float] | None = None,
             threshold: float = SRM_THRESHOLD) -> SrmResult:
    """Sample-ratio-mismatch check against planned weights (default even); flags p < threshold."""
    obs = np.asarray(counts, dtype=float)
    w = np.ones_like(obs) if weights is None else np.asarray(weights, dtype=float)
    if obs.ndim != 1 or obs.size < 2:
        raise ValidationError("needs the counts of at least 2 variants", field="counts")
    if w.shape != obs.shape:
        raise ValidationError("needs one weight per count", field="weights")
    if not (np.isfinite(obs).all() and (obs >= 0).all() and obs.sum() > 0):
        raise ValidationError("counts must be non-negative with a positive total", field="counts")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValidationError("weights must be positive", field="weights")
    check_alpha(threshold, field="threshold")
    expected = obs.sum() * w / w.sum()
    statistic = float(((obs - expected) ** 2 / expected).sum())
    dof = obs.size - 1
    pv = float(stats.chi2.sf(statistic, dof))
    return SrmResult(statistic, pv, dof, tuple(float(e) for e in expected), pv < threshold)
