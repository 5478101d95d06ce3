"""Shared inference primitives: alternatives, p-values, intervals and the relative lift."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import stats

from flagship.errors import ValidationError

Alternative = Literal["two-sided", "larger", "smaller"]
Interval = tuple[float, float]

ALTERNATIVES: tuple[str, ...] = ("two-sided", "larger", "smaller")
NOT_ESTIMABLE = "not estimable: the control mean is not distinguishable from 0"
ZERO_CONTROL = "not estimable: the control mean is 0"


@dataclass(frozen=True, slots=True)
class RelativeLift:
    """Relative lift ((b - a) / |a|) with its delta-method interval, or why it has none."""

    lift: float | None
    ci: Interval | None
    estimable: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class ZTestResult:
    """A large-sample z comparison of two estimates, b (treatment) minus a (control)."""

    statistic: float
    p_value: float
    difference: float
    se: float
    ci: Interval
    relative_lift: float | None
    relative_ci: Interval | None
    relative_estimable: bool
    relative_reason: str | None


def check_alpha(alpha: float, field: str = "alpha") -> None:
    """Reject a significance level outside (0, 1)."""
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValidationError("must be a number strictly between 0 and 1", field=field)


def check_alternative(alternative: str) -> None:
    """Reject an alternative hypothesis name this engine does not know."""
    if alternative not in ALTERNATIVES:
        raise ValidationError(f"must be one of {', '.join(ALTERNATIVES)}", field="alternative")


def check_finite(value: float, field: str) -> None:
    """Reject NaN and infinities, which would silently poison every downstream number."""
    if not math.isfinite(value):
        raise ValidationError("must be a finite number", field=field)


def p_value(statistic: float, alternative: Alternative, df: float | None = None) -> float:
    """P-value of a z (df=None) or t statistic for b - a under the given alternative."""
    dist = stats.norm if df is None else stats.t(df)
    if alternative == "two-sided":
        return float(2.0 * dist.sf(abs(statistic)))
    if alternative == "larger":
        return float(dist.sf(statistic))
    return float(dist.cdf(statistic))


def interval(estimate: float, se: float, alpha: float, alternative: Alternative,
             df: float | None = None) -> Interval:
    """Wald interval; one-sided alternatives give a one-sided interval with an infinite end."""
    dist = stats.norm if df is None else stats.t(df)
    if alternative == "two-sided":
        q = float(dist.isf(alpha / 2.0))
        return (estimate - q * se, estimate + q * se)
    q = float(dist.isf(alpha))
    if alternative == "larger":
        return (estimate - q * se, math.inf)
    return (-math.inf, estimate + q * se)


def relative_lift(mean_a: float, se_a: float, mean_b: float, se_b: float, alpha: float,
                  alternative: Alternative, control_df: float | None = None) -> RelativeLift:
    """Delta-method lift (mean_b - mean_a) / |mean_a|; no interval when the control's CI
    covers 0. Over |a|, the lift has the sign of the difference also when the control mean
    is negative (b / a - 1 called a worse, more negative treatment a +19.5 % lift).

    With g(a, b) = (b - a) / |a| = sign(a) (b / a - 1) and independent estimates, the
    gradient is sign(a) (-b / a**2, 1 / a), so Var = se_b**2 / a**2 + b**2 * se_a**2 / a**4
    = (se_b**2 + (b / a)**2 * se_a**2) / a**2, whatever the sign of a. The linearisation is only meaningful
    when a is clearly away from 0, hence the check on the control's own two-sided
    interval (t with ``control_df`` when given, else normal). The lift interval itself uses
    the normal quantile, as the delta method is a large-sample approximation.
    """
    if mean_a == 0.0:
        return RelativeLift(None, None, False, ZERO_CONTROL)
    lift = (mean_b - mean_a) / abs(mean_a)
    dist = stats.norm if control_df is None else stats.t(control_df)
    if abs(mean_a) <= float(dist.isf(alpha / 2.0)) * se_a:
        return RelativeLift(lift, None, False, NOT_ESTIMABLE)
    ratio = mean_b / mean_a
    se = math.sqrt(se_b ** 2 + ratio ** 2 * se_a ** 2) / abs(mean_a)
    return RelativeLift(lift, interval(lift, se, alpha, alternative), True, None)


def z_comparison(mean_a: float, var_a: float, mean_b: float, var_b: float, alpha: float,
                 alternative: Alternative) -> ZTestResult:
    """Compare two independent estimates with known sampling variances by a z-test."""
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        raise ValidationError("both estimates have zero variance; the test is undefined",
                              field="variance")
    diff = mean_b - mean_a
    z = diff / se
    rel = relative_lift(mean_a, math.sqrt(var_a), mean_b, math.sqrt(var_b), alpha, alternative)
    return ZTestResult(z, p_value(z, alternative), diff, se, interval(diff, se, alpha, alternative),
                       rel.lift, rel.ci, rel.estimable, rel.reason)
