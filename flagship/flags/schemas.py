"""Marshmallow schemas of the flag API: shapes and types here, semantics in the core."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from flagship.api import PageArgs, page_schema

KEY = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
                      error="must be 1-128 letters, digits, '_', '.' or '-', starting with a "
                            "letter or digit")


class ConditionSchema(ma.Schema):
    """`{attribute, operator, values, negate}` or `{segment, negate}`."""

    def get_attribute(self, obj: object, attr: str, default: object) -> object:
        # documents are dicts, and `values` would otherwise resolve to dict.values
        return obj.get(attr, default) if isinstance(obj, dict) else super().get_attribute(obj, attr, default)

    attribute = fields.String(validate=validate.Length(min=1, max=256))
    operator = fields.String(validate=validate.Length(min=1, max=64))
    values = fields.List(fields.Raw(allow_none=True), validate=validate.Length(max=10_000))
    negate = fields.Boolean()
    segment = fields.String(validate=KEY)

    @ma.validates_schema
    def _one_form(self, data: dict, **_: object) -> None:
        if "segment" in data:
            extra = sorted(set(data) - {"segment", "negate"})
            if extra:
                raise ma.ValidationError(f"a segment condition takes no {', '.join(extra)}")
        elif "attribute" not in data or "operator" not in data:
            raise ma.ValidationError("a condition needs 'attribute' and 'operator' (or 'segment')")


class RuleSchema(ma.Schema):
    """A targeting rule; `kind` decides which of the other fields apply."""

    id = fields.String(validate=validate.Length(min=1, max=64))
    kind = fields.String(required=True)
    conditions = fields.List(fields.Nested(ConditionSchema), validate=validate.Length(max=100))
    variant = fields.String()
    percentage = fields.Float(allow_nan=False)
    params = fields.Dict(keys=fields.String())


class FlagBodySchema(ma.Schema):
    """A flag document as written by a client."""

    key = fields.String(validate=KEY)
    type = fields.String(validate=validate.OneOf(["boolean", "string", "number", "json"]))
    variants = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=64)),
                           values=fields.Raw(allow_none=True))
    default_variant = fields.String()
    off_variant = fields.String()
    enabled = fields.Boolean()
    rules = fields.List(fields.Nested(RuleSchema), validate=validate.Length(max=500))
    allowlist = fields.Dict(keys=fields.String(), values=fields.String())
    blocklist = fields.List(fields.String())
    salt = fields.String(validate=validate.Length(min=1, max=128))
    description = fields.String(validate=validate.Length(max=10_000))
    tags = fields.List(fields.String(validate=validate.Length(min=1, max=64)))
    version = fields.Integer(load_only=True, metadata={"description": "version this write edits"})


class FlagReplaceSchema(FlagBodySchema):
    """PUT body: type, variants and default_variant are required."""

    type = fields.String(required=True,
                         validate=validate.OneOf(["boolean", "string", "number", "json"]))
    variants = fields.Dict(required=True, keys=fields.String(validate=validate.Length(min=1, max=64)),
                           values=fields.Raw(allow_none=True))
    default_variant = fields.String(required=True)


class FlagCreateSchema(FlagReplaceSchema):
    """POST body: a replace body plus the key."""

    key = fields.String(required=True, validate=KEY)


class EnvironmentSummarySchema(ma.Schema):
    enabled = fields.Boolean()
    rules = fields.Integer(metadata={"description": "how many rules"})
    default_variant = fields.String()
    off_variant = fields.String()
    version = fields.Integer()
    updated_at = fields.String()
    updated_by = fields.String()


class FlagSchema(FlagBodySchema):
    """A stored flag in one environment: its document, version and timestamps."""

    environment = fields.String(dump_only=True)
    environments = fields.Dict(keys=fields.String(), values=fields.Nested(EnvironmentSummarySchema),
                               dump_only=True, metadata={"description": "targeting per environment "
                                                         "(on GET /flags/{key})"})
    version = fields.Integer(dump_only=True)
    created_at = fields.String(dump_only=True)
    created_by = fields.String(dump_only=True)
    updated_at = fields.String(dump_only=True)
    updated_by = fields.String(dump_only=True)


class VersionSchema(ma.Schema):
    """Optional body of state-changing calls that carry a version."""

    version = fields.Integer()


class EnvironmentArgs(ma.Schema):
    """The environment a call acts in (default: the key's own, else production)."""

    environment = fields.String(validate=KEY)


class FlagListArgs(PageArgs):
    """Filters of `GET /flags`."""

    environment = fields.String(validate=KEY)
    tag = fields.String()
    q = fields.String(metadata={"description": "case-insensitive search in key and description"})


FlagPageSchema = page_schema(FlagSchema, "FlagPageSchema")


class RevisionSchema(ma.Schema):
    version = fields.Integer()
    environment = fields.String()
    action = fields.String()
    actor = fields.String()
    created_at = fields.String()
    document = fields.Dict()
    diff = fields.List(fields.Dict())


RevisionPageSchema = page_schema(RevisionSchema, "RevisionPageSchema")


class SegmentBodySchema(ma.Schema):
    """A segment: reusable conditions plus explicit unit lists."""

    key = fields.String(validate=KEY)
    name = fields.String(validate=validate.Length(max=256))
    description = fields.String(validate=validate.Length(max=10_000))
    conditions = fields.List(fields.Nested(ConditionSchema), validate=validate.Length(max=100))
    included = fields.List(fields.String())
    excluded = fields.List(fields.String())
    version = fields.Integer(load_only=True)


class SegmentCreateSchema(SegmentBodySchema):
    key = fields.String(required=True, validate=KEY)


class SegmentSchema(SegmentBodySchema):
    environment = fields.String(dump_only=True)
    version = fields.Integer(dump_only=True)
    created_at = fields.String(dump_only=True)
    updated_at = fields.String(dump_only=True)
    updated_by = fields.String(dump_only=True)


class EvaluateSchema(ma.Schema):
    """`POST /evaluate` body."""

    context = fields.Dict(required=True, keys=fields.String())
    flags = fields.List(fields.String(), validate=validate.Length(max=1000))


class EvaluationSchema(ma.Schema):
    value = fields.Raw(allow_none=True)
    variant = fields.String(allow_none=True)
    reason = fields.String()
    rule_id = fields.String(allow_none=True)
    error_code = fields.String(allow_none=True)
    error_message = fields.String(allow_none=True)
    experiment = fields.String(metadata={"description": "the experiment the unit is in, if any"})


class EvaluateResultSchema(ma.Schema):
    revision = fields.Integer()
    environment = fields.String()
    flags = fields.Dict(keys=fields.String(), values=fields.Nested(EvaluationSchema))


class EnvironmentBodySchema(ma.Schema):
    name = fields.String(validate=validate.Length(min=1, max=128))
    colour = fields.String(validate=validate.Regexp(r"^#[0-9a-fA-F]{6}$", error="a colour like #1a7f37"))
    requires_approval = fields.Boolean(metadata={"description": "reserved for approval workflows"})
    position = fields.Integer(validate=validate.Range(min=0, max=1000))
    version = fields.Integer(load_only=True)


class EnvironmentCreateSchema(EnvironmentBodySchema):
    key = fields.String(required=True, validate=KEY)
    copy_from = fields.String(validate=KEY, metadata={
        "description": "copy this environment's flag targeting and segments (default: every "
                       "flag starts off, without rules)"})


class EnvironmentSchema(ma.Schema):
    key = fields.String()
    name = fields.String()
    colour = fields.String()
    requires_approval = fields.Boolean()
    position = fields.Integer()
    version = fields.Integer()
    created_at = fields.String()
    updated_at = fields.String()
    updated_by = fields.String()


class PromoteSchema(ma.Schema):
    """Copy targeting from one environment to another."""

    source = fields.String(required=True, data_key="from", validate=KEY)
    to = fields.String(required=True, validate=KEY)
    dry_run = fields.Boolean(load_default=False, metadata={"description": "show the diff only"})
    copy_segments = fields.Boolean(load_default=False, metadata={
        "description": "create referenced segments missing in the target from the source's"})
    version = fields.Integer(metadata={"description": "the target's version the diff was read at"})


class PromoteManySchema(ma.Schema):
    source = fields.String(required=True, data_key="from", validate=KEY)
    to = fields.String(required=True, validate=KEY)
    tag = fields.String(required=True, validate=validate.Length(min=1, max=128))
    dry_run = fields.Boolean(load_default=False)
    copy_segments = fields.Boolean(load_default=False)
    versions = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "flag -> the target's version the diff was read at"})


class CompareArgs(ma.Schema):
    environments = fields.String(required=True, metadata={
        "description": "comma-separated environment keys, e.g. staging,production"})
