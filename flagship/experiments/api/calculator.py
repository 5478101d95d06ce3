"""REST endpoints of the sample-size and power calculator (样本量预估): schemas and views;
the use case is `flagship.experiments.planning`."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from flagship.api import make_blueprint, requires
from flagship.experiments.planning import power_plan, sample_size_plan
from flagship.experiments.stats.inference import ALTERNATIVES

blp = make_blueprint("stats", "Sample size and power calculator")

METRIC_TYPES = ("conversion", "mean")
MDE_TYPES = ("absolute", "relative")
OPEN_UNIT = validate.Range(min=0, max=1, min_inclusive=False, max_inclusive=False)
# Levels this small are not a design anyone runs, and below ~1e-300 the normal quantiles
# the engine inverts overflow.
LEVEL = validate.Range(min=1e-12, max=1, max_inclusive=False)


class DesignSchema(ma.Schema):
    """What to detect and how: shared by /stats/sample-size and /stats/power."""

    metric_type = fields.String(required=True, validate=validate.OneOf(METRIC_TYPES), metadata={
        "description": "conversion: give baseline and mde; mean: give std and mde (and "
                       "baseline_mean for a relative mde), or a standardised effect_size"})
    baseline = fields.Float(validate=OPEN_UNIT,
                            metadata={"description": "conversion rate of the control, e.g. 0.1"})
    baseline_mean = fields.Float(metadata={"description": "mean of the control (mean metrics)"})
    std = fields.Float(validate=validate.Range(min=0, min_inclusive=False),
                       metadata={"description": "standard deviation of the metric per unit"})
    mde = fields.Float(metadata={
        "description": "the lift to detect: 0.01 is 1 pp (absolute) or +1 % (relative); "
                       "negative for a drop"})
    mde_type = fields.String(validate=validate.OneOf(MDE_TYPES),
                             metadata={"description": "absolute (default) or relative"})
    effect_size = fields.Float(metadata={
        "description": "Cohen's d (difference / standard deviation), instead of std and mde"})
    alpha = fields.Float(load_default=0.05, validate=LEVEL,
                         metadata={"description": "overall significance level"})
    ratio = fields.Float(load_default=1.0, validate=validate.Range(min=0.001, max=1000),
                         metadata={"description": "units in each treatment per control unit"})
    variants = fields.Integer(load_default=2, strict=True, validate=validate.Range(min=2, max=100),
                              metadata={"description": "arms including the control; each "
                                        "treatment is tested against the control at "
                                        "alpha / (variants - 1) (Bonferroni)"})
    alternative = fields.String(load_default="two-sided", validate=validate.OneOf(ALTERNATIVES))
    test = fields.String(load_default="z", validate=validate.OneOf(("z", "t")),
                         metadata={"description": "normal or t approximation (t: means only)"})


class SampleSizeBodySchema(DesignSchema):
    power = fields.Float(load_default=0.8, validate=OPEN_UNIT)


class PowerBodySchema(DesignSchema):
    n_per_variant = fields.Integer(required=True, strict=True,
                                   validate=validate.Range(min=1, max=10 ** 12),
                                   metadata={"description": "units in the control arm"})


class EffectSchema(ma.Schema):
    effect_size = fields.Float(metadata={"description": "Cohen's h (conversion) or d (mean)"})
    absolute = fields.Float(allow_none=True)
    relative = fields.Float(allow_none=True)
    baseline = fields.Float(allow_none=True)
    target = fields.Float(allow_none=True)


class PlanSchema(ma.Schema):
    metric_type = fields.String()
    variants = fields.Integer()
    effect_size = fields.Float()
    effect = fields.Nested(EffectSchema)
    alpha = fields.Float()
    alpha_per_comparison = fields.Float()
    ratio = fields.Float()
    alternative = fields.String()
    test = fields.String()
    summary = fields.String()


class SampleSizeSchema(PlanSchema):
    power = fields.Float()
    n_control = fields.Integer(metadata={"description": "units in the control arm"})
    n_treatment = fields.Integer(metadata={"description": "units in each treatment arm"})
    total = fields.Integer()
    n_control_exact = fields.Float(metadata={"description": "before rounding up"})
    n_treatment_exact = fields.Float()
    total_exact = fields.Float()


class PowerSchema(PlanSchema):
    power = fields.Float(metadata={"description": "achieved power of each treatment comparison"})
    n_control = fields.Integer()
    n_treatment = fields.Float(metadata={"description": "n_per_variant x ratio"})
    total = fields.Float()
    mde_power = fields.Float()
    mde = fields.Nested(EffectSchema, allow_none=True, metadata={
        "description": "the smallest effect detectable with mde_power at this size "
                       "(upward; downward for alternative 'smaller'); null if none is"})


@blp.route("/stats/sample-size")
class SampleSize(MethodView):
    @requires("sdk")
    @blp.arguments(SampleSizeBodySchema)
    @blp.response(200, SampleSizeSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Units needed per variant to detect an effect, before the experiment starts

        Proportions use Cohen's h with the normal test; means use d = mde / std (z or t).
        With more than two variants each treatment is compared with the control at
        alpha / (variants - 1). Counts are rounded up per arm.
        """
        return sample_size_plan(body)


@blp.route("/stats/power")
class Power(MethodView):
    @requires("sdk")
    @blp.arguments(PowerBodySchema)
    @blp.response(200, PowerSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Power of a design with n_per_variant control units, and its minimum detectable effect

        `mde` is the smallest effect detectable with 80 % power at that size.
        """
        return power_plan(body)
