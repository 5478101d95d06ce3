"""Experiment screens: the list by status, the create/edit form (with the sample-size
calculator inline), the overview with lifecycle buttons showing only legal moves."""
from __future__ import annotations

from typing import Any

from flask import abort, request

from flagship.errors import FlagshipError, ValidationError
from flagship.experiments import layers as layer_service
from flagship.experiments import metrics as metric_service
from flagship.experiments import planning
from flagship.experiments import service
from flagship.experiments.model import CORRECTIONS, STATUSES
from flagship.flags import segments as segment_service
from flagship.flags import service as flag_service
from flagship.ui import forms
from flagship.ui.base import (Errors, actor, bp, env, errors_from, flash_message, format_value, link,
                              redirect_to, render, runtime)

LIFECYCLE = ("start", "pause", "resume", "stop")
SHOWN = ("running", "paused", "draft", "completed", "terminated")  # what needs attention first
CALC_DEFAULTS = {"metric_type": "conversion", "baseline": "0.1", "mde": "0.01",
                 "mde_type": "absolute", "std": "", "power": "0.8"}


def legal_moves(status: str) -> list[str]:
    """The lifecycle actions the service allows from `status` (the only buttons shown)."""
    return [action for action in LIFECYCLE if status in service.TRANSITIONS[action]]


def experiment_in_env(key: str) -> dict[str, Any]:
    """The experiment, if it lives in the current environment (else 404 naming its own)."""
    experiment = service.get_experiment(runtime(), key)
    if experiment["environment"] != env():
        abort(404, f"experiment {key!r} is in environment {experiment['environment']!r}, "
                   f"not {env()!r}: switch environments to see it")
    return experiment


@bp.route("/experiments")
def experiments() -> Any:
    """The environment's experiments, grouped by status (or one status)."""
    status = request.args.get("status") if request.args.get("status") in STATUSES else None
    items, total = service.list_experiments(runtime(), environment=env(), status=status, per_page=500)
    groups = {s: [e for e in items if e["status"] == s] for s in SHOWN if status in (None, s)}
    return render("ui/experiments/list.html", section="ui.experiments", groups=groups,
                  chosen=status, total=total, statuses=SHOWN)


# -- the form -----------------------------------------------------------------------------

def _state(doc: dict[str, Any] | None) -> dict[str, Any]:
    doc = doc or {"variants": [{"variant": "control", "weight": 1, "is_control": True},
                               {"variant": "treatment", "weight": 1}]}
    guards = {g["metric"]: g.get("margin", 0) for g in doc.get("guardrail_metrics", [])}
    return {
        "key": doc.get("key", ""), "name": doc.get("name", ""), "flag": doc.get("flag", ""),
        "layer": doc.get("layer", ""), "version": doc.get("version", ""),
        "status": doc.get("status", "draft"),
        "traffic_percentage": f"{doc.get('traffic_percentage', 100):g}",
        "hypothesis": doc.get("hypothesis", ""), "description": doc.get("description", ""),
        "owner": doc.get("owner", ""),
        "variants": [{"variant": v["variant"], "weight": f"{v.get('weight', 1):g}",
                      "value": format_value(v["value"]) if "value" in v else ""}
                     for v in doc["variants"]],
        "control": next((i for i, v in enumerate(doc["variants"]) if v.get("is_control")), 0),
        "targeting": [forms.condition_state(c) for c in doc.get("targeting", [])],
        "success_metrics": list(doc.get("success_metrics", [])),
        "guardrails": {m: f"{margin:g}" for m, margin in guards.items()},
        "start_at": (doc.get("start_at") or "")[:16], "end_at": (doc.get("end_at") or "")[:16],
        "minimum_sample_size": str(doc.get("minimum_sample_size") or ""),
        "significance_level": f"{doc.get('significance_level', 0.05):g}",
        "power": f"{doc.get('power', 0.8):g}", "multiple_testing": doc.get("multiple_testing", "holm"),
        "calc": dict(CALC_DEFAULTS), "plan": None,
    }


def _posted() -> dict[str, Any]:
    raw = forms.unflatten(request.form)
    text = {n: str(raw.get(n, "")).strip() for n in (
        "key", "name", "flag", "layer", "version", "status", "traffic_percentage", "owner",
        "start_at", "end_at", "minimum_sample_size", "significance_level", "power", "multiple_testing")}
    margins = raw.get("margins") if isinstance(raw.get("margins"), dict) else {}
    calc = raw.get("calc") if isinstance(raw.get("calc"), dict) else {}
    return {**text, "hypothesis": str(raw.get("hypothesis", "")),
            "description": str(raw.get("description", "")),
            "variants": [{"variant": str(v.get("variant", "")).strip(), "weight": str(v.get("weight", "")),
                          "value": str(v.get("value", ""))} for v in forms.items(raw.get("variants"))],
            "control": forms.number(request.form.get("control"), "control", Errors(), integer=True) or 0,
            "targeting": forms.conditions_from_form(raw.get("targeting")),
            "success_metrics": request.form.getlist("success_metrics"),
            "guardrails": {m: str(margins.get(m, "0")) for m in request.form.getlist("guardrail_metrics")},
            "calc": {k: str(calc.get(k, v)) for k, v in CALC_DEFAULTS.items()}, "plan": None}


def _apply_op(state: dict[str, Any], op: str, errors: Errors) -> None:
    operator = next(iter(runtime().operators), "eq")
    if op == "add-variant":
        state["variants"].append({"variant": "", "weight": "1", "value": ""})
    elif op.startswith("remove-variant:") and op.split(":")[1].isdigit():
        index = int(op.split(":")[1])
        if 0 <= index < len(state["variants"]) and len(state["variants"]) > 2:
            del state["variants"][index]
            state["control"] = 0 if state["control"] == index else state["control"] - (state["control"] > index)
    elif op == "add-cond":
        forms.apply_condition_op(state["targeting"], "add", operator)
    elif op.startswith("remove-cond:"):
        forms.apply_condition_op(state["targeting"], "remove:" + op.split(":", 1)[1], operator)
    elif op in ("calculate", "use-sample"):
        state["plan"] = _plan(state, errors)
        if op == "use-sample" and state["plan"]:
            state["minimum_sample_size"] = str(state["plan"]["n_control"])


def _plan(state: dict[str, Any], errors: Errors) -> dict[str, Any] | None:
    """The inline sample-size calculator (flagship.experiments.planning)."""
    calc, local = state["calc"], Errors()
    body: dict[str, Any] = {"metric_type": calc["metric_type"] if calc["metric_type"] in ("conversion", "mean") else "conversion",
                            "mde_type": calc["mde_type"] if calc["mde_type"] in ("absolute", "relative") else "absolute",
                            "alpha": forms.number(state["significance_level"], "calc.alpha", local, default=0.05),
                            "ratio": 1.0, "variants": max(2, len(state["variants"])),
                            "alternative": "two-sided", "test": "z",
                            "power": forms.number(calc["power"], "calc.power", local, default=0.8)}
    for name in ("baseline", "mde", "std"):
        value = forms.number(calc[name], f"calc.{name}", local)
        if value is not None:
            key = "baseline_mean" if name == "baseline" and body["metric_type"] == "mean" else name
            body[key] = value
    if not local:
        try:
            return planning.sample_size_plan(body)
        except ValidationError as err:
            for path, messages in err.errors.items():
                path = "calc.baseline" if path == "baseline_mean" else f"calc.{path}"
                for message in messages:
                    local.add(path, message)
    for path, messages in local.fields.items():
        for message in messages:
            errors.add(path, message)
    return None


def _doc(state: dict[str, Any], errors: Errors, creating: bool) -> dict[str, Any]:
    state["targeting"] = [c for c in state["targeting"] if not forms.is_blank(c)]
    variants = []
    for i, v in enumerate(state["variants"]):
        item: dict[str, Any] = {"variant": v["variant"], "is_control": i == state["control"],
                                "weight": forms.number(v["weight"], f"variants.{i}.weight", errors, default=1.0)}
        if v["value"].strip():
            item["value"] = forms.parse_value(v["value"])
        variants.append(item)
    doc: dict[str, Any] = {
        "name": state["name"] or None, "flag": state["flag"], "layer": state["layer"],
        "traffic_percentage": forms.number(state["traffic_percentage"], "traffic_percentage", errors, default=100.0),
        "hypothesis": state["hypothesis"], "description": state["description"], "owner": state["owner"],
        "variants": variants, "targeting": [forms.condition_doc(c) for c in state["targeting"]],
        "success_metrics": state["success_metrics"],
        "guardrail_metrics": [{"metric": m, "margin": forms.number(margin, f"margins.{m}", errors, default=0.0)}
                              for m, margin in state["guardrails"].items()],
        "start_at": state["start_at"] or None, "end_at": state["end_at"] or None,
        "minimum_sample_size": forms.number(state["minimum_sample_size"], "minimum_sample_size", errors,
                                            integer=True, default=0),
        "significance_level": forms.number(state["significance_level"], "significance_level", errors, default=0.05),
        "power": forms.number(state["power"], "power", errors, default=0.8),
        "multiple_testing": state["multiple_testing"] or "holm"}
    if creating:
        doc["key"] = state["key"]
    return doc


def _form_context(state: dict[str, Any], errors: Errors, creating: bool) -> dict[str, Any]:
    metrics, _ = metric_service.list_metrics(runtime(), 1, 500)
    return {"section": "ui.experiments", "state": state, "errors": errors, "creating": creating,
            "metrics": [m["key"] for m in metrics],
            "layers": [layer["key"] for layer in layer_service.list_layers(runtime(), env())],
            "segments": [s["key"] for s in segment_service.list_segments(runtime(), env())],
            "operators": [(n, op.description) for n, op in runtime().operators.items()],
            "corrections": CORRECTIONS}


@bp.route("/experiments/-/new", methods=["GET", "POST"])
@bp.route("/experiments/<key>/edit", methods=["GET", "POST"])
def experiment_form(key: str | None = None) -> Any:
    """Create a draft, or edit one (a started experiment: weights, traffic and descriptions)."""
    current = experiment_in_env(key) if key else None
    state, errors, creating = _state(current), Errors(), key is None
    if request.method == "POST":
        state = _posted()
        if current is not None:
            state.update(key=key, status=current["status"])
        op = request.form.get("op", "save")
        if op != "save":
            _apply_op(state, op, errors)
        else:
            doc = _doc(state, errors, creating)
            version = forms.number(state["version"], "version", errors, integer=True)
            if not errors:
                try:
                    if creating:
                        service.create_experiment(runtime(), actor(), doc, env())
                    else:
                        service.update_experiment(runtime(), actor(), key, doc, version, partial=True)
                    flash_message(f"Experiment {state['key']} saved.")
                    return redirect_to(link("ui.experiment_detail", key=state["key"]))
                except FlagshipError as err:
                    errors = errors_from(err)
                    if "version" in errors.fields and current is not None:
                        errors.stale = service.get_experiment(runtime(), key)
    return render("ui/experiments/form.html", "ui/experiments/_form.html",
                  status=errors.http_status,
                  **_form_context(state, errors, creating))


@bp.route("/experiments/-/flag-options")
def experiment_flag_options() -> Any:
    """Suggestions for the form's flag field (loaded when it gets the focus)."""
    q = request.args.get("flag", "").strip()
    flags, _ = flag_service.list_flags(runtime(), env(), search=q or None, per_page=100)
    return render("ui/experiments/_flag_options.html", "ui/experiments/_flag_options.html",
                  keys=[f["key"] for f in flags])


# -- overview and lifecycle ----------------------------------------------------------------

@bp.route("/experiments/<key>")
def experiment_detail(key: str) -> Any:
    """Setup, lifecycle buttons (legal moves only), the live monitor and the revisions."""
    experiment = experiment_in_env(key)
    revisions, _ = service.list_experiment_revisions(runtime(), key, 1, 10)
    return render("ui/experiments/detail.html", section="ui.experiments", e=experiment,
                  moves=legal_moves(experiment["status"]), revisions=revisions)


@bp.route("/experiments/<key>/<action>", methods=["POST"])
def experiment_lifecycle(key: str, action: str) -> Any:
    """start | pause | resume | stop | terminate | delete (illegal moves: the service's 409)."""
    experiment_in_env(key)
    if action == "delete":
        service.delete_experiment(runtime(), actor(), key)
        flash_message(f"Draft experiment {key} deleted.")
        return redirect_to(link("ui.experiments"))
    if action not in (*LIFECYCLE, "terminate"):
        abort(404)
    outcome = "terminated" if action == "terminate" else "completed"
    service.transition(runtime(), actor(), key, "stop" if action == "terminate" else action, outcome)
    flash_message(f"Experiment {key}: {action} done.")
    return redirect_to(link("ui.experiment_detail", key=key))
