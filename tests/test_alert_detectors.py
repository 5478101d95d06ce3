"""Alert detectors (robust z on hourly counts, silence) and alert rule validation."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from flagship.errors import ValidationError
from flagship.rollout.alerts import (
    AlertRule, alert_rule_from_dict, alert_rule_to_dict, hourly_counts, no_exposures, robust_z,
    volume_anomaly,
)

RNG = np.random.default_rng(11)
TRAFFIC = RNG.poisson(200, 200).astype(float)


def test_robust_z_is_median_and_scaled_mad_of_the_trailing_baseline() -> None:
    series = np.append(TRAFFIC, 120.0)
    baseline = series[-25:-1]
    mad = stats.median_abs_deviation(baseline, scale=1.0)
    expected = (120.0 - np.median(baseline)) / (1.4826 * mad)
    assert mad > 0 and robust_z(series, 24) == pytest.approx(expected, rel=1e-12)
    # scipy's normal-consistent scale is 1.482602...; the published constant is 1.4826
    normal = stats.median_abs_deviation(baseline, scale="normal")
    assert robust_z(series, 24) == pytest.approx((120 - np.median(baseline)) / normal, rel=1e-5)


def test_robust_z_ignores_a_single_outlier_in_the_baseline() -> None:
    calm = np.append(TRAFFIC[:24], TRAFFIC[24])
    spiked = calm.copy()
    spiked[3] = 1e6
    assert abs(robust_z(spiked, 24) - robust_z(calm, 24)) < 0.2


def test_mad_zero_falls_back_to_mean_deviation_then_counting_noise() -> None:
    mostly_flat = np.array([100.0] * 20 + [140.0] * 4 + [150.0])
    mean_ad = np.mean(np.abs(mostly_flat[:-1] - 100.0))
    assert robust_z(mostly_flat, 24) == pytest.approx(50 / (1.253314 * mean_ad))
    flat = np.array([10000.0] * 24 + [9990.0])
    assert robust_z(flat, 24) == pytest.approx(-10 / 100)  # sqrt(10000): a wobble, not an alarm
    empty = np.array([0.0] * 24 + [3.0])
    assert robust_z(empty, 24) == pytest.approx(3.0)
    assert all(math.isfinite(robust_z(s, 24)) for s in (flat, empty, mostly_flat))


def test_robust_z_is_vectorised_over_rows() -> None:
    rows = np.vstack([np.append(TRAFFIC[:48], v) for v in (50.0, 200.0, 900.0)])
    z = robust_z(rows, 48)
    assert z.shape == (3,)
    assert list(z) == pytest.approx([robust_z(row, 48) for row in rows])
    assert z[0] < -3 < 3 < z[2] and abs(z[1]) < 1


@pytest.mark.parametrize("counts, hours", [([1.0] * 5, 5), ([1.0, math.nan, 2.0], 1),
                                           ([[[1.0]]], 1), ([1.0, 2.0], 0)])
def test_robust_z_rejects_bad_input(counts: Any, hours: int) -> None:
    with pytest.raises(ValidationError):
        robust_z(counts, hours)


def _series(values: np.ndarray, first_hour: int = 1000) -> dict[int, float]:
    return {first_hour + i: float(v) for i, v in enumerate(values)}


def test_volume_drop_and_spike_are_detected_on_the_last_complete_hour() -> None:
    base = _series(TRAFFIC[:72])  # hours 1000..1071
    dropped = base | {1072: 20.0}
    signal = volume_anomaly(dropped, now_hour=1073)
    assert signal is not None and signal.kind == "volume_drop" and signal.hour == 1072
    expected = robust_z(np.append(TRAFFIC[:72], 20.0), 72)
    assert signal.z == pytest.approx(expected) and signal.value == 20
    assert signal.baseline == pytest.approx(np.median(TRAFFIC[:72]))
    spike = volume_anomaly(base | {1072: 900.0}, now_hour=1073)
    assert spike is not None and spike.kind == "volume_spike" and spike.z > 3.5
    assert volume_anomaly(base | {1072: float(np.median(TRAFFIC[:72]))}, now_hour=1073) is None


def test_volume_baseline_window_and_silence() -> None:
    base = _series(TRAFFIC[:200])  # hours 1000..1199
    silent = volume_anomaly(base, now_hour=1201)  # hour 1200 has no entry: zero events
    assert silent is not None and silent.kind == "volume_drop" and silent.value == 0
    assert silent.z == pytest.approx(robust_z(np.append(TRAFFIC[32:200], 0.0), 168))
    young = _series(TRAFFIC[:10])
    assert volume_anomaly(young | {1010: 0.0}, now_hour=1011) is None  # 10 h < 24 h baseline
    assert volume_anomaly(young | {1010: 0.0}, now_hour=1011, min_baseline_hours=10) is not None
    assert volume_anomaly({}, now_hour=5) is None


def test_hours_before_the_data_began_are_not_zeros() -> None:
    late = _series(TRAFFIC[:30], first_hour=5000)
    signal = volume_anomaly(late | {5030: 200.0}, now_hour=5031, baseline_hours=168)
    assert signal is None  # a baseline padded with 138 zero hours would call 200 a spike


def test_hourly_counts_bins_timestamps() -> None:
    stamps = [3600 * 10 + 1, 3600 * 10 + 3599, 3600 * 12, 3600 * 9, 3600 * 13 + 5]
    assert list(hourly_counts(stamps, 10, 12)) == [2.0, 0.0, 1.0]
    assert list(hourly_counts([], 0, 2)) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("last, since, now, hours, silent", [
    (None, None, 100.0, 1, True), (0.0, None, 3599.0, 1, False), (0.0, None, 3600.0, 1, True),
    (None, 0.0, 1800.0, 1, False), (0.0, 7200.0, 9000.0, 1, False), (0.0, 100.0, 7300.0, 2, True),
])
def test_no_exposures(last: float | None, since: float | None, now: float, hours: float,
                      silent: bool) -> None:
    assert no_exposures(last, now, hours, since=since) is silent


@pytest.mark.parametrize("doc, params", [
    ({"kind": "srm"}, {"p_value": 0.001, "min_units": 8}),
    ({"kind": "guardrail_breach", "check": "errors"}, {"check": "errors"}),
    ({"kind": "volume_drop"}, {"source": "exposures", "event": None, "threshold": 3.5,
                               "baseline_hours": 168, "min_baseline_hours": 24}),
    ({"kind": "volume_spike", "source": "events", "event": "purchase", "threshold": 5,
      "baseline_hours": 48, "min_baseline_hours": 12},
     {"source": "events", "event": "purchase", "threshold": 5.0, "baseline_hours": 48,
      "min_baseline_hours": 12}),
    ({"kind": "no_exposures", "hours": 6}, {"hours": 6.0}),
])
def test_alert_rules_fill_defaults_and_round_trip(doc: dict[str, Any],
                                                  params: dict[str, Any]) -> None:
    rule = alert_rule_from_dict(doc)
    assert rule == AlertRule(doc["kind"], params)
    assert alert_rule_from_dict(alert_rule_to_dict(rule)) == rule


@pytest.mark.parametrize("doc, field", [
    ({"kind": "volume_crash"}, "kind"), ("srm", "kind"),
    ({"kind": "volume_drop", "threshold": "high"}, "threshold"),
    ({"kind": "volume_drop", "threshold": 0.5}, "threshold"),
    ({"kind": "volume_drop", "source": "events"}, "event"),
    ({"kind": "volume_drop", "event": "purchase"}, "event"),
    ({"kind": "volume_drop", "source": "logs"}, "source"),
    ({"kind": "volume_drop", "baseline_hours": 24, "min_baseline_hours": 48}, "min_baseline_hours"),
    ({"kind": "no_exposures", "hours": 0}, "hours"),
    ({"kind": "srm", "p_value": 2}, "p_value"),
    ({"kind": "srm", "hours": 3}, "hours"),
    ({"kind": "guardrail_breach", "check": ""}, "check"),
    ({"kind": "srm", "severity": "apocalyptic"}, "severity"),
    ({"kind": "srm", "enabled": "yes"}, "enabled"),
])
def test_alert_rule_errors_name_the_field(doc: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        alert_rule_from_dict(doc)
    assert info.value.field == field
