"""REST endpoints for scheduled flag changes (applied by the periodic job as system:schedule)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from flagship.api import actor, environment, make_blueprint, requires, runtime
from flagship.flags import schedule
from flagship.flags.schedule_store import STATUSES

blp = make_blueprint("schedules", "Scheduled flag changes: enable, disable, set a percentage at a time")


class ScheduleActionSchema(ma.Schema):
    """What to do: `{"action": "enable"}`, `{"action": "disable"}` or
    `{"action": "set_percentage", "rule_id", "percentage"}`."""

    class Meta:
        unknown = ma.INCLUDE  # named precisely by the service ("enable takes no rule_id")

    action = fields.String(required=True, validate=validate.OneOf(schedule.ACTIONS))
    rule_id = fields.String(metadata={"description": "set_percentage: a rollout or release rule"})
    percentage = fields.Raw(metadata={"description": "set_percentage: 0-100, at most 2 decimals"})


class ScheduleCreateSchema(ma.Schema):
    at = fields.AwareDateTime(required=True, metadata={"description": "when (ISO 8601 with a zone), "
                                                                      "in the future"})
    change = fields.Nested(ScheduleActionSchema, required=True)
    version = fields.Integer(metadata={"description": "optional: apply only if the flag is still at "
                                                      "this version (otherwise the change fails as stale)"})


class ScheduleArgs(ma.Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))


class ScheduledChangeSchema(ma.Schema):
    id = fields.Integer()
    flag = fields.String()
    environment = fields.String()
    at = fields.String()
    change = fields.Dict()
    status = fields.String(metadata={"description": "pending | applied | failed | cancelled"})
    created_at = fields.String()
    created_by = fields.String()
    applied_at = fields.String(allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": "why it failed"})
    cancelled_by = fields.String(allow_none=True)


def _create(body: dict[str, Any], key: str, env: str) -> dict[str, Any]:
    return schedule.create_schedule(runtime(), actor(), key, env, body["at"], body["change"],
                                    body.get("version"))


@blp.route("/flags/<key>/schedule")
class FlagSchedule(MethodView):
    @requires("admin")
    @blp.arguments(ScheduleArgs, location="query")
    @blp.response(200, ScheduledChangeSchema(many=True))
    def get(self, args: dict[str, Any], key: str) -> list[dict[str, Any]]:
        """A flag's scheduled changes in the environment named (?environment=, default production)"""
        return schedule.list_schedule(runtime(), key, environment(), args.get("status"))

    @requires("admin")
    @blp.arguments(ScheduleCreateSchema)
    @blp.response(201, ScheduledChangeSchema)
    def post(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        """Schedule a change of the flag in the environment named: enable, disable, or set a
        rollout or release rule's percentage at `at`"""
        return _create(body, key, environment())


@blp.route("/flags/<key>/schedule/<int:change_id>")
class FlagScheduleById(MethodView):
    @requires("admin")
    @blp.response(200, ScheduledChangeSchema)
    def delete(self, key: str, change_id: int) -> dict[str, Any]:
        """Cancel a pending change (409 once applied, failed or cancelled)"""
        return schedule.cancel_schedule(runtime(), actor(), key, environment(), change_id)


@blp.route("/flags/<key>/environments/<env>/schedule")
class FlagScheduleInEnvironment(MethodView):
    @requires("admin")
    @blp.arguments(ScheduleArgs, location="query")
    @blp.response(200, ScheduledChangeSchema(many=True))
    def get(self, args: dict[str, Any], key: str, env: str) -> list[dict[str, Any]]:
        """A flag's scheduled changes in one environment (canonical form)"""
        return schedule.list_schedule(runtime(), key, environment(env), args.get("status"))

    @requires("admin")
    @blp.arguments(ScheduleCreateSchema)
    @blp.response(201, ScheduledChangeSchema)
    def post(self, body: dict[str, Any], key: str, env: str) -> dict[str, Any]:
        """Schedule a change of the flag in one environment"""
        return _create(body, key, environment(env))


@blp.route("/flags/<key>/environments/<env>/schedule/<int:change_id>")
class FlagScheduleInEnvironmentById(MethodView):
    @requires("admin")
    @blp.response(200, ScheduledChangeSchema)
    def delete(self, key: str, env: str, change_id: int) -> dict[str, Any]:
        """Cancel a pending change in one environment"""
        return schedule.cancel_schedule(runtime(), actor(), key, environment(env), change_id)
