"""Experiment screens: list by status, the form with its calculator, lifecycle buttons,
the monitor fragment, results with the forest plot and lift chart, release; the dashboard."""
from __future__ import annotations

import re
from typing import Any

from tests.conftest import boolean_flag
from tests.ui_support import UI, audit, field_error, ui  # noqa: F401 - fixture

FORM = {"key": "btn", "name": "Green button", "flag": "button", "layer": "main", "traffic_percentage": "50",
        "hypothesis": "green converts better", "owner": "ana",
        "variants.0.variant": "blue", "variants.0.weight": "1", "variants.0.value": "#00f",
        "variants.1.variant": "green", "variants.1.weight": "1", "variants.1.value": "#0a0", "control": "0",
        "success_metrics": "checkout", "minimum_sample_size": "100", "significance_level": "0.05",
        "power": "0.8", "multiple_testing": "holm"}


def setup_catalog(api: Any) -> None:
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/metrics", {"key": "checkout", "event": "purchase", "kind": "conversion"}, 201)
    api("post", "/metrics", {"key": "latency", "event": "page_ms", "kind": "mean", "direction": "decrease"}, 201)


def traffic(api: Any, sdk: dict[str, str], key: str, units: int, rates: dict[str, float]) -> None:
    names, events = list(rates), []
    for i in range(units):
        variant = names[i % len(names)]
        events.append({"event_id": f"x{i}", "unit": f"u{i}", "event": "$exposure", "experiment": key,
                       "variant": variant})
        if (i // len(names)) % 100 < rates[variant] * 100:
            events.append({"event_id": f"p{i}", "unit": f"u{i}", "event": "purchase", "value": 1})
    answer = api("post", "/experiments/events/batch", {"events": events}, 200, headers=sdk)
    assert not answer["rejected"]


def test_create_an_experiment_with_the_form(ui: UI, api: Any) -> None:
    setup_catalog(api)
    form = ui.get("/ui/experiments/-/new").text
    for label in ("Hypothesis", "Traffic (% of the layer)", "Variant 1 name", "Sample-size calculator",
                  "Success metrics", "Guardrails", "Minimum sample per variant", "Stop enrolling at"):
        assert label in form
    assert '<option value="main"' in form and 'value="checkout"' in form
    made = ui.post("/ui/experiments/-/new", {**FORM, "guardrail_metrics": "latency", "margins.latency": "0.05",
                                           "targeting.0.kind": "attribute", "targeting.0.attribute": "country",
                                           "targeting.0.operator": "in", "targeting.0.values": "NL"}, status=303)
    assert made.headers["Location"] == "/ui/experiments/btn?env=production"
    experiment = api("get", "/experiments/btn")
    assert experiment["status"] == "draft" and experiment["created_by"] == "ui:alice"
    assert experiment["guardrail_metrics"] == [{"metric": "latency", "margin": 0.05}]
    assert experiment["targeting"][0]["values"] == ["NL"] and experiment["traffic_percentage"] == 50
    assert api("get", "/flags/button")["variants"] == {"blue": "#00f", "green": "#0a0"}


def test_form_errors_land_next_to_their_fields(ui: UI, api: Any) -> None:
    setup_catalog(api)
    bad = ui.post("/ui/experiments/-/new", {**FORM, "traffic_percentage": "150", "minimum_sample_size": "many"},
                  status=422).text
    assert field_error(bad, "minimum_sample_size") == "must be a whole number"
    bad = ui.post("/ui/experiments/-/new", {**FORM, "traffic_percentage": "150"}, status=422).text
    assert "between 0 and 100" in field_error(bad, "traffic_percentage")
    bad = ui.post("/ui/experiments/-/new", {**FORM, "variants.1.weight": "-1"}, status=422).text
    assert "greater than 0" in field_error(bad, "variants.1.weight")
    api("get", "/experiments/btn", status=404)


def test_the_sample_size_calculator_is_inline(ui: UI, api: Any) -> None:
    setup_catalog(api)
    data = {**FORM, "calc.metric_type": "conversion", "calc.baseline": "0.1", "calc.mde": "0.01",
            "calc.mde_type": "absolute", "calc.power": "0.8"}
    answer = ui.post("/ui/experiments/-/new", {**data, "op": "calculate"}, htmx=True, status=200).text
    assert answer.lstrip().startswith('<form id="experiment-form"')
    needed = re.search(r"You need ([\d,]+) users per variant", answer).group(1)
    assert 14_000 < int(needed.replace(",", "")) < 15_500  # ~14,750 for 10% -> 11% at 80% power
    used = ui.post("/ui/experiments/-/new", {**data, "op": "use-sample"}, htmx=True, status=200).text
    assert f'name="minimum_sample_size" type="number" value="{needed.replace(",", "")}"' in used
    wrong = ui.post("/ui/experiments/-/new", {**data, "calc.baseline": "1.5", "op": "calculate"}, htmx=True).text
    assert field_error(wrong, "calc.baseline") or field_error(wrong, "calc.mde")
    api("get", "/experiments/btn", status=404)


def test_lifecycle_buttons_show_only_legal_moves(ui: UI, api: Any) -> None:
    setup_catalog(api)
    ui.post("/ui/experiments/-/new", FORM, status=303)

    def buttons() -> list[str]:
        html = ui.get("/ui/experiments/btn").text
        group = html[html.index('aria-label="Lifecycle"'):]
        return re.findall(r"/ui/experiments/btn/(start|pause|resume|stop|terminate|delete)\?", group[:group.index("</div>")])

    assert buttons() == ["start", "delete"]
    ui.post("/ui/experiments/btn/start", status=303)
    assert api("get", "/experiments/btn")["status"] == "running"
    assert buttons() == ["pause", "stop", "terminate"]
    ui.post("/ui/experiments/btn/pause", status=303)
    assert buttons() == ["resume", "stop", "terminate"]
    illegal = ui.post("/ui/experiments/btn/pause", status=409).text
    assert "cannot pause experiment" in illegal and "it is paused" in illegal
    ui.post("/ui/experiments/btn/resume", status=303)
    ui.post("/ui/experiments/btn/stop", status=303)
    assert buttons() == [] and api("get", "/experiments/btn")["status"] == "completed"
    actions = [r["action"] for r in audit(ui.runtime, target="btn", actor="ui:alice")]
    assert {"experiment.start", "experiment.pause", "experiment.resume", "experiment.stop"} <= set(actions)


def test_the_list_groups_by_status(ui: UI, api: Any) -> None:
    setup_catalog(api)
    ui.post("/ui/experiments/-/new", FORM, status=303)
    ui.post("/ui/experiments/-/new", {**FORM, "key": "other", "flag": "other-flag"}, status=303)
    ui.post("/ui/experiments/btn/start", status=303)
    page = ui.get("/ui/experiments").text
    assert page.index("Running (1)") < page.index("Draft (1)")
    only = ui.get("/ui/experiments?status=draft").text
    assert "other" in only and "Running (" not in only


def test_the_monitor_refreshes_itself_and_shows_exposures_srm_and_progress(ui: UI, api: Any, sdk: Any) -> None:
    setup_catalog(api)
    ui.post("/ui/experiments/-/new", FORM, status=303)
    ui.post("/ui/experiments/btn/start", status=303)
    detail = ui.get("/ui/experiments/btn").text
    assert 'hx-get="/ui/experiments/btn/monitor?env=production" hx-trigger="load"' in detail
    empty = ui.get("/ui/experiments/btn/monitor", htmx=True).text
    assert empty.lstrip().startswith('<div id="monitor"') and 'hx-trigger="every 3s"' in empty
    assert "SRM: not checked yet" in empty
    traffic(api, sdk, "btn", 200, {"blue": 0.1, "green": 0.2})
    from flagship.jobs import aggregate

    aggregate(ui.runtime)
    live = ui.get("/ui/experiments/btn/monitor", htmx=True).text
    assert re.search(r'data-variant="blue">100<', live) and re.search(r'data-variant="green">100<', live)
    assert "SRM: ok" in live and "100.0% of 100 units" in live and "<progress" in live
    assert 'aria-label="Exposures per hour' in live
    page = ui.get("/ui/experiments/btn/monitor").text
    assert "<html" in page and "Live monitor of Green button" in page
    ui.post("/ui/experiments/btn/stop", status=303)
    assert "hx-trigger" not in ui.get("/ui/experiments/btn/monitor", htmx=True).text  # stops polling


def test_results_show_the_decision_forest_plot_and_lift_over_time_then_release(ui: UI, api: Any, sdk: Any) -> None:
    setup_catalog(api)
    ui.post("/ui/experiments/-/new", FORM, status=303)
    ui.post("/ui/experiments/btn/start", status=303)
    traffic(api, sdk, "btn", 4000, {"blue": 0.10, "green": 0.20})
    from flagship.jobs import aggregate

    aggregate(ui.runtime)
    page = ui.get("/ui/experiments/btn/results").text
    assert "Ship green: it beats the control" in page
    assert 'aria-labelledby="forest-title"' in page and "Forest plot" in page
    assert 'hx-get="/ui/experiments/btn/lift/checkout?env=production" hx-trigger="load"' in page
    lift = ui.get("/ui/experiments/btn/lift/checkout", htmx=True).text
    assert "<html" not in lift and "Cumulative relative lift of green on checkout" in lift and "<polyline" in lift
    assert "<polygon" in lift or "stroke-opacity" in lift  # the confidence band / interval
    assert "Cumulative lift of checkout over time" in ui.get("/ui/experiments/btn/lift/checkout").text
    assert "has no metric" in ui.get("/ui/experiments/btn/lift/nope", htmx=True).text
    assert '<option value="green" selected>' in page  # the winner is preselected
    verdict = ui.get("/ui/experiments/btn/verdict", htmx=True).text
    assert "SRM: ok" in verdict and "Ship green" in verdict
    bad = ui.post("/ui/experiments/btn/release", {"variant": "purple", "percentage": "100"}, status=422).text
    assert "not a variant" in field_error(bad, "variant")
    bad = ui.post("/ui/experiments/btn/release", {"variant": "green", "percentage": "101"}, status=422).text
    assert "between 0 and 100" in field_error(bad, "percentage")
    ui.post("/ui/experiments/btn/release", {"variant": "green", "percentage": "100"}, status=303)
    assert api("get", "/experiments/btn")["status"] == "completed"
    flag = api("get", "/flags/button")
    assert flag["rules"][0]["kind"] == "release" and flag["rules"][0]["variant"] == "green"
    assert audit(ui.runtime, target="btn", action="experiment.release")[0]["actor"] == "ui:alice"
    report = ui.get("/ui/experiments/btn/report").text
    assert "experiment report" in report and "<script" not in report


def test_edit_a_running_experiment(ui: UI, api: Any) -> None:
    setup_catalog(api)
    ui.post("/ui/experiments/-/new", FORM, status=303)
    ui.post("/ui/experiments/btn/start", status=303)
    form = ui.get("/ui/experiments/btn/edit").text
    assert "its flag, layer and variant names are fixed" in form
    version = re.search(r'name="version" value="(\d+)"', form).group(1)
    data = {**FORM, "version": version, "variants.1.weight": "3"}
    ui.post("/ui/experiments/btn/edit", data, status=303)
    assert [v["weight"] for v in api("get", "/experiments/btn")["variants"]] == [1, 3]
    stale = ui.post("/ui/experiments/btn/edit", data, status=409).text
    assert "This experiment was changed by ui:alice" in stale


def test_an_experiment_of_another_environment_says_where_it_is(ui: UI, api: Any) -> None:
    setup_catalog(api)
    api("post", "/environments", {"key": "staging"}, 201)
    ui.post("/ui/experiments/-/new", FORM, status=303)
    assert "is in environment &#39;production&#39;" in ui.get("/ui/experiments/btn?env=staging", status=404).text


def test_the_dashboard(ui: UI, api: Any) -> None:
    setup_catalog(api)
    api("post", "/flags", boolean_flag("recent"), 201)
    ui.post("/ui/experiments/-/new", FORM, status=303)
    ui.post("/ui/experiments/btn/start", status=303)
    home = ui.get("/ui/").text
    assert "Running experiments" in home and 'hx-get="/ui/experiments/btn/verdict?env=production"' in home
    assert "Recently changed flags" in home and 'href="/ui/flags/recent?env=production"' in home
    assert "SRM: not checked yet" in ui.get("/ui/experiments/btn/verdict", htmx=True).text


def test_dashboard_sections_can_be_registered(ui: UI) -> None:
    from flagship.ui import home

    section = home.Section("Open alerts", "ui/_error.html",
                           lambda rt, env: {"title": "t", "message": f"none in {env}"})
    home.SECTIONS.append(section)
    try:
        page = ui.get("/ui/").text
        assert "<h2>Open alerts</h2>" in page and "none in production" in page
    finally:
        home.SECTIONS.remove(section)


def test_the_dashboard_verdict_is_the_decision_of_the_results(ui: UI, api: Any, sdk: Any) -> None:
    """The verdict cell reads the same looks as /results, so both say the same thing even
    on an early look (where only the always-valid test may call a winner)."""
    setup_catalog(api)
    ui.post("/ui/experiments/-/new", {**FORM, "minimum_sample_size": "100000"}, status=303)
    ui.post("/ui/experiments/btn/start", status=303)
    traffic(api, sdk, "btn", 4000, {"blue": 0.10, "green": 0.20})
    from flagship.jobs import aggregate

    aggregate(ui.runtime)
    decision = api("get", "/experiments/btn/results")["decision"]
    verdict = ui.get("/ui/experiments/btn/verdict", htmx=True).text
    import html

    from flagship.experiments.report import decision_text

    assert decision["action"] == "ship"  # 4,000 of 100,000: the always-valid test is already sure
    assert html.escape(decision_text(decision)) in verdict
