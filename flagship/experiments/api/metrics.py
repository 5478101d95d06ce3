"""REST endpoints for metric definitions, with their schemas."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from flagship.api import (PageArgs, actor, expected_version, make_blueprint, page_body, page_schema,
                          requires, runtime, versioned)
from flagship.experiments import metrics
from flagship.experiments.model import DIRECTIONS, EVENT_MAX, METRIC_KINDS
from flagship.flags.schemas import KEY

blp = make_blueprint("metrics", "Metric definitions")

EVENT = validate.Length(min=1, max=EVENT_MAX)


class MetricBodySchema(ma.Schema):
    """A metric definition as written by a client (PUT: the key may be left out)."""

    key = fields.String(validate=KEY)
    name = fields.String(validate=validate.Length(max=256))
    event = fields.String(required=True, validate=EVENT,
                          metadata={"description": "event name; names starting with '$' are reserved"})
    kind = fields.String(required=True, validate=validate.OneOf(METRIC_KINDS), metadata={
        "description": "conversion (did the event at least once), sum of values per unit, mean "
                       "event value (total value / events, over units with events), "
                       "count of events per unit, ratio (sum of event / sum of denominator_event "
                       "per unit, delta method)"})
    denominator_event = fields.String(allow_none=True, validate=EVENT,
                                      metadata={"description": "required for ratio metrics only"})
    direction = fields.String(validate=validate.OneOf(DIRECTIONS),
                              metadata={"description": "which way is good (default increase)"})
    winsorize_percentile = fields.Float(
        allow_none=True, allow_nan=False,
        validate=validate.Range(min=50, max=100, min_inclusive=False, max_inclusive=False),
        metadata={"description": "cap per-unit values at this percentile, e.g. 99"})
    description = fields.String(validate=validate.Length(max=10_000))
    version = fields.Integer(load_only=True)


class MetricCreateSchema(MetricBodySchema):
    key = fields.String(required=True, validate=KEY)


class MetricSchema(ma.Schema):
    key = fields.String()
    name = fields.String()
    event = fields.String()
    kind = fields.String()
    denominator_event = fields.String(allow_none=True)
    direction = fields.String()
    winsorize_percentile = fields.Float(allow_none=True)
    description = fields.String()
    version = fields.Integer()
    created_at = fields.DateTime()
    created_by = fields.String()
    updated_at = fields.DateTime()
    updated_by = fields.String()


MetricPageSchema = page_schema(MetricSchema, "MetricPageSchema")


@blp.route("/metrics")
class Metrics(MethodView):
    @requires("admin")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, MetricPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List metric definitions by key"""
        items, total = metrics.list_metrics(runtime(), args["page"], args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])

    @requires("admin")
    @blp.arguments(MetricCreateSchema)
    @blp.response(201, MetricSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Define a metric: an event, how it aggregates per unit, and which direction is good"""
        body.pop("version", None)
        return versioned(metrics.create_metric(runtime(), actor(), body), 201)


@blp.route("/metrics/<key>")
class MetricByKey(MethodView):
    @requires("admin")
    @blp.response(200, MetricSchema)
    def get(self, key: str) -> Any:
        """A metric definition"""
        return versioned(metrics.get_metric(runtime(), key))

    @requires("admin")
    @blp.arguments(MetricBodySchema)
    @blp.response(200, MetricSchema)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Replace a metric (needs If-Match or `version`; event and kind are frozen while a
        running or paused experiment uses it)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(metrics.replace_metric(runtime(), actor(), key, body, version))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a metric; 409 while any experiment references it"""
        metrics.delete_metric(runtime(), actor(), key)
