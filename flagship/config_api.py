"""REST endpoints of configuration as code: export, and apply with a diff (`flagship.configfile`)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response
from flask.views import MethodView
from marshmallow import fields, validate

from flagship import configfile
from flagship.api import actor, make_blueprint, require_unbound, requires, runtime

blp = make_blueprint("config", "Configuration as code: export and apply")


class ExportArgs(ma.Schema):
    format = fields.String(load_default="json", validate=validate.OneOf(("json", "yaml")),
                           metadata={"description": "json (default) or yaml (the file `flagship "
                                                    "config export` writes)"})


class ApplySchema(ma.Schema):
    config = fields.Dict(required=True, metadata={
        "description": "the configuration document (what GET /config returns)"})
    dry_run = fields.Boolean(load_default=False, metadata={
        "description": "only show the changes, apply nothing"})


class ConfigChangeSchema(ma.Schema):
    kind = fields.String(metadata={"description": "environment, metric, segment, flag, layer, experiment, "
                                                  "rollout_template, webhook"})
    key = fields.String()
    environment = fields.String(allow_none=True)
    action = fields.String(metadata={"description": "create or update"})
    version = fields.Integer(allow_none=True, metadata={"description": "the version the plan saw"})
    changes = fields.List(fields.Dict(), metadata={"description": "{path, op, before?, after?}"})
    secret_generated = fields.Boolean(metadata={
        "description": "webhook creates only: applying generates its signing secret (see `secrets`)"})


class ApplyResultSchema(ma.Schema):
    dry_run = fields.Boolean()
    changes = fields.List(fields.Nested(ConfigChangeSchema))
    unchanged = fields.Integer(metadata={"description": "objects of the file already as written"})
    applied = fields.Boolean()
    change_set = fields.String(allow_none=True, metadata={
        "description": "id of the `config.apply` audit record of this change set"})
    secrets = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "webhook name -> the signing secret generated for a webhook this apply "
                       "created, shown this once (empty in a dry run)"})


@blp.route("/config")
class Config(MethodView):
    @requires("admin")
    @blp.arguments(ExportArgs, location="query")
    @blp.response(200, headers={"Content-Type": {"schema": {"type": "string"}}})
    @blp.doc(responses={"200": {"description": "The configuration document", "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/yaml": {"schema": {"type": "object"}}}}})
    def get(self, args: dict[str, Any]) -> Any:
        """The configuration as one document: environments, metrics, segments, flags with
        their targeting per environment, layers, experiments, rollout templates and webhooks
        (never their secrets)"""
        doc = configfile.export_config(runtime())
        if args["format"] == "yaml":
            return Response(configfile.dump_text(doc), mimetype="application/yaml")
        return doc


@blp.route("/config/apply")
class ConfigApply(MethodView):
    @requires("admin")
    @blp.arguments(ApplySchema)
    @blp.response(200, ApplyResultSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Make the objects named in a configuration document look as written: the diff per
        object with `dry_run`, else everything in one transaction under version checks (409
        naming the object changed meanwhile), audited as one change set; idempotent. The
        secrets of webhooks it creates are generated and returned once, in `secrets`"""
        require_unbound("applying a configuration")
        return configfile.apply_config(runtime(), actor(), body["config"], dry_run=body["dry_run"])
