"""Fixed-horizon two-sample tests on means, proportions and ranks; b is the treatment."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from flagship.errors import ValidationError
from flagship.experiments.stats.inference import (
    Alternative, Interval, check_alpha, check_alternative, check_finite, interval, p_value,
    relative_lift,
)

# scipy names one-sided alternatives after the sign of the statistic, we after the lift.
SCIPY_ALTERNATIVE = {"two-sided": "two-sided", "larger": "greater", "smaller": "less"}
Values = Sequence[float] | np.ndarray


@dataclass(frozen=True, slots=True)
class TTestResult:
    """Welch's unequal-variance t-test of mean_b - mean_a."""

    statistic: float
    df: float
    p_value: float
    difference: float
    se: float
    ci: Interval
    relative_lift: float | None
    relative_ci: Interval | None
    relative_estimable: bool
    relative_reason: str | None


@dataclass(frozen=True, slots=True)
class ProportionsResult:
    """Two-proportion z-test (pooled) with an unpooled Wald interval for rate_b - rate_a."""

    statistic: float
    p_value: float
    rate_a: float
    rate_b: float
    difference: float
    se: float
    ci: Interval
    relative_lift: float | None
    relative_ci: Interval | None
    relative_estimable: bool
    relative_reason: str | None


@dataclass(frozen=True, slots=True)
class MannWhitneyResult:
    """Mann-Whitney U test of b against a with the rank-biserial correlation."""

    statistic: float
    p_value: float
    rank_biserial: float
    n_a: int
    n_b: int


def _check_arm(n: float, mean: float, var: float, arm: str) -> None:
    if not n >= 2:
        raise ValidationError("needs at least 2 units for a sample variance", field=f"n_{arm}")
    check_finite(mean, f"mean_{arm}")
    check_finite(var, f"var_{arm}")
    if var < 0:
        raise ValidationError("must not be negative", field=f"var_{arm}")


def welch_t_test(n_a: float, mean_a: float, var_a: float, n_b: float, mean_b: float,
                 var_b: float, alpha: float = 0.05,
                 alternative: Alternative = "two-sided") -> TTestResult:
    """Welch's t-test from summary statistics; var_* are sample variances (ddof=1)."""
    _check_arm(n_a, mean_a, var_a, "a")
    _check_arm(n_b, mean_b, var_b, "b")
    check_alpha(alpha)
    check_alternative(alternative)
    vn_a, vn_b = var_a / n_a, var_b / n_b
    se2 = vn_a + vn_b
    if se2 == 0.0:
        raise ValidationError("both variances are 0; the test is undefined", field="var_a")
    # Welch-Satterthwaite: match the first two moments of se2 to a scaled chi-square.
    df = se2 ** 2 / (vn_a ** 2 / (n_a - 1) + vn_b ** 2 / (n_b - 1))
    se = math.sqrt(se2)
    diff = mean_b - mean_a
    t = diff / se
    rel = relative_lift(mean_a, math.sqrt(vn_a), mean_b, math.sqrt(vn_b), alpha, alternative,
                        control_df=n_a - 1)
    return TTestResult(t, df, p_value(t, alternative, df), diff, se,
                       interval(diff, se, alpha, alternative, df),
                       rel.lift, rel.ci, rel.estimable, rel.reason)


def _check_counts(successes: int, n: int, arm: str) -> None:
    if not n >= 1:
        raise ValidationError("needs at least 1 unit", field=f"n_{arm}")
    if not 0 <= successes <= n:
        raise ValidationError(f"must be between 0 and n_{arm}", field=f"successes_{arm}")


def proportions_z_test(successes_a: int, n_a: int, successes_b: int, n_b: int,
                       alpha: float = 0.05,
                       alternative: Alternative = "two-sided") -> ProportionsResult:
    """Pooled two-proportion z-test of rate_b - rate_a with unpooled Wald and lift intervals."""
    _check_counts(successes_a, n_a, "a")
    _check_counts(successes_b, n_b, "b")
    check_alpha(alpha)
    check_alternative(alternative)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    diff = p_b - p_a
    # All-or-nothing data (pooled rate 0 or 1) carry no evidence of a difference.
    z = diff / se_pooled if se_pooled > 0 else 0.0
    pv = p_value(z, alternative) if se_pooled > 0 else 1.0
    se_a2, se_b2 = p_a * (1.0 - p_a) / n_a, p_b * (1.0 - p_b) / n_b
    se = math.sqrt(se_a2 + se_b2)
    rel = relative_lift(p_a, math.sqrt(se_a2), p_b, math.sqrt(se_b2), alpha, alternative)
    return ProportionsResult(z, pv, p_a, p_b, diff, se, interval(diff, se, alpha, alternative),
                             rel.lift, rel.ci, rel.estimable, rel.reason)


def mann_whitney_test(values_a: Values, values_b: Values,
                      alternative: Alternative = "two-sided") -> MannWhitneyResult:
    """Mann-Whitney U of b vs a (scipy's method='auto'); rank-biserial = P(b>a) - P(b<a)."""
    check_alternative(alternative)
    a = np.asarray(values_a, dtype=float)
    b = np.asarray(values_b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or a.size == 0 or b.size == 0:
        raise ValidationError("each sample must be a non-empty list of numbers", field="values_a")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValidationError("values must be finite numbers", field="values_a")
    # scipy's exact and tie-corrected asymptotic distributions are the reference; reuse them.
    res = stats.mannwhitneyu(b, a, alternative=SCIPY_ALTERNATIVE[alternative])
    u_b = float(res.statistic)
    return MannWhitneyResult(u_b, float(res.pvalue), 2.0 * u_b / (a.size * b.size) - 1.0,
                             int(a.size), int(b.size))
