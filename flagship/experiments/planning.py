"""The sample-size and power calculator (样本量预估) as a use case: a design (a conversion
rate and lift, or a mean, standard deviation and lift, or a standardised effect size) is
translated into the stats engine's arguments, computed, and described in one plain
sentence. Engine errors are re-labelled with the request field a person has to change.
Used by the HTTP calculator and the UI's inline calculator.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flagship.errors import ValidationError
from flagship.experiments import stats

MDE_POWER = 0.8  # the power at which /stats/power reports the minimum detectable effect
# Engine argument -> the request field that sets it.
ENGINE_FIELDS = {"n_control": "n_per_variant", "k": "variants", "target": "mde"}


@dataclass(frozen=True, slots=True)
class Design:
    """A request's effect, as engine arguments and on the metric's own scale."""

    engine: dict[str, float]
    effect_size: float
    field: str  # the request field to blame when the engine rejects the effect
    metric_type: str
    mde_type: str | None = None
    absolute: float | None = None
    relative: float | None = None
    baseline: float | None = None
    target: float | None = None
    std: float | None = None


def _forbid(body: dict[str, Any], names: tuple[str, ...], why: str) -> None:
    for name in names:
        if name in body:
            raise ValidationError(f"not used {why}", field=name)


def _need(body: dict[str, Any], name: str, why: str) -> float:
    if name not in body:
        raise ValidationError(f"required {why}", field=name)
    value = body[name]
    if value == 0:
        raise ValidationError("must not be 0", field=name)
    return value


def _conversion(body: dict[str, Any]) -> Design:
    _forbid(body, ("baseline_mean", "std", "effect_size"),
            "for a conversion metric: give baseline and mde")
    baseline = body.get("baseline")
    if baseline is None:
        raise ValidationError("required for a conversion metric: the control's rate, e.g. 0.1",
                              field="baseline")
    mde = _need(body, "mde", "for a conversion metric, e.g. 0.01")
    mde_type = body.get("mde_type", "absolute")
    absolute = mde if mde_type == "absolute" else baseline * mde
    target = baseline + absolute
    if not 0.0 < target < 1.0:
        raise ValidationError(f"the target rate {target:.6g} must stay between 0 and 1",
                              field="mde")
    h = stats.proportion_effect_size(baseline, target)
    if h == 0:  # a lift lost to rounding, e.g. 1e-20 on 0.5
        raise ValidationError("too small to change the rate", field="mde")
    return Design({"baseline": baseline, "target": target}, h, "mde", "conversion", mde_type,
                  absolute, absolute / baseline, baseline, target)


def _mean(body: dict[str, Any]) -> Design:
    _forbid(body, ("baseline",), "for a mean metric: give baseline_mean")
    if "effect_size" in body:
        _forbid(body, ("std", "mde", "mde_type", "baseline_mean"), "with effect_size")
        d = _need(body, "effect_size", "")
        return Design({"effect_size": d}, d, "effect_size", "mean")
    std = body.get("std")
    if std is None:
        raise ValidationError("required for a mean metric (or give effect_size)", field="std")
    mde = _need(body, "mde", "for a mean metric (or give effect_size)")
    mean = body.get("baseline_mean")
    mde_type = body.get("mde_type", "absolute")
    if mde_type == "absolute":
        absolute = mde
    elif mean is None or mean == 0:
        raise ValidationError("a relative mde needs a non-zero baseline_mean",
                              field="baseline_mean")
    else:
        absolute = mean * mde
    d = absolute / std
    if not math.isfinite(d) or d == 0:
        raise ValidationError("mde / std must be a finite non-zero effect size", field="mde")
    relative = absolute / mean if mean else None
    target = None if mean is None else mean + absolute
    return Design({"effect_size": d}, d, "mde", "mean", mde_type, absolute, relative, mean,
                  target, std)


def _design(body: dict[str, Any]) -> Design:
    return _conversion(body) if body["metric_type"] == "conversion" else _mean(body)


@contextmanager
def _engine_errors(design: Design) -> Iterator[None]:
    """Re-raise the engine's ValidationError under the request field that caused it."""
    try:
        yield
    except ValidationError as exc:
        if exc.field is None:
            raise
        field = {**ENGINE_FIELDS, "effect_size": design.field}.get(exc.field, exc.field)
        raise ValidationError(exc.errors[exc.field][0], field=field) from None


def _options(body: dict[str, Any]) -> dict[str, Any]:
    return {"alpha": body["alpha"], "ratio": body["ratio"], "k": body["variants"] - 1,
            "alternative": body["alternative"], "test": body["test"]}


def _finite(values: dict[str, float | None]) -> dict[str, float | None]:
    """None for what overflowed (a relative lift on a baseline of 1e-320): JSON has no inf."""
    return {k: v if v is None or math.isfinite(v) else None for k, v in values.items()}


def _effect(design: Design, effect_size: float) -> dict[str, float | None]:
    return _finite({"effect_size": effect_size, "absolute": design.absolute,
                    "relative": design.relative, "baseline": design.baseline,
                    "target": design.target})


def _common(body: dict[str, Any], design: Design, effect_size: float, a: float) -> dict[str, Any]:
    return {"metric_type": design.metric_type, "variants": body["variants"],
            "effect_size": effect_size, "effect": _effect(design, effect_size),
            "alpha": body["alpha"], "alpha_per_comparison": a, "ratio": body["ratio"],
            "alternative": body["alternative"], "test": body["test"]}


def sample_size_plan(body: dict[str, Any]) -> dict[str, Any]:
    """The /stats/sample-size answer for a validated request body."""
    design = _design(body)
    with _engine_errors(design):
        r = stats.sample_size(**design.engine, power=body["power"], **_options(body))
    out = _common(body, design, r.effect_size, r.alpha_per_comparison)
    out.update(power=body["power"], n_control=r.n_control_ceil, n_treatment=r.n_treatment_ceil,
               total=r.total_ceil, n_control_exact=r.n_control, n_treatment_exact=r.n_treatment,
               total_exact=r.total)
    out["summary"] = (f"You need {_arms(r.n_control_ceil, r.n_treatment_ceil, r.total_ceil, body)}"
                      f" to detect {_describe(design, r.effect_size)} with "
                      f"{_pct(body['power'])} power {_level(body, r.alpha_per_comparison)}.")
    return out


def power_plan(body: dict[str, Any]) -> dict[str, Any]:
    """The /stats/power answer for a validated request body."""
    design = _design(body)
    n = body["n_per_variant"]
    with _engine_errors(design):
        achieved = stats.power(**design.engine, n_control=n, **_options(body))
    k = body["variants"] - 1
    a = body["alpha"] / k
    n_treatment, total = _whole(n * body["ratio"]), _whole(n + k * n * body["ratio"])
    effect_size = design.effect_size
    out = _common(body, design, effect_size, a)
    mde = _mde(design, n, body)
    out.update(power=achieved, n_control=n, n_treatment=n_treatment, total=total,
               mde_power=MDE_POWER, mde=mde)
    out["summary"] = (f"With {_arms(n, n_treatment, total, body)} you have {_pct(achieved)} "
                      f"power to detect {_describe(design, effect_size)} "
                      f"{_level(body, a)}; {_describe_mde(design, mde)}.")
    return out


def _mde(design: Design, n: int, body: dict[str, Any]) -> dict[str, float | None] | None:
    """The effect detectable with MDE_POWER at this size, on the design's scale."""
    try:
        m = stats.minimum_detectable_effect(n, baseline=design.baseline if design.metric_type
                                            == "conversion" else None, std=design.std,
                                            power=MDE_POWER, **_options(body))
    except ValidationError:
        return None  # e.g. no rate up to 100 % is detectable, or alpha >= the power
    if design.metric_type == "conversion":
        return _finite({"effect_size": m.effect_size, "absolute": m.absolute,
                        "relative": m.relative, "baseline": design.baseline, "target": m.target})
    mean, absolute = design.baseline, m.absolute
    return _finite({"effect_size": m.effect_size, "absolute": absolute,
                    "relative": absolute / mean if absolute is not None and mean else None,
                    "baseline": mean,
                    "target": None if absolute is None or mean is None else mean + absolute})


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _pct(x: float, decimals: int = 0) -> str:
    """A share as a percentage to 3 significant digits, with at least ``decimals`` decimals."""
    # Rather than a power of 99.96 % rounded up to 100 %, or a string of zeros.
    if 0.999 < x < 1.0:
        return "over 99.9 %"
    if 0.0 < x < 0.001:
        return "under 0.1 %"
    value = 100.0 * x
    places = max(decimals, 2 - math.floor(math.log10(abs(value)))) if value else decimals
    text = f"{value:.{min(places, 6)}f}"
    if places > decimals:
        whole, _, frac = text.partition(".")
        frac = frac.rstrip("0").ljust(decimals, "0")
        text = f"{whole}.{frac}" if frac else whole
    return f"{text} %"


def _num(x: float) -> str:
    return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def _arms(n_control: float, n_treatment: float, total: float, body: dict[str, Any]) -> str:
    if n_control == n_treatment:
        users = "user" if n_control == 1 else "users"
        return f"{n_control:,.0f} {users} per variant ({total:,.0f} in total)"
    each = "the treatment" if body["variants"] == 2 else "each treatment"
    return (f"{n_control:,.0f} users in the control and {n_treatment:,.0f} in {each} "
            f"({total:,.0f} in total)")


def _describe(design: Design, effect_size: float) -> str:
    if design.absolute is None:
        return f"a standardised effect of d = {effect_size:.4g}"
    change = "lift" if design.absolute > 0 else "drop"
    if design.metric_type == "conversion":
        pp = _pct(abs(design.absolute), 1).replace(" %", " pp")
        start, end = _pct(design.baseline or 0.0, 1), _pct(design.target or 0.0, 1)
        if design.mde_type == "relative":
            return f"a relative {change} of {_pct(abs(design.relative or 0.0))} ({start} to {end})"
        return f"an absolute {change} of {pp} from {start}"
    sd = f"standard deviation {_num(design.std or 0.0)}"
    if design.mde_type == "relative":
        return (f"a relative {change} of {_pct(abs(design.relative or 0.0))} from a mean of "
                f"{_num(design.baseline or 0.0)} (to {_num(design.target or 0.0)}, {sd})")
    if design.baseline is None:
        return f"an absolute {change} of {_num(abs(design.absolute))} in the mean ({sd})"
    return (f"an absolute {change} of {_num(abs(design.absolute))} from a mean of "
            f"{_num(design.baseline)} ({sd})")


def _level(body: dict[str, Any], a: float) -> str:
    notes = [] if body["alternative"] == "two-sided" else ["one-sided"]
    k = body["variants"] - 1
    if k > 1:
        notes.append(f"{_pct(a)} per comparison, Bonferroni over {k} treatments")
    return f"at a {_pct(body['alpha'])} significance level" + (
        f" ({'; '.join(notes)})" if notes else "")


def _describe_mde(design: Design, mde: dict[str, Any] | None) -> str:
    lead = f"the smallest change detectable with {_pct(MDE_POWER)} power"
    if mde is None:
        return f"{lead} does not exist at this size"
    if design.metric_type == "conversion":
        pp = _pct(abs(mde["absolute"]), 1).replace(" %", " pp")
        return f"{lead} is {pp} ({_pct(mde['baseline'], 1)} to {_pct(mde['target'], 1)})"
    if mde["absolute"] is None:
        return f"{lead} is d = {abs(mde['effect_size']):.4g}"
    return f"{lead} is {_num(abs(mde['absolute']))} (d = {abs(mde['effect_size']):.4g})"
