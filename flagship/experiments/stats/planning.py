"""Sample size, power and minimum detectable effect for means and proportions.

Means use a standardised effect d = (mu_b - mu_a) / sigma; proportions use Cohen's
h = 2 asin(sqrt(p_target)) - 2 asin(sqrt(p_baseline)) with the normal test. ``ratio``
is n_treatment / n_control and ``k`` treatment arms are each compared with the control
at the Bonferroni level alpha / k. The definitions follow statsmodels' NormalIndPower
and TTestIndPower (two-sided power counts both tails).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from scipy import optimize, special, stats

from flagship.errors import ValidationError
from flagship.experiments.stats.inference import Alternative, check_alpha, check_alternative

TestKind = Literal["z", "t"]
_MAX_N = 1e15


@dataclass(frozen=True, slots=True)
class SampleSizeResult:
    """Units needed per arm and in total; ceil'd counts are what to plan for."""

    n_control: float
    n_control_ceil: int
    n_treatment: float
    n_treatment_ceil: int
    total: float
    total_ceil: int
    effect_size: float
    alpha_per_comparison: float


@dataclass(frozen=True, slots=True)
class MdeResult:
    """Smallest detectable effect: standardised, and on the metric scale when known."""

    effect_size: float
    absolute: float | None
    relative: float | None
    target: float | None


def proportion_effect_size(baseline: float, target: float) -> float:
    """Cohen's h of moving from the baseline rate to the target rate."""
    for name, value in (("baseline", baseline), ("target", target)):
        if not 0.0 <= value <= 1.0:
            raise ValidationError("must be a rate between 0 and 1", field=name)
    return 2.0 * math.asin(math.sqrt(target)) - 2.0 * math.asin(math.sqrt(baseline))


def _resolve_effect(effect_size: float | None, baseline: float | None, target: float | None,
                    mde_abs: float | None, mde_rel: float | None, test: TestKind) -> float:
    given = [v is not None for v in (target, mde_abs, mde_rel)]
    if effect_size is not None:
        if baseline is not None or any(given):
            raise ValidationError("give either effect_size or a baseline rate, not both",
                                  field="effect_size")
        if not math.isfinite(effect_size) or effect_size == 0:
            raise ValidationError("must be a finite non-zero number", field="effect_size")
        return float(effect_size)
    if baseline is None or sum(given) != 1:
        raise ValidationError("give effect_size, or baseline with one of target, mde_abs, "
                              "mde_rel", field="effect_size")
    if test != "z":
        raise ValidationError("proportions use the normal test; set test='z'", field="test")
    if target is None:
        target = baseline + mde_abs if mde_abs is not None else baseline * (1.0 + mde_rel)
    h = proportion_effect_size(baseline, target)
    if h == 0:
        raise ValidationError("the target rate equals the baseline", field="target")
    return h


def _check_design(alpha: float, ratio: float, k: int, alternative: str, test: str) -> float:
    check_alpha(alpha)
    check_alternative(alternative)
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValidationError("must be a positive number", field="ratio")
    if not (isinstance(k, int) and k >= 1):
        raise ValidationError("must be a positive whole number of treatment arms", field="k")
    if test not in ("z", "t"):
        raise ValidationError("must be 'z' or 't'", field="test")
    return alpha / k


def _nct_cdf(df: float, nc: float, x: float) -> float:
    value = float(special.nctdtr(df, nc, x))
    # nctdtr gives NaN far out in a tail, where the answer is 0 or 1 to double precision.
    if math.isnan(value):
        return 0.0 if x < nc else 1.0
    return value


def _power(d: float, n1: float, alpha: float, ratio: float, alternative: Alternative,
           test: TestKind) -> float:
    nobs = 1.0 / (1.0 / n1 + 1.0 / (n1 * ratio))
    shift = d * math.sqrt(nobs)
    a = alpha / 2.0 if alternative == "two-sided" else alpha
    if test == "z":
        upper = stats.norm.sf(stats.norm.isf(a) - shift)
        lower = stats.norm.cdf(stats.norm.ppf(a) - shift)
    else:
        df = n1 * (1.0 + ratio) - 2.0
        # The t statistic is noncentral t with noncentrality d * sqrt(n_eff) under the effect.
        upper = 1.0 - _nct_cdf(df, shift, float(stats.t.isf(a, df)))
        lower = _nct_cdf(df, shift, float(stats.t.ppf(a, df)))
    if alternative == "larger":
        return float(upper)
    if alternative == "smaller":
        return float(lower)
    return float(upper + lower)


def _solve_increasing(f: Callable[[float], float], low: float, start: float, field: str) -> float:
    """Root of an increasing f on (low, inf), expanding the upper end until it brackets."""
    high = start
    while f(high) < 0:
        high *= 2.0
        if high > _MAX_N:
            raise ValidationError("no solution: the effect is too small to detect", field=field)
    if f(low) >= 0:
        return low
    return float(optimize.brentq(f, low, high, xtol=1e-12, rtol=4 * 2.220446049250313e-16,
                                 maxiter=500))


def _check_direction(d: float, alternative: str) -> None:
    if (alternative == "larger" and d < 0) or (alternative == "smaller" and d > 0):
        raise ValidationError(f"a one-sided '{alternative}' test needs an effect of matching sign",
                              field="effect_size")


def _ceil(x: float) -> int:
    # A solver answer of 100.0000000001 means 100 units, not 101.
    return math.ceil(x - 1e-9)


def sample_size(effect_size: float | None = None, *, baseline: float | None = None,
                target: float | None = None, mde_abs: float | None = None,
                mde_rel: float | None = None, alpha: float = 0.05, power: float = 0.8,
                ratio: float = 1.0, k: int = 1, alternative: Alternative = "two-sided",
                test: TestKind = "z") -> SampleSizeResult:
    """Control-arm size (and per-treatment-arm and total) for the requested power."""
    a = _check_design(alpha, ratio, k, alternative, test)
    check_alpha(power, field="power")
    d = _resolve_effect(effect_size, baseline, target, mde_abs, mde_rel, test)
    _check_direction(d, alternative)
    if power <= a:
        raise ValidationError("must exceed the per-comparison alpha", field="power")
    # The t-test needs positive degrees of freedom; below one the noncentral t is unstable,
    # and designs that small are meaningless anyway, so search from df = 1.
    low = 3.0 / (1.0 + ratio) if test == "t" else 1e-9
    n1 = _solve_increasing(lambda n: _power(d, n, a, ratio, alternative, test) - power,
                           low, 2.0 * max(low, 1.0), "effect_size")
    n1_ceil, n2_ceil = _ceil(n1), _ceil(n1 * ratio)
    return SampleSizeResult(n1, n1_ceil, n1 * ratio, n2_ceil, n1 * (1.0 + k * ratio),
                            n1_ceil + k * n2_ceil, d, a)


def power(effect_size: float | None = None, *, n_control: float, baseline: float | None = None,
          target: float | None = None, mde_abs: float | None = None,
          mde_rel: float | None = None, alpha: float = 0.05, ratio: float = 1.0, k: int = 1,
          alternative: Alternative = "two-sided", test: TestKind = "z") -> float:
    """Probability of a significant result for each treatment arm given the control size."""
    a = _check_design(alpha, ratio, k, alternative, test)
    d = _resolve_effect(effect_size, baseline, target, mde_abs, mde_rel, test)
    min_n = 2.0 / (1.0 + ratio) if test == "t" else 0.0
    if not (math.isfinite(n_control) and n_control > min_n):
        raise ValidationError("too few units for this test", field="n_control")
    return _power(d, n_control, a, ratio, alternative, test)


def minimum_detectable_effect(n_control: float, *, baseline: float | None = None,
                              std: float | None = None, alpha: float = 0.05,
                              power: float = 0.8, ratio: float = 1.0, k: int = 1,
                              alternative: Alternative = "two-sided",
                              test: TestKind = "z") -> MdeResult:
    """Smallest effect reaching the power; negative for 'smaller', h when a baseline is given."""
    a = _check_design(alpha, ratio, k, alternative, test)
    check_alpha(power, field="power")
    if power <= a:
        raise ValidationError("must exceed the per-comparison alpha", field="power")
    min_n = 2.0 / (1.0 + ratio) if test == "t" else 0.0
    if not (math.isfinite(n_control) and n_control > min_n):
        raise ValidationError("too few units for this test", field="n_control")
    if baseline is not None and test != "z":
        raise ValidationError("proportions use the normal test; set test='z'", field="test")
    if std is not None and not (math.isfinite(std) and std > 0):
        raise ValidationError("must be a positive standard deviation", field="std")
    sign = -1.0 if alternative == "smaller" else 1.0
    size = _solve_increasing(
        lambda m: _power(sign * m, n_control, a, ratio, alternative, test) - power,
        1e-12, 1.0, "n_control")
    d = sign * size
    if baseline is None:
        return MdeResult(d, None if std is None else d * std, None, None)
    return _proportion_mde(baseline, d)


def _proportion_mde(baseline: float, h: float) -> MdeResult:
    if not 0.0 < baseline < 1.0:
        raise ValidationError("must be a rate strictly between 0 and 1", field="baseline")
    angle = math.asin(math.sqrt(baseline)) + h / 2.0
    if not 0.0 <= angle <= math.pi / 2.0:
        raise ValidationError("even a rate of 0 or 1 would not be detectable at this size",
                              field="n_control")
    target = math.sin(angle) ** 2
    return MdeResult(h, target - baseline, (target - baseline) / baseline, target)
