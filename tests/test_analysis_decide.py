"""The decision, the SRM verdict and the multiple-testing family, as table tests (pure)."""
from __future__ import annotations

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from flagship.experiments.analysis import decide
from flagship.experiments.model import Experiment, GuardrailMetric, Metric, Variant


def experiment(**extra):
    base = dict(key="e", name="e", flag="f", layer="l", salt="experiment:e",
                variants=(Variant("a", 1, True), Variant("b", 1), Variant("c", 1)),
                success_metrics=("conv", "rev"), guardrail_metrics=(GuardrailMetric("lat", 0.1),),
                minimum_sample_size=1000)
    return Experiment(**{**base, **extra})


METRICS = {"conv": Metric(key="conv", name="conv", event="buy", kind="conversion"),
           "rev": Metric(key="rev", name="rev", event="buy", kind="sum"),
           "lat": Metric(key="lat", name="lat", event="page", kind="mean", direction="decrease")}


def comparison(variant, diff, p, significant=None, guardrail=None, adjusted=None, always=None, sequence=None):
    """`always`: the always-valid adjusted p-value (significant below 0.05); `sequence`: its
    confidence sequence (by default around `diff`, excluding 0 when significant)."""
    c = {"variant": variant, "difference": diff, "p_value": p}
    if significant is not None:
        c["significant"] = significant
        c["adjusted_p_value"] = p if adjusted is None else adjusted
    if always is not None:
        if sequence is None:
            sequence = sorted([diff / 2, diff * 1.5]) if always < 0.05 else [-abs(diff), abs(diff)]
        c["always_valid"] = {"p_value": always, "adjusted_p_value": always, "significant": always < 0.05,
                             "confidence_sequence": sequence}
    if guardrail is not None:
        c["guardrail"] = {"status": guardrail}
    return c


def report(conv=(), rev=(), lat=()):
    return {"conv": {"metric": "conv", "role": "success", "comparisons": list(conv)},
            "rev": {"metric": "rev", "role": "success", "comparisons": list(rev)},
            "lat": {"metric": "lat", "role": "guardrail", "comparisons": list(lat)}}


NO_SRM = {"mismatch": False}
SRM = {"mismatch": True, "warning": "SAMPLE RATIO MISMATCH (p = 1e-9)"}
FULL = {"a": 1200, "b": 1100, "c": 1000}
HALF = {"a": 600, "b": 500, "c": 400}


@pytest.mark.parametrize("title, case, srm, counts, want, reason", [
    ("an SRM wins over everything",
     report(conv=[comparison("b", 0.05, 0.001, True)], lat=[comparison("b", 1, 0.2, guardrail="breached")]),
     SRM, FULL, "investigate", "SAMPLE RATIO MISMATCH"),
    ("a breached guardrail stops a winner",
     report(conv=[comparison("b", 0.05, 0.001, True)], lat=[comparison("c", 9, 0.001, guardrail="breached")]),
     NO_SRM, FULL, "stop", "guardrail lat breached by c"),
    ("at the planned sample a significant improvement of the primary metric ships",
     report(conv=[comparison("b", 0.05, 0.001, True), comparison("c", 0.02, 0.01, True)],
            lat=[comparison("b", -1, 0.3, guardrail="ok")]),
     NO_SRM, FULL, "ship", "b improves conv (adjusted p = 0.001 at the planned sample)"),
    ("before it, only the always-valid test calls a winner",
     report(conv=[comparison("b", 0.05, 0.001, True, always=0.01), comparison("c", 0.02, 0.01, True, always=0.2)]),
     NO_SRM, HALF, "ship", "b improves conv (always-valid adjusted p = 0.01, conclusive at any look)"),
    ("an early fixed-horizon significance is a lead, not a winner",
     report(conv=[comparison("b", 0.05, 0.001, True, always=0.2)]),
     NO_SRM, HALF, "keep_running", "b leads on conv (adjusted p = 0.001), but before the planned sample"),
    ("an early lead without an always-valid estimate yet is not a winner either",
     report(conv=[comparison("b", 0.05, 0.001, True)]), NO_SRM, HALF, "keep_running", "400 of 1000 units"),
    ("a significant drop is not a winner; futility once every arm has the sample",
     report(conv=[comparison("b", -0.05, 0.001, True)]), NO_SRM, FULL, "stop_for_futility",
     "every variant reached 1000 units"),
    ("significance on a secondary metric does not ship",
     report(conv=[comparison("b", 0.01, 0.3, False)], rev=[comparison("b", 3.0, 0.001, True)]),
     NO_SRM, HALF, "keep_running", "400 of 1000 units per variant"),
    ("an inconclusive guardrail does not stop",
     report(conv=[comparison("b", 0.01, 0.3, False)], lat=[comparison("b", 1, 0.2, guardrail="inconclusive")]),
     NO_SRM, HALF, "keep_running", "no conclusive result yet"),
    ("the smallest arm decides futility",
     report(conv=[comparison("b", 0.01, 0.3, False)]), NO_SRM, {"a": 5000, "b": 5000, "c": 999},
     "keep_running", "999 of 1000"),
])
def test_decision_precedence(title, case, srm, counts, want, reason):
    got = decide.decide(case, METRICS, ["conv", "rev"], srm, experiment(), counts)
    assert got["action"] == want and reason in got["reason"], (title, got)


def test_the_best_of_several_winners_ships():
    r = report(conv=[comparison("b", 0.02, 0.001, True), comparison("c", 0.05, 0.004, True)])
    got = decide.decide(r, METRICS, ["conv"], NO_SRM, experiment(), FULL)
    assert (got["action"], got["variant"]) == ("ship", "c")


def test_without_a_planned_sample_only_the_always_valid_test_calls_a_winner():
    early = report(conv=[comparison("b", 0.05, 0.0001, True, always=0.3)])
    got = decide.decide(early, METRICS, ["conv"], NO_SRM, experiment(minimum_sample_size=0), FULL)
    assert got["action"] == "keep_running" and "b leads on conv" in got["reason"]
    sure = report(conv=[comparison("b", 0.05, 0.0001, True, always=0.001)])
    assert decide.decide(sure, METRICS, ["conv"], NO_SRM, experiment(minimum_sample_size=0), FULL)["action"] == "ship"


def test_the_always_valid_family_is_adjusted_like_the_fixed_one():
    r = report(conv=[comparison("b", 0.05, 0.01), comparison("c", 0.02, 0.02)],
               rev=[comparison("b", 1.0, 0.03), comparison("c", 1.0, 0.04)])
    for c, p in zip(r["conv"]["comparisons"] + r["rev"]["comparisons"], (0.011, 0.02, 0.2, 0.04)):
        c["always_valid"] = {"p_value": p}
    decide.adjust(r, ["conv", "rev"], experiment(multiple_testing="holm"))
    holm = multipletests([0.011, 0.02, 0.2, 0.04], method="holm")[1]
    got = [c["always_valid"]["adjusted_p_value"] for c in r["conv"]["comparisons"] + r["rev"]["comparisons"]]
    assert got == pytest.approx(list(holm), rel=1e-12)
    assert [c["always_valid"]["significant"] for c in r["conv"]["comparisons"]] == [p < 0.05 for p in holm[:2]]


def test_without_a_minimum_sample_there_is_no_futility():
    r = report(conv=[comparison("b", 0.0, 0.9, False)])
    got = decide.decide(r, METRICS, ["conv"], NO_SRM, experiment(minimum_sample_size=0), FULL)
    assert got["action"] == "keep_running" and "1000 units in the smallest variant" in got["reason"]


def test_a_decrease_metric_improves_downwards():
    metrics = {**METRICS, "conv": Metric(key="conv", name="conv", event="x", kind="sum", direction="decrease")}
    r = report(conv=[comparison("b", -2.0, 0.001, True)])
    assert decide.decide(r, metrics, ["conv"], NO_SRM, experiment(), FULL)["action"] == "ship"


@pytest.mark.parametrize("method", ["holm", "bonferroni", "bh", "by", "none"])
def test_the_family_is_success_metrics_times_treatments(method):

    r = report(conv=[comparison("b", 0.01, 0.01), comparison("c", 0.01, 0.04)],
               rev=[comparison("b", 1, 0.02), comparison("c", 1, 0.5)],
               lat=[comparison("b", 1, 0.03), comparison("c", 1, 0.6)])
    decide.adjust(r, ["conv", "rev"], experiment(multiple_testing=method))
    family = r["conv"]["comparisons"] + r["rev"]["comparisons"]
    ps = [c["p_value"] for c in family]
    names = {"holm": "holm", "bonferroni": "bonferroni", "bh": "fdr_bh", "by": "fdr_by"}
    want = ps if method == "none" else list(multipletests(ps, method=names[method])[1])
    assert [c["adjusted_p_value"] for c in family] == pytest.approx(want, rel=1e-12)
    assert [c["significant"] for c in family] == [p < 0.05 for p in want]
    # guardrails are not in the family: judged at their own p-value
    assert [c["significant"] for c in r["lat"]["comparisons"]] == [True, False]
    assert all("adjusted_p_value" not in c for c in r["lat"]["comparisons"])


@pytest.mark.parametrize("counts, epochs, mismatch", [
    ({(1, "a"): 500, (1, "b"): 500, (1, "c"): 500}, [], False),
    ({(1, "a"): 700, (1, "b"): 400, (1, "c"): 400}, [], True),
    # 1:1:1 then 1:2:1: each epoch against its own weights
    ({(1, "a"): 300, (1, "b"): 300, (1, "c"): 300, (2, "a"): 250, (2, "b"): 500, (2, "c"): 250},
     [{"epoch": 1, "since": "t1", "weights": {"a": 1, "b": 1, "c": 1}},
      {"epoch": 2, "since": "t2", "weights": {"a": 1, "b": 2, "c": 1}}], False),
])
def test_srm_per_weight_epoch_equals_scipy(counts, epochs, mismatch):
    got = decide.srm(experiment(), counts, epochs)
    statistic, dof = 0.0, 0
    weights = {int(e["epoch"]): e["weights"] for e in epochs} or {1: {"a": 1, "b": 1, "c": 1}}
    for epoch in sorted({e for e, _ in counts}):
        observed = [counts[(epoch, v)] for v in "abc"]
        w = [weights[epoch][v] for v in "abc"]
        expected = [sum(observed) * x / sum(w) for x in w]
        statistic += stats.chisquare(observed, expected).statistic
        dof += 2
    assert got["statistic"] == pytest.approx(statistic, rel=1e-12)
    assert got["p_value"] == pytest.approx(stats.chi2.sf(statistic, dof), rel=1e-9)
    assert got["mismatch"] is mismatch and got["dof"] == dof
    assert ("weight_changes" in got) is (len(epochs) > 1)


def test_srm_without_units_is_not_checked():
    assert decide.srm(experiment(), {}, []) == {"checked": False, "mismatch": False, "warning": None,
                                                "observed": {"a": 0, "b": 0, "c": 0}}


def test_an_old_always_valid_p_value_never_ships_a_lead_that_reversed():
    """The always-valid p-value is a running minimum: it stays small after the estimate
    turned; the confidence sequence (a running intersection) says which side it is on."""
    reversed_lead = report(conv=[comparison("b", 0.015, 0.01, True, always=0.0005, sequence=[-0.020, -0.012])])
    got = decide.decide(reversed_lead, METRICS, ["conv"], NO_SRM, experiment(), HALF)
    assert got["action"] == "keep_running"


def test_a_member_without_an_always_valid_value_still_counts_in_the_family():
    r = report(conv=[comparison("b", 0.05, 0.01), comparison("c", 0.02, 0.02)])
    r["conv"]["comparisons"][0]["always_valid"] = {"p_value": 0.02}
    decide.adjust(r, ["conv"], experiment(multiple_testing="bonferroni"))
    assert r["conv"]["comparisons"][0]["always_valid"]["adjusted_p_value"] == pytest.approx(0.04)
