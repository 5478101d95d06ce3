"""Sufficient statistics of a metric per variant, the unit the warehouse hands the engine."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flagship.errors import ValidationError


@dataclass(frozen=True, slots=True)
class SufficientStats:
    """Count, sum and sum of squares of a metric, plus optional pre-exposure sums for CUPED.

    ``pre_sum`` / ``pre_sum_sq`` are the sums of each unit's pre-exposure value x of the
    same metric and ``cross_sum`` is the sum of y * x over units.
    """

    n: int
    sum: float
    sum_sq: float
    pre_sum: float | None = None
    pre_sum_sq: float | None = None
    cross_sum: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.n, (int, np.integer)) and self.n >= 0):
            raise ValidationError("must be a non-negative whole number", field="n")
        values = (self.sum, self.sum_sq, self.pre_sum, self.pre_sum_sq, self.cross_sum)
        if any(v is not None and not math.isfinite(v) for v in values):
            raise ValidationError("sums must be finite numbers", field="sum")
        pre = (self.pre_sum, self.pre_sum_sq, self.cross_sum)
        if any(v is None for v in pre) and any(v is not None for v in pre):
            raise ValidationError("give all of pre_sum, pre_sum_sq and cross_sum, or none",
                                  field="pre_sum")

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray,
                    pre_values: Sequence[float] | np.ndarray | None = None) -> SufficientStats:
        """Summarise per-unit values (and, aligned with them, pre-exposure values)."""
        y = np.asarray(values, dtype=float)
        if y.ndim != 1:
            raise ValidationError("must be a flat list of numbers", field="values")
        if pre_values is None:
            return cls(int(y.size), float(y.sum()), float(y @ y))
        x = np.asarray(pre_values, dtype=float)
        if x.shape != y.shape:
            raise ValidationError("needs one pre-exposure value per unit", field="pre_values")
        return cls(int(y.size), float(y.sum()), float(y @ y), float(x.sum()), float(x @ x),
                   float(y @ x))

    @property
    def has_pre(self) -> bool:
        """Whether pre-exposure sums are present."""
        return self.pre_sum is not None

    @property
    def mean(self) -> float:
        """Sample mean."""
        if self.n == 0:
            raise ValidationError("the mean of no units is undefined", field="n")
        return self.sum / self.n

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1)."""
        return sample_variance(self.n, self.sum, self.sum_sq)

    @property
    def pre_mean(self) -> float:
        """Mean of the pre-exposure values."""
        if self.pre_sum is None or self.n == 0:
            raise ValidationError("no pre-exposure data", field="pre_sum")
        return self.pre_sum / self.n

    @property
    def pre_variance(self) -> float:
        """Sample variance (ddof=1) of the pre-exposure values."""
        if self.pre_sum is None or self.pre_sum_sq is None:
            raise ValidationError("no pre-exposure data", field="pre_sum")
        return sample_variance(self.n, self.pre_sum, self.pre_sum_sq)

    @property
    def covariance(self) -> float:
        """Sample covariance (ddof=1) of the metric with its pre-exposure value."""
        if self.pre_sum is None or self.cross_sum is None:
            raise ValidationError("no pre-exposure data", field="pre_sum")
        return central_moment(self.n, self.sum, self.pre_sum, self.cross_sum)


def central_moment(n: float, sum_u: float, sum_v: float, sum_uv: float) -> float:
    """Sample (co)variance with ddof=1 from the sums of u, v and u * v."""
    if n < 2:
        raise ValidationError("needs at least 2 units", field="n")
    return (sum_uv - sum_u * sum_v / n) / (n - 1)


def sample_variance(n: float, total: float, total_sq: float) -> float:
    """Sample variance with ddof=1 from the sum and the sum of squares."""
    # Rounding in the raw sums can leave a tiny negative variance for a constant metric.
    return max(central_moment(n, total, total, total_sq), 0.0)
