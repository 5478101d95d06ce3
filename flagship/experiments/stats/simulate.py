"""A/A simulation: how often each way of analysing an experiment finds an effect that is not there.

Every simulated experiment has two arms drawn from the same distribution and is analysed at
``looks`` equally spaced looks, the last one at ``n`` units per arm. Data are drawn as exact
per-look batch summaries, so the cost grows with simulations x looks, never with units: a
binomial count per batch for conversions; for normal data the batch sum and, independent of
it, the centred sum of squares sigma**2 chi-square(m - 1).

Methods: the fixed-horizon test at the last look only; naive peeking (the same test at every
look, stop at the first p < alpha); the always-valid mSPRT (its running-minimum p reaches
alpha at some look; tau2 fixed at design time from the baseline and n); and group-sequential
O'Brien-Fleming-type Lan-DeMets efficacy boundaries at the looks. The per-look test is the
engine's pooled two-proportion z-test or Welch's t-test, vectorised over the same formulas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special

from flagship.errors import ValidationError
from flagship.experiments.stats.group_sequential import group_sequential_boundaries
from flagship.experiments.stats.inference import check_alpha
from flagship.experiments.stats.sequential import always_valid_p_values, default_tau2

SimMetric = Literal["conversion", "mean"]
SIM_METRICS: tuple[str, ...] = ("conversion", "mean")
METHODS: dict[str, str] = {
    "fixed_horizon": "fixed horizon (one look)",
    "naive_peeking": "naive peeking (every look)",
    "always_valid": "always-valid mSPRT",
    "obrien_fleming": "O'Brien-Fleming (Lan-DeMets)",
}
# Simulations are drawn and analysed in chunks of about this many (simulation, look) cells,
# which bounds memory; the chunking depends only on the inputs, so a seed gives one answer.
_CELLS = 1_000_000
# The boundaries of a group-sequential design take seconds beyond this many looks.
MAX_LOOKS = 100


@dataclass(frozen=True, slots=True)
class MethodResult:
    """False-positive rate of one analysis method, with its Monte-Carlo standard error.

    ``within_alpha`` is whether the rate is at most alpha + 2 standard errors.
    """

    method: str
    description: str
    rejections: int
    simulations: int
    false_positive_rate: float
    standard_error: float
    alpha: float
    within_alpha: bool


@dataclass(frozen=True, slots=True)
class AaLooks:
    """Cumulative per-arm sums at each look: ``n`` has shape (looks,), the sums (sims, looks)."""

    n: np.ndarray
    sum_a: np.ndarray
    sum_sq_a: np.ndarray
    sum_b: np.ndarray
    sum_sq_b: np.ndarray


@dataclass(frozen=True, slots=True)
class LookTests:
    """The two-sample test at every look: statistic, p-value, b - a and its unpooled variance."""

    statistic: np.ndarray
    p_value: np.ndarray
    difference: np.ndarray
    variance: np.ndarray


def look_sizes(n: int, looks: int) -> np.ndarray:
    """Units per arm at each of ``looks`` equally spaced looks ending at ``n``."""
    return np.rint(n * np.arange(1, looks + 1) / looks).astype(np.int64)


def simulate_looks(simulations: int, looks: int, n: int, metric: SimMetric, baseline: float,
                   std: float, rng: np.random.Generator) -> AaLooks:
    """Draw cumulative sums for both arms of ``simulations`` A/A experiments."""
    sizes = look_sizes(n, looks)
    batch = np.diff(sizes, prepend=0)
    arms = []
    for _ in range(2):
        if metric == "conversion":
            s = rng.binomial(batch, baseline, (simulations, looks)).astype(float)
            ss = s
        else:
            s = rng.normal(batch * baseline, std * np.sqrt(batch), (simulations, looks))
            # chi-square(0) is undefined in numpy; a batch of one unit has no spread of its own.
            centred = std ** 2 * rng.chisquare(np.maximum(batch - 1, 1), (simulations, looks))
            ss = np.where(batch > 1, centred, 0.0) + s ** 2 / batch
        arms.append((s.cumsum(axis=1), ss.cumsum(axis=1)))
    (sum_a, sq_a), (sum_b, sq_b) = arms
    return AaLooks(sizes, sum_a, sq_a, sum_b, sq_b)


def look_tests(data: AaLooks, metric: SimMetric) -> LookTests:
    """Two-sided pooled z-test (conversion) or Welch t-test (mean) at every look."""
    n = data.n.astype(float)
    mean_a, mean_b = data.sum_a / n, data.sum_b / n
    diff = mean_b - mean_a
    if metric == "conversion":
        pooled = (data.sum_a + data.sum_b) / (2.0 * n)
        se_pooled = np.sqrt(pooled * (1.0 - pooled) * 2.0 / n)
        safe = np.where(se_pooled > 0, se_pooled, 1.0)
        # As in proportions_z_test: all-or-nothing data carry no evidence (z = 0, p = 1).
        z = np.where(se_pooled > 0, diff / safe, 0.0)
        p = np.where(se_pooled > 0, 2.0 * special.ndtr(-np.abs(z)), 1.0)
        var = (mean_a * (1.0 - mean_a) + mean_b * (1.0 - mean_b)) / n
        return LookTests(z, p, diff, var)
    var_a = np.maximum((data.sum_sq_a - n * mean_a ** 2) / (n - 1.0), 0.0)
    var_b = np.maximum((data.sum_sq_b - n * mean_b ** 2) / (n - 1.0), 0.0)
    vn_a, vn_b = var_a / n, var_b / n
    se2 = vn_a + vn_b
    df = se2 ** 2 / ((vn_a ** 2 + vn_b ** 2) / (n - 1.0))
    t = diff / np.sqrt(se2)
    return LookTests(t, 2.0 * special.stdtr(df, -np.abs(t)), diff, se2)


def _check(simulations: int, looks: int, n: int, alpha: float, metric: str, baseline: float,
           std: float) -> None:
    for name, value in (("simulations", simulations), ("looks", looks)):
        if not (isinstance(value, int) and value >= 1):
            raise ValidationError("must be a positive whole number", field=name)
    if looks > MAX_LOOKS:
        raise ValidationError(f"at most {MAX_LOOKS} looks", field="looks")
    if not (isinstance(n, int) and n >= 2 * looks):
        raise ValidationError("needs at least 2 units per arm per look (n >= 2 x looks)",
                              field="n")
    check_alpha(alpha)
    if metric not in SIM_METRICS:
        raise ValidationError(f"must be one of {', '.join(SIM_METRICS)}", field="metric")
    if metric == "conversion" and not 0.0 < baseline < 1.0:
        raise ValidationError("must be a rate strictly between 0 and 1", field="baseline")
    if not math.isfinite(baseline):
        raise ValidationError("must be a finite number", field="baseline")
    if not (math.isfinite(std) and std > 0):
        raise ValidationError("must be a positive standard deviation", field="std")


def rejections(tests: LookTests, alpha: float, tau2: float,
                bounds: np.ndarray) -> dict[str, int]:
    """How many simulated experiments each method declares significant."""
    # A look with no variance at all (every unit 0, say) carries no evidence: p = 1.
    has_var = tests.variance > 0
    diff = np.where(has_var, tests.difference, 0.0)
    var = np.where(has_var, tests.variance, 1.0)
    valid_p = always_valid_p_values(diff, var, tau2)[:, -1]
    return {
        "fixed_horizon": int((tests.p_value[:, -1] < alpha).sum()),
        "naive_peeking": int((tests.p_value < alpha).any(axis=1).sum()),
        "always_valid": int((valid_p <= alpha).sum()),
        "obrien_fleming": int((np.abs(tests.statistic) >= bounds).any(axis=1).sum()),
    }


def simulate_aa(simulations: int = 2000, looks: int = 20, n: int = 2000, alpha: float = 0.05,
                metric: SimMetric = "conversion", baseline: float = 0.1, std: float = 1.0,
                seed: int | None = 1) -> tuple[MethodResult, ...]:
    """False-positive rate of each method over simulated A/A experiments (two-sided tests).

    ``n`` is units per arm at the last look; ``baseline`` is the conversion rate, or the mean
    of normal data with standard deviation ``std``.
    """
    _check(simulations, looks, n, alpha, metric, baseline, std)
    rng = np.random.default_rng(seed)
    sizes = look_sizes(n, looks)
    unit_var = baseline * (1.0 - baseline) if metric == "conversion" else std ** 2
    tau2 = default_tau2(2.0 * unit_var / n, alpha)  # the planned horizon, fixed up front
    bounds = np.asarray(group_sequential_boundaries(sizes / n, alpha, "obrien_fleming").efficacy)
    counts = dict.fromkeys(METHODS, 0)
    chunk = max(1, _CELLS // looks)
    for start in range(0, simulations, chunk):
        size = min(chunk, simulations - start)
        tests = look_tests(simulate_looks(size, looks, n, metric, baseline, std, rng), metric)
        for method, hits in rejections(tests, alpha, tau2, bounds).items():
            counts[method] += hits
    return tuple(_result(method, counts[method], simulations, alpha) for method in METHODS)


def _result(method: str, rejections: int, simulations: int, alpha: float) -> MethodResult:
    rate = rejections / simulations
    se = math.sqrt(rate * (1.0 - rate) / simulations)
    return MethodResult(method, METHODS[method], rejections, simulations, rate, se, alpha,
                        rate <= alpha + 2.0 * se)
