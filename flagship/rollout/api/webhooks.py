"""REST endpoints for webhooks and their delivery log."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from flagship.api import (PageArgs, actor, expected_version, make_blueprint, page_body, page_schema,
                          require_unbound, requires, runtime, versioned)
from flagship.rollout import notifications

blp = make_blueprint("webhooks", "Webhooks: signed HTTP notifications of changes, rollouts and alerts")

PATTERNS = ("event types or patterns with '*': flag.update, experiment.*, rollout.*, alert.opened, "
            "schedule.failed, * (everything)")


class WebhookBodySchema(ma.Schema):
    """A webhook as written by a client."""

    name = fields.String(validate=validate.Length(min=1, max=128))
    url = fields.String(validate=validate.Length(min=1, max=2048),
                        metadata={"description": "http(s) URL that receives a POST per event"})
    event_types = fields.List(fields.String(), validate=validate.Length(min=1, max=50),
                              metadata={"description": PATTERNS})
    environment = fields.String(allow_none=True, metadata={
        "description": "only events of this environment (default: every environment)"})
    enabled = fields.Boolean()
    secret = fields.String(load_only=True, validate=validate.Length(min=16, max=256), metadata={
        "description": "HMAC-SHA256 key of X-Flagship-Signature (generated when left out; "
                       "shown once, in the create response)"})
    version = fields.Integer(load_only=True)


class WebhookCreateSchema(WebhookBodySchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    event_types = fields.List(fields.String(), required=True, validate=validate.Length(min=1, max=50),
                              metadata={"description": PATTERNS})


class WebhookSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    url = fields.String()
    event_types = fields.List(fields.String())
    environment = fields.String(allow_none=True)
    enabled = fields.Boolean()
    version = fields.Integer()
    created_at = fields.String()
    created_by = fields.String()
    updated_at = fields.String()
    updated_by = fields.String()
    secret = fields.String(metadata={"description": "only in the create response"})


class DeliverySchema(ma.Schema):
    id = fields.Integer()
    webhook_id = fields.Integer()
    event_id = fields.String(metadata={"description": "X-Flagship-Delivery (the idempotency key)"})
    type = fields.String()
    attempt = fields.Integer(metadata={"description": "attempt number for this event and webhook"})
    ok = fields.Boolean(metadata={"description": "answered 2xx"})
    status_code = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    duration_ms = fields.Float()
    attempted_at = fields.String()


DeliveryPageSchema = page_schema(DeliverySchema, "DeliveryPageSchema")


@blp.route("/webhooks")
class Webhooks(MethodView):
    @requires("admin")
    @blp.response(200, WebhookSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List webhooks (their secrets are never shown again)"""
        return notifications.list_webhooks(runtime())

    @requires("admin")
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Add a webhook; the response holds its signing secret, shown this once"""
        require_unbound("managing webhooks")
        body.pop("version", None)
        return versioned(notifications.create_webhook(runtime(), actor(), body), 201)


@blp.route("/webhooks/<int:webhook_id>")
class WebhookById(MethodView):
    @requires("admin")
    @blp.response(200, WebhookSchema)
    def get(self, webhook_id: int) -> Any:
        """One webhook (without its secret)"""
        return versioned(notifications.get_webhook(runtime(), webhook_id))

    @requires("admin")
    @blp.arguments(WebhookBodySchema)
    @blp.response(200, WebhookSchema)
    def patch(self, body: dict[str, Any], webhook_id: int) -> Any:
        """Change some fields (If-Match or `version` optional); a new `secret` replaces the old one"""
        require_unbound("managing webhooks")
        version = expected_version(body)
        body.pop("version", None)
        return versioned(notifications.update_webhook(runtime(), actor(), webhook_id, body, version))

    @requires("admin")
    @blp.response(204)
    def delete(self, webhook_id: int) -> None:
        """Delete a webhook and its delivery log"""
        require_unbound("managing webhooks")
        notifications.delete_webhook(runtime(), actor(), webhook_id)


@blp.route("/webhooks/<int:webhook_id>/deliveries")
class WebhookDeliveries(MethodView):
    @requires("admin")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, DeliveryPageSchema)
    def get(self, args: dict[str, Any], webhook_id: int) -> dict[str, Any]:
        """A webhook's delivery log, newest first: every attempt with status, error and duration"""
        items, total = notifications.list_deliveries(runtime(), webhook_id, args["page"], args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])
