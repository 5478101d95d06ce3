"""The experiment statistics engine: pure functions over frozen dataclasses (numpy/scipy only).

Conventions: ``a`` is the control and ``b`` the treatment; differences, statistics and
lifts are b - a; ``alternative`` is 'two-sided', 'larger' (b > a) or 'smaller'; variances
of per-unit values are sample variances (ddof=1). Bad input raises
``flagship.errors.ValidationError``.
"""
from flagship.experiments.stats.contingency import (
    ChiSquareResult, ConversionResult, FisherResult, SrmResult, chi_square_test, conversion_test,
    fisher_exact_test, srm_test,
)
from flagship.experiments.stats.frequentist import (
    MannWhitneyResult, ProportionsResult, TTestResult, mann_whitney_test, proportions_z_test,
    welch_t_test,
)
from flagship.experiments.stats.group_sequential import (
    GroupSequentialBoundaries, group_sequential_boundaries, group_sequential_decision,
)
from flagship.experiments.stats.inference import Alternative, Interval, ZTestResult
from flagship.experiments.stats.multiple import adjust_p_values
from flagship.experiments.stats.planning import (
    MdeResult, SampleSizeResult, minimum_detectable_effect, power, proportion_effect_size,
    sample_size,
)
from flagship.experiments.stats.ratio import RatioStats, ratio_metric_stats, ratio_test
from flagship.experiments.stats.sequential import (
    AlwaysValidSeries, MsprtResult, always_valid_p_values, always_valid_series, default_tau2,
    msprt_test,
)
from flagship.experiments.stats.simulate import MethodResult, simulate_aa
from flagship.experiments.stats.spending import spending_function
from flagship.experiments.stats.summary import SufficientStats
from flagship.experiments.stats.variance import CupedResult, CupedVariant, cuped_adjust, winsorize

__all__ = [
    "Alternative", "AlwaysValidSeries", "ChiSquareResult", "ConversionResult", "CupedResult",
    "CupedVariant", "FisherResult", "GroupSequentialBoundaries", "Interval", "MannWhitneyResult",
    "MdeResult", "MsprtResult", "ProportionsResult", "RatioStats", "SampleSizeResult",
    "SrmResult", "SufficientStats", "TTestResult", "ZTestResult", "adjust_p_values",
    "always_valid_p_values", "always_valid_series", "chi_square_test", "conversion_test",
    "cuped_adjust", "default_tau2", "fisher_exact_test", "group_sequential_boundaries",
    "group_sequential_decision", "mann_whitney_test", "minimum_detectable_effect",
    "msprt_test", "power", "proportion_effect_size", "proportions_z_test", "ratio_metric_stats",
    "ratio_test", "sample_size", "spending_function", "srm_test", "welch_t_test", "winsorize",
]
__all__ += ["MethodResult", "simulate_aa"]
