"""REST endpoints for alerts and alert rules (seed AC5)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from flagship.api import (PageArgs, actor, bound_environment, environment, expected_version, make_blueprint,
                          page_body, page_schema, requires, runtime)
from flagship.rollout import alerting
from flagship.rollout.alerts import KINDS, SEVERITIES

blp = make_blueprint("alerts", "Alerts and alert rules on experiments and rollouts")

RULE_FIELDS = ("kind, severity (info|warning|critical), enabled, and the kind's parameters: srm "
               "{p_value, min_units}; guardrail_breach {check}; volume_drop / volume_spike {source: "
               "exposures|events, event, threshold, baseline_hours, min_baseline_hours}; no_exposures {hours}")


class AlertArgs(PageArgs):
    """Filters of `GET /alerts`."""

    status = fields.String(validate=validate.OneOf(alerting.STATUSES))
    subject = fields.String(metadata={"description": "experiment:KEY, rollout:ID or a bare key"})
    environment = fields.String()


class AlertSchema(ma.Schema):
    id = fields.Integer()
    rule_id = fields.Integer()
    subject_type = fields.String()
    subject_key = fields.String()
    environment = fields.String(allow_none=True)
    kind = fields.String()
    severity = fields.String()
    status = fields.String()
    message = fields.String()
    evidence = fields.Dict()
    opened_at = fields.String()
    acknowledged_at = fields.String(allow_none=True)
    acknowledged_by = fields.String(allow_none=True)
    resolved_at = fields.String(allow_none=True)
    resolution = fields.String(allow_none=True)


AlertPageSchema = page_schema(AlertSchema, "AlertPageSchema")


class AlertRuleBodySchema(ma.Schema):
    """An alert rule: kind, severity, enabled and the kind's parameters, flat."""

    class Meta:
        unknown = ma.INCLUDE  # the kind's parameters; validated by the service

    kind = fields.String(validate=validate.OneOf(KINDS))
    severity = fields.String(validate=validate.OneOf(SEVERITIES))
    enabled = fields.Boolean()
    version = fields.Integer(load_only=True)


class AlertRuleCreateSchema(AlertRuleBodySchema):
    subject_type = fields.String(required=True, validate=validate.OneOf(("experiment", "rollout")))
    subject_key = fields.String(required=True, validate=validate.Length(min=1, max=128),
                                metadata={"description": "an experiment key or a rollout id"})
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))


class AlertRuleSchema(ma.Schema):
    class Meta:
        unknown = ma.INCLUDE

    id = fields.Integer(allow_none=True)
    subject_type = fields.String()
    subject_key = fields.String()
    kind = fields.String()
    severity = fields.String()
    enabled = fields.Boolean()
    default = fields.Boolean(metadata={"description": "one of the default rules"})
    version = fields.Integer()

    @ma.post_dump(pass_original=True)
    def _params(self, data: dict[str, Any], original: Any, **_: Any) -> dict[str, Any]:
        return {**original, **data}  # keep the kind's parameters (flat) in the output


class AlertRuleListArgs(ma.Schema):
    subject_type = fields.String(validate=validate.OneOf(("experiment", "rollout")))
    subject_key = fields.String()


class ExperimentAlertRulesSchema(ma.Schema):
    rules = fields.List(fields.Dict(), required=True, metadata={"description": RULE_FIELDS})


class ExperimentAlertsSchema(ma.Schema):
    experiment = fields.String()
    rules = fields.List(fields.Nested(AlertRuleSchema))
    alerts = fields.List(fields.Nested(AlertSchema))


@blp.route("/alerts")
class Alerts(MethodView):
    @requires("admin")
    @blp.arguments(AlertArgs, location="query")
    @blp.response(200, AlertPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List alerts, newest first (filter by status open|acknowledged|resolved, subject, environment)"""
        named = args.get("environment")  # every environment's alerts unless one is named
        scope = environment(named) if named or bound_environment() else None  # (or the key's)
        items, total = alerting.list_alerts(runtime(), status=args.get("status"), subject=args.get("subject"),
                                            environment=scope,
                                            page=args["page"], per_page=args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])


@blp.route("/alerts/<int:alert_id>")
class AlertById(MethodView):
    @requires("admin")
    @blp.response(200, AlertSchema)
    def get(self, alert_id: int) -> dict[str, Any]:
        """One alert with its evidence"""
        return alerting.get_alert(runtime(), alert_id, bound_environment())


@blp.route("/alerts/<int:alert_id>/ack")
class AlertAck(MethodView):
    @requires("admin")
    @blp.response(200, AlertSchema)
    def post(self, alert_id: int) -> dict[str, Any]:
        """Acknowledge an open alert (it stays until its condition clears); 409 if resolved"""
        return alerting.acknowledge(runtime(), actor(), alert_id, bound_environment())


@blp.route("/experiments/<key>/alerts")
class ExperimentAlerts(MethodView):
    @requires("admin")
    @blp.response(200, ExperimentAlertsSchema)
    def get(self, key: str) -> dict[str, Any]:
        """An experiment's alert rules (the defaults if none are configured) and unresolved alerts"""
        return alerting.experiment_alerts(runtime(), key, bound_environment())

    @requires("admin")
    @blp.arguments(ExperimentAlertRulesSchema)
    @blp.response(200, ExperimentAlertsSchema)
    def post(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        """Configure an experiment's alert rules: the list replaces them (unchanged rules keep
        their open alerts; `[]` turns its alerts off)"""
        return alerting.configure_experiment(runtime(), actor(), key, body["rules"], bound_environment())


@blp.route("/alert-rules")
class AlertRules(MethodView):
    @requires("admin")
    @blp.arguments(AlertRuleListArgs, location="query")
    @blp.response(200, AlertRuleSchema(many=True))
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """List alert rules (filter by subject)"""
        return alerting.list_rules(runtime(), args.get("subject_type"), args.get("subject_key"),
                                   bound_environment())

    @requires("admin")
    @blp.arguments(AlertRuleCreateSchema)
    @blp.response(201, AlertRuleSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add an alert rule to an experiment or a rollout"""
        body.pop("version", None)
        return alerting.create_rule(runtime(), actor(), body, bound_environment())


@blp.route("/alert-rules/<int:rule_id>")
class AlertRuleById(MethodView):
    @requires("admin")
    @blp.response(200, AlertRuleSchema)
    def get(self, rule_id: int) -> dict[str, Any]:
        """One alert rule"""
        return alerting.get_rule(runtime(), rule_id, bound_environment())

    @requires("admin")
    @blp.arguments(AlertRuleBodySchema)
    @blp.response(200, AlertRuleSchema)
    def patch(self, body: dict[str, Any], rule_id: int) -> dict[str, Any]:
        """Change a rule's severity, enabled flag or parameters (If-Match or `version` optional);
        disabling resolves its open alert"""
        version = expected_version(body)
        body.pop("version", None)
        return alerting.update_rule(runtime(), actor(), rule_id, body, version, bound_environment())

    @requires("admin")
    @blp.response(204)
    def delete(self, rule_id: int) -> None:
        """Remove a rule; its open alert is resolved, its alerts are kept"""
        alerting.delete_rule(runtime(), actor(), rule_id, bound_environment())
