"""REST endpoints for rollouts, their actions, evaluations and policy templates."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from flagship.api import actor, environment, expected_version, make_blueprint, requires, runtime, versioned
from flagship.errors import ValidationError
from flagship.rollout import service
from flagship.rollout.model import STATUSES
from flagship.rollout.plan import MANUAL_ACTIONS

blp = make_blueprint("rollouts", "Progressive rollouts, their policies and actions")
KEY = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", error="letters, digits, '_', '.' or '-'")


class RolloutCreateSchema(ma.Schema):
    flag = fields.String(required=True, validate=KEY)
    rule_id = fields.String(required=True, validate=validate.Length(min=1, max=64),
                            metadata={"description": "a rollout or release rule of the flag"})
    template = fields.String(validate=KEY, metadata={"description": "copy this template's policy"})
    policy = fields.Dict(metadata={"description": "steps, checks, interval, actions (ROLLOUT.md "
                                                  "§3.2); merged over the template's"})
    description = fields.String(validate=validate.Length(max=10_000))


class RolloutListArgs(ma.Schema):
    environment = fields.String(validate=KEY)
    status = fields.String(validate=validate.OneOf(STATUSES))
    flag = fields.String(validate=KEY)


class ActionSchema(ma.Schema):
    check_id = fields.String(metadata={"description": "dismiss: the check whose failure to dismiss"})
    version = fields.Integer(metadata={"description": "optional: refuse if the rollout changed"})


class TemplateSchema(ma.Schema):
    key = fields.String(validate=KEY)
    name = fields.String(validate=validate.Length(max=256))
    description = fields.String(validate=validate.Length(max=10_000))
    policy = fields.Dict(required=True)
    version = fields.Integer(load_only=True)


@blp.route("/rollouts")
class Rollouts(MethodView):
    @requires("admin")
    @blp.arguments(RolloutListArgs, location="query")
    @blp.response(200)
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """List rollouts (filter by environment, status, flag)"""
        env = args.get("environment") and environment(args["environment"])
        return service.list_rollouts(runtime(), environment=env or None, status=args.get("status"),
                                     flag=args.get("flag"))

    @requires("admin")
    @blp.arguments(RolloutCreateSchema)
    @blp.response(201)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a draft rollout of a flag's rollout or release rule (from a template or a policy)"""
        return versioned(service.create_rollout(runtime(), actor(), body, environment()), 201)


@blp.route("/rollouts/<int:rollout_id>")
class RolloutById(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self, rollout_id: int) -> Any:
        """A rollout with its timeline of transitions and its latest check results"""
        return versioned(service.get_rollout(runtime(), rollout_id))


@blp.route("/rollouts/<int:rollout_id>/evaluations")
class RolloutEvaluations(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self, rollout_id: int) -> list[dict[str, Any]]:
        """The rollout's periodic evaluations, newest first (decision, reasons, check results)"""
        return service.list_evaluations(runtime(), rollout_id)


@blp.route("/rollouts/<int:rollout_id>/<action>")
class RolloutAction(MethodView):
    @requires("admin")
    @blp.arguments(ActionSchema)
    @blp.response(200)
    def post(self, body: dict[str, Any], rollout_id: int, action: str) -> Any:
        """start, pause, resume, advance, approve, dismiss (a failed check, this step),
        rollback, abort or restart (a new attempt); applied in this request"""
        if action not in MANUAL_ACTIONS:
            raise ValidationError(f"unknown action {action!r}; use one of {', '.join(MANUAL_ACTIONS)}",
                                  field="action")
        return versioned(service.act(runtime(), actor(), rollout_id, action, body.get("check_id"),
                                     body.get("version")))


@blp.route("/rollout-templates")
class Templates(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self) -> list[dict[str, Any]]:
        """Policy templates"""
        return service.list_templates(runtime())

    @requires("admin")
    @blp.arguments(TemplateSchema)
    @blp.response(201)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a policy template (rollouts copy it when they are created)"""
        if not body.get("key"):
            raise ValidationError("required", field="key")
        return versioned(service.save_template(runtime(), actor(), body["key"], body, create=True), 201)


@blp.route("/rollout-templates/<key>")
class TemplateByKey(MethodView):
    @requires("admin")
    @blp.response(200)
    def get(self, key: str) -> Any:
        """A policy template"""
        return versioned(service.get_template(runtime(), key))

    @requires("admin")
    @blp.arguments(TemplateSchema)
    @blp.response(200)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Replace a template's policy (needs If-Match or `version`)"""
        version = expected_version(body, required=True)
        return versioned(service.save_template(runtime(), actor(), key, body, version))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a template (existing rollouts keep their copy)"""
        service.delete_template(runtime(), actor(), key)


