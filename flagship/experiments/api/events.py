"""REST endpoints for events in (single and batch) and the store's data-quality counters."""
from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort

from flagship.api import body_options, environment, make_blueprint, requires, runtime
from flagship.experiments import ingest
from flagship.openapi import event_body

blp = make_blueprint("events", "Events in, and data quality")


def _body() -> Any:
    # read (size-limited, parsed, after authentication) by flagship.api's request guard
    body = request.get_json(silent=True) if request.is_json else None
    if body is None:
        abort(400, message="the body must be JSON (Content-Type: application/json)")
    return body


@blp.route("/experiments/events")
class Event(MethodView):
    @requires("sdk")
    @body_options(limit="MAX_EVENT_BATCH_BYTES", items_checked=True)
    @blp.doc(requestBody=event_body(batch=False))
    @blp.response(202)
    def post(self) -> dict[str, Any]:
        """Record one event: {event_id?, unit, event, value?, timestamp?, properties?}

        `$exposure` events also carry `experiment` and `variant`; only the first exposure
        of a unit counts. Answered once the event is committed.
        """
        body = _body()
        if not isinstance(body, dict):
            abort(422, message="an event must be a JSON object", errors={"json": {"_schema": ["object"]}})
        result = ingest.ingest(runtime(), [body], environment=environment())
        if result.rejected:
            errors = result.rejected[0]["errors"]
            field = next(iter(errors))
            abort(422, message=f"invalid event: {field}: {errors[field][0]}", errors={"json": errors})
        return result.to_dict()


@blp.route("/experiments/events/batch")
class EventBatch(MethodView):
    @requires("sdk")
    @body_options(limit="MAX_EVENT_BATCH_BYTES", items_checked=True)
    @blp.doc(requestBody=event_body(batch=True))
    @blp.response(200)
    def post(self) -> dict[str, Any]:
        """Record up to 10,000 events: a list, or {"events": [...]}

        Each item is validated on its own: the answer is `{accepted, duplicates,
        rejected: [{index, errors}]}` and one bad item never sinks its neighbours.
        """
        body = _body()
        items = body.get("events") if isinstance(body, dict) else body
        if not isinstance(items, list):
            abort(400, message="send a JSON list of events or {\"events\": [...]}")
        limit = current_app.config["MAX_EVENT_BATCH"]
        if len(items) > limit:
            abort(413, message=f"{len(items)} events in one batch; the limit is {limit}")
        return ingest.ingest(runtime(), items, environment=environment()).to_dict()


@blp.route("/events/quality")
class EventQuality(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self) -> dict[str, Any]:
        """The whole store's data-quality counters (accepted, duplicate, rejected, late) and
        the events and exposures not yet aggregated"""
        from flagship.experiments.monitor import data_quality

        return data_quality(runtime())
