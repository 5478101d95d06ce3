"""Variance reduction: CUPED regression adjustment and winsorization of heavy tails."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flagship.errors import ValidationError
from flagship.experiments.stats.summary import SufficientStats, central_moment, sample_variance


@dataclass(frozen=True, slots=True)
class CupedVariant:
    """One variant's CUPED-adjusted mean and per-unit variance next to the raw ones."""

    n: int
    mean: float
    variance: float
    unadjusted_mean: float
    unadjusted_variance: float
    variance_reduction: float


@dataclass(frozen=True, slots=True)
class CupedResult:
    """Pooled CUPED coefficient and the adjusted variants, in input order."""

    theta: float
    pre_mean: float
    variants: tuple[CupedVariant, ...]


def cuped_adjust(variants: Sequence[SufficientStats]) -> CupedResult:
    """CUPED: y - theta (x - mean x) with theta = cov(y, x) / var(x) pooled over all variants.

    theta is the OLS slope of y on x over every unit; pooling keeps one adjustment for all
    arms, and since randomisation makes x independent of assignment the adjusted
    difference stays unbiased. A constant pre-period (var x = 0) gives theta = 0.
    """
    if len(variants) == 0 or not all(v.has_pre for v in variants):
        raise ValidationError("every variant needs pre-exposure sums", field="variants")
    n = sum(v.n for v in variants)
    sy, sx = sum(v.sum for v in variants), sum(v.pre_sum for v in variants)  # type: ignore[misc]
    sxx = sum(v.pre_sum_sq for v in variants)  # type: ignore[misc]
    sxy = sum(v.cross_sum for v in variants)  # type: ignore[misc]
    var_x = sample_variance(n, sx, sxx)
    theta = central_moment(n, sy, sx, sxy) / var_x if var_x > 0 else 0.0
    pre_mean = sx / n
    out = []
    for v in variants:
        raw_var = v.variance
        # Var(y - theta x) within the variant, from its own second moments.
        adj_var = max(raw_var - 2.0 * theta * v.covariance + theta ** 2 * v.pre_variance, 0.0)
        reduction = 1.0 - adj_var / raw_var if raw_var > 0 else 0.0
        out.append(CupedVariant(v.n, v.mean - theta * (v.pre_mean - pre_mean), adj_var,
                                v.mean, raw_var, reduction))
    return CupedResult(theta, pre_mean, tuple(out))


def winsorize(values: Sequence[float] | np.ndarray, percentile: float) -> np.ndarray:
    """Cap values at their upper ``percentile`` (0-100, linear interpolation); lows untouched."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValidationError("must be a non-empty list of finite numbers", field="values")
    if not 0.0 < percentile <= 100.0:
        raise ValidationError("must be in (0, 100]", field="percentile")
    return np.minimum(x, np.percentile(x, percentile, method="linear"))
