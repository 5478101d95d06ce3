"""Ratio metrics (sum of numerators / sum of denominators) by the delta method."""
from __future__ import annotations

import math
from dataclasses import dataclass

from flagship.errors import ValidationError
from flagship.experiments.stats.inference import (
    Alternative, ZTestResult, check_alpha, check_alternative, z_comparison,
)
from flagship.experiments.stats.summary import central_moment, sample_variance


@dataclass(frozen=True, slots=True)
class RatioStats:
    """A ratio of means with the delta-method variance of that estimate (se**2)."""

    n: int
    ratio: float
    variance: float
    mean_num: float
    mean_den: float

    @property
    def se(self) -> float:
        """Standard error of the ratio."""
        return math.sqrt(self.variance)


def ratio_metric_stats(n: int, sum_num: float, sum_den: float, sum_num2: float,
                       sum_den2: float, sum_num_den: float) -> RatioStats:
    """Ratio R = sum_num / sum_den over n units and its delta-method variance.

    The unit is the randomisation unit (e.g. a user with many sessions), so numerator and
    denominator are correlated within a unit. Linearising R = mean_num / mean_den gives
    Var(R) ~= (s_num**2 - 2 R s_num_den + R**2 s_den**2) / (n mean_den**2), with ddof=1
    sample moments.
    """
    if not n >= 2:
        raise ValidationError("needs at least 2 units", field="n")
    if sum_den == 0:
        raise ValidationError("the denominator sums to 0; the ratio is undefined", field="sum_den")
    for name, v in (("sum_num", sum_num), ("sum_den", sum_den), ("sum_num2", sum_num2),
                    ("sum_den2", sum_den2), ("sum_num_den", sum_num_den)):
        if not math.isfinite(v):
            raise ValidationError("must be a finite number", field=name)
    mean_num, mean_den = sum_num / n, sum_den / n
    r = sum_num / sum_den
    var_num = sample_variance(n, sum_num, sum_num2)
    var_den = sample_variance(n, sum_den, sum_den2)
    cov = central_moment(n, sum_num, sum_den, sum_num_den)
    variance = max(var_num - 2.0 * r * cov + r * r * var_den, 0.0) / (n * mean_den ** 2)
    return RatioStats(int(n), r, variance, mean_num, mean_den)


def ratio_test(a: RatioStats, b: RatioStats, alpha: float = 0.05,
               alternative: Alternative = "two-sided") -> ZTestResult:
    """Z-test of ratio_b - ratio_a, with the delta-method relative lift (ratio_b - ratio_a) / |ratio_a|."""
    check_alpha(alpha)
    check_alternative(alternative)
    return z_comparison(a.ratio, a.variance, b.ratio, b.variance, alpha, alternative)
