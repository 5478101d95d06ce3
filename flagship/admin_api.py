"""REST endpoints for the audit log and API keys."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from flagship import audit, auth
from flagship.api import (PageArgs, actor, make_blueprint, page_body, page_schema, require_unbound,
                          requires, runtime)

blp = make_blueprint("admin", "Audit log and API keys")


class AuditArgs(PageArgs):
    """Filters of `GET /audit`."""

    actor = fields.String()
    action = fields.String(metadata={"description": "e.g. flag.update"})
    target_type = fields.String(metadata={"description": "flag, segment, api_key, ..."})
    target = fields.String(metadata={"description": "key of the changed object"})
    environment = fields.String(metadata={"description": "the environment of the change"})
    since = fields.AwareDateTime(default_timezone=None)
    until = fields.AwareDateTime(default_timezone=None)


class AuditEntrySchema(ma.Schema):
    id = fields.Integer()
    at = fields.String()
    actor = fields.String()
    action = fields.String()
    target_type = fields.String()
    target = fields.String()
    environment = fields.String(allow_none=True)
    before = fields.Raw(allow_none=True)
    after = fields.Raw(allow_none=True)


AuditPageSchema = page_schema(AuditEntrySchema, "AuditPageSchema")


class KeyCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    scope = fields.String(required=True, validate=validate.OneOf(auth.SCOPES))
    environment = fields.String(validate=validate.Length(min=1, max=128), metadata={
        "description": "the environment the key is bound to (SDK keys: default production; "
                       "admin keys: every environment unless given)"})


class KeySchema(ma.Schema):
    name = fields.String()
    scope = fields.String()
    environment = fields.String(allow_none=True)
    prefix = fields.String()
    created_at = fields.String()
    created_by = fields.String()
    revoked_at = fields.String(allow_none=True)
    key = fields.String(metadata={"description": "the secret; only in the create response"})


@blp.route("/audit")
class Audit(MethodView):
    @requires("admin")
    @blp.arguments(AuditArgs, location="query")
    @blp.response(200, AuditPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """The audit log, newest first, filtered by actor, action, target or time"""
        items, total = audit.list_audit(runtime(), **args)
        return page_body(items, total, args["page"], args["per_page"])


@blp.route("/keys")
class Keys(MethodView):
    @requires("admin")
    @blp.response(200, KeySchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List API keys (never their secrets)"""
        return auth.list_keys(runtime())

    @requires("admin")
    @blp.arguments(KeyCreateSchema)
    @blp.response(201, KeySchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an API key; the secret is in this response only"""
        require_unbound("managing API keys")
        secret = auth.create_key(runtime(), actor(), body["name"], body["scope"],
                                 environment=body.get("environment"))
        listed = next(k for k in auth.list_keys(runtime()) if k["name"] == body["name"])
        return {**listed, "key": secret}


@blp.route("/keys/<path:name>")  # a name may hold "/"
class KeyByName(MethodView):
    @requires("admin")
    @blp.response(200, KeySchema)
    def delete(self, name: str) -> dict[str, Any]:
        """Revoke an API key; it stops working at once"""
        require_unbound("managing API keys")
        return auth.revoke_key(runtime(), actor(), name)
