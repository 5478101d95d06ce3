"""The sample-size and power calculator: engine numbers, statsmodels, summaries and every 422."""
from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power
from statsmodels.stats.proportion import proportion_effectsize

from flagship.experiments import stats
from flagship.experiments.api.calculator import blp

V = "/api/v1/stats"
CONVERSION = {"metric_type": "conversion", "baseline": 0.1, "mde": 0.01, "mde_type": "absolute"}


def test_the_app_registers_the_calculator(app: Any) -> None:
    assert app.blueprints["stats"] is blp


@pytest.fixture
def call(client: Any, sdk: dict[str, str]) -> Any:
    """POST to a calculator endpoint with an SDK key; assert the status; return the JSON."""
    def post(path: str, body: Any, status: int = 200) -> dict[str, Any]:
        response = client.post(f"{V}/{path}", json=body, headers=sdk)
        assert response.status_code == status, (path, body, response.status_code, response.json)
        return response.json
    return post


def _engine_options(body: dict[str, Any]) -> dict[str, Any]:
    return {"alpha": body.get("alpha", 0.05), "ratio": body.get("ratio", 1.0),
            "k": body.get("variants", 2) - 1, "alternative": body.get("alternative", "two-sided"),
            "test": body.get("test", "z")}


# (request body, the engine's effect arguments for the same design)
DESIGNS = [
    (CONVERSION, {"baseline": 0.1, "target": 0.11}),
    ({**CONVERSION, "variants": 4, "ratio": 0.5}, {"baseline": 0.1, "target": 0.11}),
    ({"metric_type": "conversion", "baseline": 0.2, "mde": -0.1, "mde_type": "relative",
      "alternative": "smaller", "alpha": 0.01, "power": 0.9}, {"baseline": 0.2, "target": 0.18}),
    ({"metric_type": "mean", "std": 4.0, "mde": 0.5}, {"effect_size": 0.125}),
    ({"metric_type": "mean", "baseline_mean": 20.0, "std": 8.0, "mde": 0.05,
      "mde_type": "relative", "test": "t", "ratio": 2.0, "variants": 3}, {"effect_size": 0.125}),
    ({"metric_type": "mean", "effect_size": 0.3, "alternative": "larger", "test": "t"},
     {"effect_size": 0.3}),
]


@pytest.mark.parametrize("body, effect", DESIGNS)
def test_sample_size_is_the_engines(call: Any, body: dict[str, Any],
                                    effect: dict[str, float]) -> None:
    got = call("sample-size", body)
    ref = stats.sample_size(**effect, power=body.get("power", 0.8), **_engine_options(body))
    assert (got["n_control"], got["n_treatment"], got["total"]) == (
        ref.n_control_ceil, ref.n_treatment_ceil, ref.total_ceil)
    assert got["n_control_exact"] == pytest.approx(ref.n_control, rel=1e-9)
    assert got["n_treatment_exact"] == pytest.approx(ref.n_treatment, rel=1e-9)
    assert got["effect_size"] == pytest.approx(ref.effect_size, rel=1e-9)
    assert got["alpha_per_comparison"] == pytest.approx(ref.alpha_per_comparison)
    assert got["total"] == got["n_control"] + (body.get("variants", 2) - 1) * got["n_treatment"]
    assert f"{got['n_control']:,}" in got["summary"] and f"{got['total']:,}" in got["summary"]


@pytest.mark.parametrize("body, effect", DESIGNS)
def test_power_and_mde_are_the_engines(call: Any, body: dict[str, Any],
                                       effect: dict[str, float]) -> None:
    design = {k: v for k, v in body.items() if k != "power"}
    got = call("power", {**design, "n_per_variant": 1500})
    options = _engine_options(body)
    assert got["power"] == pytest.approx(stats.power(**effect, n_control=1500, **options),
                                         rel=1e-9)
    rate = effect["baseline"] if body["metric_type"] == "conversion" else None
    mde = stats.minimum_detectable_effect(1500, baseline=rate, std=body.get("std"), power=0.8,
                                          **options)
    assert got["mde_power"] == 0.8
    assert got["mde"]["effect_size"] == pytest.approx(mde.effect_size, rel=1e-9)
    if body["metric_type"] == "conversion":
        assert got["mde"]["target"] == pytest.approx(mde.target, rel=1e-9)
    assert got["n_control"] == 1500
    assert got["n_treatment"] == pytest.approx(1500 * options["ratio"])


def test_the_issue_example_and_statsmodels(call: Any) -> None:
    got = call("sample-size", CONVERSION)
    h = proportion_effectsize(0.11, 0.1)
    n = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=1.0)
    assert got["effect_size"] == pytest.approx(h, rel=1e-12)
    assert got["n_control_exact"] == pytest.approx(n, rel=1e-6)
    assert (got["n_control"], got["n_treatment"], got["total"]) == (14745, 14745, 29490)
    assert got["summary"] == (
        "You need 14,745 users per variant (29,490 in total) to detect an absolute lift of "
        "1.0 pp from 10.0 % with 80 % power at a 5 % significance level.")
    powered = call("power", {**{k: v for k, v in CONVERSION.items()}, "n_per_variant": 10_000})
    assert powered["power"] == pytest.approx(
        NormalIndPower().power(h, 10_000, 0.05), rel=1e-9)
    assert powered["summary"] == (
        "With 10,000 users per variant (20,000 in total) you have 63.6 % power to detect an "
        "absolute lift of 1.0 pp from 10.0 % at a 5 % significance level; the smallest change "
        "detectable with 80 % power is 1.22 pp (10.0 % to 11.2 %).")


def test_three_arms_unequal_split_matches_statsmodels(call: Any) -> None:
    body = {"metric_type": "mean", "baseline_mean": 50.0, "std": 20.0, "mde": 0.04,
            "mde_type": "relative", "variants": 3, "ratio": 2.0, "alpha": 0.05, "power": 0.9}
    got = call("sample-size", body)
    n = zt_ind_solve_power(effect_size=2.0 / 20.0, alpha=0.025, power=0.9, ratio=2.0)
    assert got["n_control_exact"] == pytest.approx(n, rel=1e-6)
    assert got["n_control"] == math.ceil(n) and got["n_treatment"] == math.ceil(2 * n)
    assert got["total"] == math.ceil(n) + 2 * math.ceil(2 * n)
    assert got["alpha_per_comparison"] == pytest.approx(0.025)
    assert got["effect"] == pytest.approx({"effect_size": 0.1, "absolute": 2.0, "relative": 0.04,
                                           "baseline": 50.0, "target": 52.0})
    assert got["summary"] == (
        f"You need {math.ceil(n):,} users in the control and {math.ceil(2 * n):,} in each "
        f"treatment ({got['total']:,} in total) to detect a relative lift of 4 % from a mean "
        "of 50 (to 52, standard deviation 20) with 90 % power at a 5 % significance level "
        "(2.5 % per comparison, Bonferroni over 2 treatments).")


def test_power_at_the_planned_size_is_the_target_and_its_mde_the_planned_lift(call: Any) -> None:
    plan = call("sample-size", {**CONVERSION, "mde": 0.02, "variants": 3})
    got = call("power", {**CONVERSION, "mde": 0.02, "variants": 3,
                         "n_per_variant": plan["n_control"]})
    assert 0.8 <= got["power"] < 0.8005
    assert 0.0199 < got["mde"]["absolute"] <= 0.02
    assert got["alpha_per_comparison"] == pytest.approx(0.025)


def test_summaries_for_other_designs(call: Any) -> None:
    relative = call("sample-size", {**CONVERSION, "mde": 0.05, "mde_type": "relative",
                                    "alternative": "larger"})
    assert "a relative lift of 5 % (10.0 % to 10.5 %)" in relative["summary"]
    assert relative["summary"].endswith("at a 5 % significance level (one-sided).")
    drop = call("sample-size", {"metric_type": "mean", "std": 4, "mde": -0.5})
    assert "an absolute drop of 0.5 in the mean (standard deviation 4)" in drop["summary"]
    d = call("power", {"metric_type": "mean", "effect_size": 0.2, "n_per_variant": 1})
    assert d["summary"].startswith("With 1 user per variant (2 in total) you have ")
    # (z_0.975 + z_0.8) * sqrt(1 / 1 + 1 / 1) = 3.962
    assert d["summary"].endswith("the smallest change detectable with 80 % power is d = 3.962.")
    none = call("power", {**CONVERSION, "baseline": 0.5, "n_per_variant": 1})
    assert none["mde"] is None and "does not exist at this size" in none["summary"]


def test_needs_an_sdk_or_admin_key(client: Any, sdk: dict[str, str],
                                   admin: dict[str, str]) -> None:
    power_body = {**CONVERSION, "n_per_variant": 100}
    for path, body in (("sample-size", CONVERSION), ("power", power_body)):
        assert client.post(f"{V}/{path}", json=body).status_code == 401
        bad = {"Authorization": "Bearer fsk_sdk_nope"}
        assert client.post(f"{V}/{path}", json=body, headers=bad).status_code == 401
        assert client.post(f"{V}/{path}", json=body, headers=sdk).status_code == 200
        assert client.post(f"{V}/{path}", json=body, headers=admin).status_code == 200
    spec = client.get("/api/openapi.json").json
    assert {"/api/v1/stats/sample-size", "/api/v1/stats/power"} <= set(spec["paths"])


MEAN = {"metric_type": "mean", "std": 4.0, "mde": 0.5}
# (path, body, the field the 422 must name)
ERRORS = [
    ("sample-size", {**CONVERSION, "baseline": 0.0}, "baseline"),
    ("sample-size", {**CONVERSION, "baseline": 1.0}, "baseline"),
    ("sample-size", {**CONVERSION, "baseline": 1.5}, "baseline"),
    ("sample-size", {**CONVERSION, "baseline": "ten"}, "baseline"),
    ("sample-size", {"metric_type": "conversion", "mde": 0.01}, "baseline"),
    ("sample-size", {**CONVERSION, "mde": 0}, "mde"),
    ("sample-size", {"metric_type": "conversion", "baseline": 0.1}, "mde"),
    ("sample-size", {**CONVERSION, "baseline": 0.6, "mde": 0.8, "mde_type": "relative"}, "mde"),
    ("sample-size", {**CONVERSION, "mde": 0.9}, "mde"),
    ("sample-size", {**CONVERSION, "mde": -0.1}, "mde"),
    ("sample-size", {**CONVERSION, "mde": -1.0, "mde_type": "relative"}, "mde"),
    ("sample-size", {**CONVERSION, "mde": 1e-12}, "mde"),
    ("sample-size", {**CONVERSION, "mde": -0.01, "alternative": "larger"}, "mde"),
    ("sample-size", {**CONVERSION, "mde_type": "percent"}, "mde_type"),
    ("sample-size", {**CONVERSION, "metric_type": "ratio"}, "metric_type"),
    ("sample-size", {k: v for k, v in CONVERSION.items() if k != "metric_type"}, "metric_type"),
    ("sample-size", {**CONVERSION, "effect_size": 0.2}, "effect_size"),
    ("sample-size", {**CONVERSION, "std": 1.0}, "std"),
    ("sample-size", {**CONVERSION, "test": "t"}, "test"),
    ("sample-size", {**CONVERSION, "test": "chi2"}, "test"),
    ("sample-size", {**CONVERSION, "alpha": 0}, "alpha"),
    ("sample-size", {**CONVERSION, "alpha": 1}, "alpha"),
    ("sample-size", {**CONVERSION, "power": 1.0}, "power"),
    ("sample-size", {**CONVERSION, "power": 0.02, "alpha": 0.05}, "power"),
    ("sample-size", {**CONVERSION, "ratio": 0}, "ratio"),
    ("sample-size", {**CONVERSION, "variants": 1}, "variants"),
    ("sample-size", {**CONVERSION, "variants": 2.5}, "variants"),
    ("sample-size", {**CONVERSION, "alternative": "greater"}, "alternative"),
    ("sample-size", {**CONVERSION, "n_per_variant": 100}, "n_per_variant"),
    ("sample-size", {**CONVERSION, "colour": "red"}, "colour"),
    ("sample-size", {k: v for k, v in MEAN.items() if k != "std"}, "std"),
    ("sample-size", {**MEAN, "std": 0}, "std"),
    ("sample-size", {**MEAN, "std": -1}, "std"),
    ("sample-size", {**MEAN, "mde": 0.0}, "mde"),
    ("sample-size", {**MEAN, "baseline": 0.1}, "baseline"),
    ("sample-size", {**MEAN, "mde_type": "relative"}, "baseline_mean"),
    ("sample-size", {**MEAN, "mde_type": "relative", "baseline_mean": 0}, "baseline_mean"),
    ("sample-size", {**MEAN, "mde": 1e300, "std": 1e-300}, "mde"),
    ("sample-size", {"metric_type": "mean", "effect_size": 0.2, "std": 1.0}, "std"),
    ("sample-size", {"metric_type": "mean", "effect_size": 0}, "effect_size"),
    ("sample-size", {"metric_type": "mean", "effect_size": -0.2, "alternative": "larger"},
     "effect_size"),
    ("power", {**CONVERSION, "n_per_variant": 100, "power": 0.8}, "power"),
    ("power", CONVERSION, "n_per_variant"),
    ("power", {**CONVERSION, "n_per_variant": 0}, "n_per_variant"),
    ("power", {**CONVERSION, "n_per_variant": 10 ** 13}, "n_per_variant"),
    ("power", {**MEAN, "test": "t", "n_per_variant": 1}, "n_per_variant"),
    ("power", {**CONVERSION, "baseline": 0.95, "mde": 0.1, "n_per_variant": 10}, "mde"),
    ("power", {**CONVERSION, "n_per_variant": 100, "variants": 101}, "variants"),
]


def test_every_bad_input_is_a_422_naming_the_field(call: Any) -> None:
    for path, body, field in ERRORS:
        got = call(path, body, 422)
        assert got["code"] == 422 and field in got["errors"]["json"], (path, body, got)
        assert field in got["message"], (path, body, got)


def test_non_numbers_and_non_objects_are_422_and_bad_json_400(client: Any,
                                                               sdk: dict[str, str]) -> None:
    headers = {**sdk, "Content-Type": "application/json"}
    raw = json.dumps(CONVERSION).replace("0.05", "0.05").replace('"mde": 0.01', '"mde": NaN')
    for path in ("sample-size", "power"):
        nan = client.post(f"{V}/{path}", data=raw, headers=headers)
        assert nan.status_code == 422 and "mde" in nan.json["errors"]["json"]
        for body in ("[1, 2]", '"x"', "null", "{}"):
            got = client.post(f"{V}/{path}", data=body, headers=headers)
            assert got.status_code == 422, (path, body, got.json)
        broken = client.post(f"{V}/{path}", data="{nope", headers=headers)
        assert broken.status_code == 400 and "JSON" in broken.json["message"]


numbers = (st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10, 10 ** 15)
           | st.sampled_from([0, 1, -1, 0.5, 1e-300, 1e300, 2, 100]))
fuzzed = st.fixed_dictionaries({"metric_type": st.sampled_from(["conversion", "mean", "x"])},
                               optional={
    "baseline": numbers, "baseline_mean": numbers, "std": numbers, "mde": numbers,
    "mde_type": st.sampled_from(["absolute", "relative", "x"]), "effect_size": numbers,
    "alpha": numbers, "power": numbers, "ratio": numbers, "variants": numbers,
    "alternative": st.sampled_from(["two-sided", "larger", "smaller"]),
    "test": st.sampled_from(["z", "t"]), "n_per_variant": numbers,
})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=fuzzed)
def test_no_input_is_a_500(client: Any, sdk: dict[str, str], body: dict[str, Any]) -> None:
    for path in ("sample-size", "power"):
        response = client.post(f"{V}/{path}", json=body, headers=sdk)
        assert response.status_code in (200, 422), (path, body, response.json)
        if response.status_code == 200:
            assert response.json["summary"].endswith(".")
