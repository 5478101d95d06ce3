"""Per-variant sufficient statistics of one metric, built from the stored sums."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from flagship.experiments.model import Metric


@dataclass(frozen=True)
class VariantStats:
    """Sufficient statistics of one metric in one variant.

    `n` is the number of units the metric averages over: every exposed unit (units
    without events count as 0), except for `mean` metrics, whose units are those with at
    least one event. `sum`/`sum_sq` are of the per-unit value y, `pre_*` of the unit's
    pre-exposure value x and `cross` is sum(x*y). For ratio and mean metrics y is the
    numerator and `den_*` describe the per-unit denominator (for `mean`: the number of
    events), with `num_den` = sum(numerator * denominator).
    """

    variant: str
    n: int
    sum: float
    sum_sq: float
    pre_sum: float = 0.0
    pre_sum_sq: float = 0.0
    cross: float = 0.0
    den_sum: float = 0.0
    den_sum_sq: float = 0.0
    num_den: float = 0.0

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.sum_sq - self.sum * self.sum / self.n) / (self.n - 1))

    def value(self, metric: Metric) -> float | None:
        """What a person reads as the metric's value in this variant."""
        if metric.is_ratio:
            return self.sum / self.den_sum if self.den_sum else None
        return self.mean


def from_sums(variant: str, exposed: int, sums: Sequence[float], metric: Metric) -> VariantStats:
    """Statistics from the stored sums (units, sum, sum_sq, pre_sum, pre_sum_sq, cross,
    den_sum, den_sum_sq, num_den) and the variant's exposed units."""
    units, *rest = sums
    n = int(round(units)) if metric.kind == "mean" else exposed
    return VariantStats(variant, n, *rest)
