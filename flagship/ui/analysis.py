"""An experiment's live monitor (a fragment that refreshes itself while the experiment is
active), its results (forest plot, cumulative lift with its band, the decision in plain
words) and "release the winner"."""
from __future__ import annotations

from typing import Any

from flask import Response, request
from markupsafe import Markup

from flagship.errors import FlagshipError, NotFoundError
from flagship.experiments import report, series, service
from flagship.experiments.model import ACTIVE
from flagship.experiments.monitor import monitor
from flagship.ui import forms
from flagship.ui.base import Errors, actor, bp, errors_from, flash_message, link, redirect_to, render, runtime
from flagship.ui.charts import colour_of, lift_chart, sparkline
from flagship.ui.experiments import experiment_in_env

REFRESH_SECONDS = 3


def monitor_view(key: str) -> dict[str, Any]:
    """The monitor plus what the fragment draws (bars, sparkline, progress)."""
    data = monitor(runtime(), key)
    totals = data["exposures"]["total"]
    most = max(totals.values(), default=0) or 1
    hourly = [sum(h["by_variant"].values()) for h in data["exposures"]["per_hour"]][-48:]
    return {**data, "bars": [{"variant": v, "units": n, "share": n / most, "colour": colour_of(i)}
                             for i, (v, n) in enumerate(totals.items())],
            "spark": sparkline(hourly, f"Exposures per hour, last {len(hourly)} hours"),
            "live": data["status"] in ACTIVE, "refresh": REFRESH_SECONDS,
            "updated": runtime().clock().strftime("%H:%M:%S UTC")}


@bp.route("/experiments/<key>/monitor")
def experiment_monitor(key: str) -> Any:
    """The live monitor: exposures per variant, SRM light, volume sparkline, progress."""
    experiment = experiment_in_env(key)
    return render("ui/experiments/monitor.html", "ui/experiments/_monitor.html",
                  section="ui.experiments", e=experiment, m=monitor_view(key))


@bp.route("/experiments/<key>/results")
def experiment_results(key: str) -> Any:
    """Results: the decision in plain words, the forest plot, lift over time, the winner."""
    return _results_page(key, Errors(), None)


def _results_page(key: str, errors: Errors, release: dict[str, Any] | None, status: int = 200) -> Any:
    experiment = experiment_in_env(key)
    built = report.build_report(runtime(), key)
    res = built["results"]
    level = (1 - res["significance_level"]) * 100
    charts = [{"metric": metric, "variant": v["variant"]} for metric in experiment["success_metrics"]
              for v in experiment["variants"] if not v["is_control"]]
    return render("ui/experiments/results.html", section="ui.experiments", e=experiment, res=res,
                  decision_text=report.decision_text(res["decision"]), level=level,
                  forest=Markup(report.forest_plot_svg(built)), charts=charts, errors=errors,
                  can_release=_can_release(experiment), status=status,
                  release=release or _release_defaults(experiment, res))


@bp.route("/experiments/<key>/lift/<metric>")
def experiment_lift(key: str, metric: str) -> Any:
    """One success metric's cumulative lift by day with its confidence band (a fragment the
    results page loads after itself: each costs a read of the hourly sums)."""
    experiment = experiment_in_env(key)
    try:
        found = series.metric_report(runtime(), key, metric)
    except NotFoundError as err:
        return render("ui/experiments/_lift.html", "ui/experiments/_lift.html", charts=[], error=err.message)
    level = (1 - experiment["significance_level"]) * 100
    charts = [{"variant": v["variant"], "svg": lift_chart(found["series"], v["variant"], metric, level)}
              for v in experiment["variants"] if not v["is_control"]]
    return render("ui/experiments/lift.html", "ui/experiments/_lift.html", section="ui.experiments",
                  e=experiment, metric=metric, charts=charts, error=None)


def _can_release(experiment: dict[str, Any]) -> bool:
    return experiment["status"] in ACTIVE or experiment["status"] == "completed"


def _release_defaults(experiment: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    winner = res["decision"].get("variant") or next(
        (v["variant"] for v in experiment["variants"] if not v["is_control"]), "")
    return {"variant": winner, "percentage": "100"}


@bp.route("/experiments/<key>/release", methods=["POST"])
def experiment_release(key: str) -> Any:
    """Release the winner: complete the experiment and serve the variant to a percentage."""
    experiment_in_env(key)
    errors = Errors()
    variant = request.form.get("variant", "")
    release = {"variant": variant, "percentage": request.form.get("percentage", "")}
    percentage = forms.number(request.form.get("percentage"), "percentage", errors, default=100.0)
    if not errors:
        try:
            service.release(runtime(), actor(), key, variant, percentage)
            flash_message(f"Released {variant} of {key} to {percentage:g}% of its audience.")
            return redirect_to(link("ui.experiment_detail", key=key))
        except FlagshipError as err:
            errors = errors_from(err)
            if not errors.fields:
                errors.add("variant", err.message)
    return _results_page(key, errors, release, status=errors.http_status)


@bp.route("/experiments/<key>/report")
def experiment_report(key: str) -> Any:
    """The printable experiment report (the same page as GET /api/v1/experiments/{key}/report)."""
    experiment_in_env(key)
    return Response(report.render_html(report.build_report(runtime(), key)), mimetype="text/html")
