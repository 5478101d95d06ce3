"""Marshmallow schemas of the layer and experiment API."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from flagship.api import PageArgs, page_schema
from flagship.flags.schemas import KEY, ConditionSchema


class LayerCreateSchema(ma.Schema):
    key = fields.String(required=True, validate=KEY)
    name = fields.String(validate=validate.Length(max=256))
    description = fields.String(validate=validate.Length(max=10_000))
    salt = fields.String(validate=validate.Length(min=1, max=128))


class LayerPatchSchema(ma.Schema):
    name = fields.String(validate=validate.Length(max=256))
    description = fields.String(validate=validate.Length(max=10_000))
    salt = fields.String(validate=validate.Length(min=1, max=128))
    version = fields.Integer(load_only=True)


class AllocationSchema(ma.Schema):
    experiment = fields.String()
    status = fields.String()
    ranges = fields.List(fields.List(fields.Integer()))
    percentage = fields.Float()


class LayerSchema(ma.Schema):
    key = fields.String()
    environment = fields.String()
    name = fields.String()
    description = fields.String()
    salt = fields.String()
    version = fields.Integer()
    created_at = fields.String()
    updated_at = fields.String()
    updated_by = fields.String()
    allocations = fields.List(fields.Nested(AllocationSchema))
    free_ranges = fields.List(fields.List(fields.Integer()))
    free_percentage = fields.Float()
    experiments = fields.List(fields.Dict())


class VariantSchema(ma.Schema):
    variant = fields.String(required=True, validate=validate.Length(min=1, max=64))
    weight = fields.Float(load_default=1.0, allow_nan=False)
    is_control = fields.Boolean(load_default=False)
    value = fields.Raw(allow_none=True, metadata={"description": "only to create a new flag"})


class GuardrailSchema(ma.Schema):
    metric = fields.String(required=True, validate=KEY)
    margin = fields.Float(load_default=0.0, allow_nan=False,
                          metadata={"description": "non-inferiority margin (relative)"})


class ExperimentBodySchema(ma.Schema):
    """Experiment configuration (seed 000's ExperimentConfig)."""

    key = fields.String(validate=KEY)
    name = fields.String(validate=validate.Length(max=256))
    description = fields.String(validate=validate.Length(max=10_000))
    hypothesis = fields.String(validate=validate.Length(max=10_000))
    owner = fields.String(validate=validate.Length(max=256))
    flag = fields.String(validate=KEY)
    layer = fields.String(validate=KEY)
    traffic_percentage = fields.Float(allow_nan=False)
    variants = fields.List(fields.Nested(VariantSchema), validate=validate.Length(max=50))
    targeting = fields.List(fields.Nested(ConditionSchema), validate=validate.Length(max=100))
    allowlist = fields.Dict(keys=fields.String(), values=fields.String())
    blocklist = fields.List(fields.String())
    start_at = fields.AwareDateTime(allow_none=True, default_timezone=None)
    end_at = fields.AwareDateTime(allow_none=True, default_timezone=None)
    minimum_sample_size = fields.Integer()
    significance_level = fields.Float(allow_nan=False)
    power = fields.Float(allow_nan=False)
    success_metrics = fields.List(fields.String(validate=KEY))
    guardrail_metrics = fields.List(fields.Nested(GuardrailSchema))
    metadata = fields.Dict(keys=fields.String())
    rule_position = fields.Integer(metadata={"description": "index of its rule on the flag (default 0)"})
    multiple_testing = fields.String(metadata={"description": "holm (default), bonferroni, bh, by, none"})
    salt = fields.String(validate=validate.Length(min=1, max=128), metadata={
        "description": "the variant hash's salt (default experiment:<key>); fixed once started"})
    version = fields.Integer(load_only=True)


class ExperimentCreateSchema(ExperimentBodySchema):
    key = fields.String(required=True, validate=KEY)
    flag = fields.String(required=True, validate=KEY)
    layer = fields.String(required=True, validate=KEY)
    variants = fields.List(fields.Nested(VariantSchema), required=True, validate=validate.Length(max=50))


class ExperimentReplaceSchema(ExperimentCreateSchema):
    """PUT body: like create, the key may be left out."""

    key = fields.String(validate=KEY)


class ExperimentSchema(ExperimentBodySchema):
    start_at = fields.String(allow_none=True)
    end_at = fields.String(allow_none=True)
    status = fields.String()
    ranges = fields.List(fields.List(fields.Integer()))
    allocated_percentage = fields.Float()
    rule_id = fields.String()
    environment = fields.String()
    weight_epochs = fields.List(fields.Dict(), metadata={
        "description": "the variant weights in effect since each change after the start"})
    version = fields.Integer(dump_only=True)
    started_at = fields.String(allow_none=True)
    ended_at = fields.String(allow_none=True)
    created_at = fields.String()
    created_by = fields.String()
    updated_at = fields.String()
    updated_by = fields.String()


class ExperimentListArgs(PageArgs):
    environment = fields.String(validate=KEY)
    status = fields.String(validate=validate.OneOf(["draft", "running", "paused", "completed", "terminated"]))
    layer = fields.String()
    flag = fields.String()


ExperimentPageSchema = page_schema(ExperimentSchema, "ExperimentPageSchema")


class StopSchema(ma.Schema):
    outcome = fields.String(load_default="completed", validate=validate.OneOf(["completed", "terminated"]))


class ReleaseSchema(ma.Schema):
    variant = fields.String(required=True)
    percentage = fields.Float(load_default=100.0, allow_nan=False)


class AssignSchema(ma.Schema):
    context = fields.Dict(required=True, keys=fields.String())


class AssignResultSchema(ma.Schema):
    experiment = fields.String()
    variant = fields.String(allow_none=True)
    value = fields.Raw(allow_none=True)
    in_experiment = fields.Boolean()
    reason = fields.String()
    sticky = fields.Boolean()


class ExplainSchema(ma.Schema):
    flag = fields.String(required=True)
    context = fields.Dict(required=True, keys=fields.String())
