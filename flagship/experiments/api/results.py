"""REST endpoints of an experiment's analysis: monitor, results, one metric over time, report."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response, request
from flask.views import MethodView

from flagship.api import make_blueprint, requires, runtime
from flagship.experiments import report

blp = make_blueprint("results", "Experiment monitor, results and reports")

MEDIA_TYPES = {"html": "text/html", "json": "application/json", "csv": "text/csv"}


class ReportArgs(ma.Schema):
    format = ma.fields.String(validate=ma.validate.OneOf(list(MEDIA_TYPES)),
                              metadata={"description": "html (default), json or csv; without it "
                                                       "the Accept header chooses"})


def _negotiated() -> str:
    """The format the Accept header prefers; html when it names none of ours."""
    media = request.accept_mimetypes.best_match(list(MEDIA_TYPES.values()), default="text/html")
    return next(name for name, value in MEDIA_TYPES.items() if value == media)


@blp.route("/experiments/<key>/monitor")
class Monitor(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self, key: str) -> dict[str, Any]:
        """Live: exposures per variant (total, per hour), event volume and means per metric,
        the sample-ratio check, progress to the minimum sample size, data-quality counters
        of the experiment's units"""
        from flagship.experiments.monitor import monitor

        return monitor(runtime(), key)


@blp.route("/experiments/<key>/results")
class Results(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self, key: str) -> dict[str, Any]:
        """SRM check, then per metric: variants, tests, CIs, lifts, adjusted and always-valid
        p-values, power and sample still needed; guardrails; a decision

        A read of the aggregates (kept current by the aggregation job; `pending` says what
        is not folded in yet). The always-valid p-value and confidence sequence come from
        the hourly looks of the data, so reading them never changes them.
        """
        from flagship.experiments.results import results

        return results(runtime(), key)


@blp.route("/experiments/<key>/metrics/<metric>")
class MetricResults(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self, key: str, metric: str) -> dict[str, Any]:
        """One metric's results plus its cumulative daily series (lift and CI per day)"""
        from flagship.experiments.series import metric_report

        return metric_report(runtime(), key, metric)


@blp.route("/experiments/<key>/report")
class Report(MethodView):
    @requires("admin")
    @blp.arguments(ReportArgs, location="query", as_kwargs=True)
    @blp.response(200)
    @blp.doc(responses={"200": {"description": "The report in the chosen format", "content": {
        "text/html": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}},
        "text/csv": {"schema": {"type": "string"}}}}})
    def get(self, key: str, format: str | None = None) -> Any:  # noqa: A002 (the query name)
        """The experiment report: hypothesis, setup, SRM, forest plot, metrics and decision

        `?format=html` (default) is a self-contained page for people; `json` is the
        setup, the full results and `generated_at`; `csv` has one row per metric x
        treatment. Without `format`, the `Accept` header chooses.
        """
        chosen = format or _negotiated()
        built = report.build_report(runtime(), key)
        vary = {"Vary": "Accept"}
        if chosen == "json":
            return built, 200, vary
        if chosen == "csv":
            disposition = f'attachment; filename="{key}-report.csv"'  # keys are [A-Za-z0-9_.-]
            return Response(report.render_csv(built), mimetype="text/csv",
                            headers={**vary, "Content-Disposition": disposition})
        return Response(report.render_html(built), mimetype="text/html", headers=vary)
