"""Segments, environments, layers and metrics: list, create, edit, delete."""
from __future__ import annotations

from typing import Any, Callable

from flask import abort, g, request

from flagship import environments as environment_service
from flagship.errors import FlagshipError
from flagship.experiments import layers as layer_service
from flagship.experiments import metrics as metric_service
from flagship.experiments.model import DIRECTIONS, METRIC_KINDS
from flagship.flags import segments as segment_service
from flagship.ui import forms
from flagship.ui.base import (Errors, actor, bp, env, environments, errors_from, flash_message, link,
                              page_arg, redirect_to, render, require_unbound, runtime)
from flagship.ui.charts import allocation_bar

DEFAULT_COLOUR = "#57606a"


def _save(write: Callable[[], Any], done: str, to: str) -> tuple[Any, Errors]:
    """Run a service write; on success flash `done` and redirect to `to`, else the errors."""
    try:
        write()
    except FlagshipError as err:
        return None, errors_from(err)
    flash_message(done)
    return redirect_to(to), Errors()


def _stale(errors: Errors, current: Callable[[], dict[str, Any]]) -> Errors:
    if "version" in errors.fields:
        errors.stale = current()
        errors.message = "Someone else changed this in the meantime."
    return errors


def _status(errors: Errors) -> int:
    return errors.http_status


# -- segments -----------------------------------------------------------------------------

@bp.route("/segments")
def segments() -> Any:
    """The environment's segments."""
    return render("ui/segments/list.html", section="ui.segments",
                  items=segment_service.list_segments(runtime(), env()))


def _segment_state(doc: dict[str, Any] | None) -> dict[str, Any]:
    doc = doc or {}
    return {"key": doc.get("key", ""), "name": doc.get("name", ""), "version": doc.get("version", ""),
            "description": doc.get("description", ""),
            "conditions": [forms.condition_state(c) for c in doc.get("conditions", [])],
            "included": "\n".join(doc.get("included", [])),
            "excluded": "\n".join(doc.get("excluded", []))}


def _segment_form() -> dict[str, Any]:
    raw = forms.unflatten(request.form)
    state = {name: str(raw.get(name, "")) for name in ("key", "name", "description", "included",
                                                       "excluded", "version")}
    state["conditions"] = forms.conditions_from_form(raw.get("conditions"))
    op = request.form.get("op", "save")
    operator = next(iter(runtime().operators), "eq")
    if op == "add-cond":
        forms.apply_condition_op(state["conditions"], "add", operator)
    elif op.startswith("remove-cond:"):
        forms.apply_condition_op(state["conditions"], "remove:" + op.split(":", 1)[1], operator)
    return state


def _segment_doc(state: dict[str, Any]) -> dict[str, Any]:
    state["conditions"] = [c for c in state["conditions"] if not forms.is_blank(c)]
    doc = {"key": state["key"].strip(), "description": state["description"],
           "conditions": [forms.condition_doc(c) for c in state["conditions"]],
           "included": forms.lines(state["included"]), "excluded": forms.lines(state["excluded"])}
    if state["name"].strip():
        doc["name"] = state["name"].strip()
    return doc


@bp.route("/segments/-/new", methods=["GET", "POST"])
@bp.route("/segments/<key>", methods=["GET", "POST"])
def segment_form(key: str | None = None) -> Any:
    """Create or edit a segment: conditions (no segment references), included, excluded."""
    current = segment_service.get_segment(runtime(), key, env()) if key else None
    state, errors = _segment_state(current), Errors()
    if request.method == "POST":
        state = _segment_form()
        if request.form.get("op", "save") == "save":
            doc = _segment_doc(state)
            version = forms.number(state["version"], "version", errors, integer=True)
            if key is None:
                write = lambda: segment_service.create_segment(runtime(), actor(), doc, env())  # noqa: E731
            else:
                write = lambda: segment_service.replace_segment(runtime(), actor(), key, doc, version, env())  # noqa: E731
            done, errors = _save(write, f"Segment {doc['key'] or key} saved.", link("ui.segments"))
            if done is not None:
                return done
            errors = _stale(errors, lambda: segment_service.get_segment(runtime(), key, env()))
    return render("ui/segments/form.html", "ui/segments/_form.html", section="ui.segments",
                  key=key, state=state, errors=errors, status=_status(errors),
                  operators=[(n, op.description) for n, op in runtime().operators.items()])


@bp.route("/segments/<key>/delete", methods=["POST"])
def segment_delete(key: str) -> Any:
    """Delete a segment no flag uses (else the flags are named)."""
    segment_service.delete_segment(runtime(), actor(), key, None, env())
    flash_message(f"Segment {key} deleted.")
    return redirect_to(link("ui.segments"))


# -- environments -------------------------------------------------------------------------

@bp.route("/environments", endpoint="environments")
def environments_page() -> Any:
    """Every environment with its colour."""
    return render("ui/environments/list.html", section="ui.environments", items=environments())


@bp.route("/environments/-/new", methods=["GET", "POST"])
@bp.route("/environments/<key>/edit", methods=["GET", "POST"])
def environment_form(key: str | None = None) -> Any:
    """Create an environment (optionally copying another's targeting) or edit one."""
    current = environment_service.get_environment(runtime(), key) if key else None
    state = dict(current or {"key": "", "name": "", "colour": DEFAULT_COLOUR, "position": "",
                             "version": "", "copy_from": ""})
    errors = Errors()
    if request.method == "POST":
        require_unbound("managing environments")
        form = request.form
        state.update({name: form.get(name, "").strip() for name in
                      ("key", "name", "colour", "position", "version", "copy_from") if name in form})
        doc: dict[str, Any] = {"name": state["name"] or None, "colour": state["colour"] or None}
        position = forms.number(state.get("position"), "position", errors, integer=True)
        if position is not None:
            doc["position"] = position
        doc = {k: v for k, v in doc.items() if v is not None}
        if not errors:
            if key is None:
                doc.update(key=state["key"], copy_from=state.get("copy_from") or None)
                write = lambda: environment_service.create_environment(runtime(), actor(), doc)  # noqa: E731
            else:
                version = forms.number(state["version"], "version", errors, integer=True)
                write = lambda: environment_service.update_environment(runtime(), actor(), key, doc, version)  # noqa: E731
            done, errors = _save(write, f"Environment {state['key'] or key} saved.", link("ui.environments"))
            if done is not None:
                return done
            errors = _stale(errors, lambda: environment_service.get_environment(runtime(), key))
    return render("ui/environments/form.html", section="ui.environments", key=key, state=state,
                  errors=errors, status=_status(errors))


@bp.route("/environments/<key>/delete", methods=["POST"])
def environment_delete(key: str) -> Any:
    """Delete an environment (refused for the default one or while it holds things)."""
    require_unbound("deleting an environment")
    environment_service.delete_environment(runtime(), actor(), key)
    flash_message(f"Environment {key} deleted.")
    return redirect_to(link("ui.environments", env=runtime().config["DEFAULT_ENVIRONMENT"]))


# -- layers -------------------------------------------------------------------------------

@bp.route("/layers", methods=["GET", "POST"])
def layers() -> Any:
    """The environment's layers, each with its allocation bar; create one."""
    errors, state = Errors(), {"key": "", "name": "", "description": ""}
    if request.method == "POST":
        state = {name: request.form.get(name, "").strip() for name in state}
        doc = {k: v for k, v in state.items() if v}
        done, errors = _save(lambda: layer_service.create_layer(runtime(), actor(), doc, env()),
                             f"Layer {state['key']} created.", link("ui.layers"))
        if done is not None:
            return done
    items = layer_service.list_layers(runtime(), env())
    return render("ui/layers/list.html", section="ui.layers", errors=errors, state=state,
                  items=[{**layer, "bar": allocation_bar(layer, compact=True)} for layer in items],
                  status=_status(errors))


def _layer_in_env(key: str) -> dict[str, Any]:
    """The layer, if it lives in the current environment (else 404 naming its own)."""
    layer = layer_service.get_layer(runtime(), key, g.get("key_environment"))
    if layer["environment"] != env():
        abort(404, f"layer {key!r} is in environment {layer['environment']!r}, not {env()!r}: "
                   "switch environments to see it")
    return layer


@bp.route("/layers/<key>", methods=["GET", "POST"])
def layer_detail(key: str) -> Any:
    """A layer's 10,000 buckets: who owns which ranges, what is free, what was released;
    POST renames it or changes its description (saved with the version it was loaded at)."""
    layer = _layer_in_env(key)
    errors = Errors()
    state = {"name": layer["name"], "description": layer["description"], "version": str(layer["version"])}
    if request.method == "POST":
        state = {name: request.form.get(name, "").strip() for name in state}
        version = forms.number(state["version"], "version", errors, integer=True)
        if not errors:
            patch = {"description": state["description"], **({"name": state["name"]} if state["name"] else {})}
            done, errors = _save(lambda: layer_service.update_layer(runtime(), actor(), key, patch, version,
                                                                    g.get("key_environment")),
                                 f"Layer {key} saved.", link("ui.layer_detail", key=key))
            if done is not None:
                return done
            errors = _stale(errors, lambda: layer_service.get_layer(runtime(), key))
    return render("ui/layers/detail.html", section="ui.layers", layer=layer, bar=allocation_bar(layer),
                  state=state, errors=errors, status=_status(errors))


@bp.route("/layers/<key>/delete", methods=["POST"])
def layer_delete(key: str) -> Any:
    """Delete a layer that holds no active or draft experiment (else they are named)."""
    _layer_in_env(key)
    layer_service.delete_layer(runtime(), actor(), key, g.get("key_environment"))
    flash_message(f"Layer {key} deleted.")
    return redirect_to(link("ui.layers"))


# -- metrics ------------------------------------------------------------------------------

@bp.route("/metrics")
def metrics() -> Any:
    """Metric definitions (global: the same in every environment)."""
    page = page_arg()
    items, total = metric_service.list_metrics(runtime(), page, 50)
    return render("ui/metrics/list.html", section="ui.metrics", items=items, total=total, page=page,
                  per_page=50)


@bp.route("/metrics/-/new", methods=["GET", "POST"])
@bp.route("/metrics/<key>/edit", methods=["GET", "POST"])
def metric_form(key: str | None = None) -> Any:
    """Create or replace a metric (its meaning is frozen while a live experiment uses it)."""
    current = metric_service.get_metric(runtime(), key) if key else None
    names = ("key", "name", "description", "event", "kind", "denominator_event", "direction",
             "winsorize_percentile", "version")
    state = {n: "" if (current or {}).get(n) is None else str(current[n]) for n in names}
    state["kind"] = state["kind"] or "conversion"
    errors = Errors()
    if request.method == "POST":
        state.update({n: request.form.get(n, "").strip() for n in names if n in request.form})
        doc: dict[str, Any] = {n: state[n] for n in ("key", "name", "description", "event", "kind",
                                                     "direction") if state[n]}
        if state["denominator_event"]:
            doc["denominator_event"] = state["denominator_event"]
        winsorize = forms.number(state["winsorize_percentile"], "winsorize_percentile", errors)
        if winsorize is not None:
            doc["winsorize_percentile"] = winsorize
        version = forms.number(state["version"], "version", errors, integer=True)
        if not errors:
            if key is None:
                write = lambda: metric_service.create_metric(runtime(), actor(), doc)  # noqa: E731
            else:
                write = lambda: metric_service.replace_metric(runtime(), actor(), key, doc, version)  # noqa: E731
            done, errors = _save(write, f"Metric {doc.get('key', key)} saved.", link("ui.metrics"))
            if done is not None:
                return done
            errors = _stale(errors, lambda: metric_service.get_metric(runtime(), key))
    return render("ui/metrics/form.html", section="ui.metrics", key=key, state=state, errors=errors,
                  kinds=METRIC_KINDS, directions=DIRECTIONS, status=_status(errors))


@bp.route("/metrics/<key>/delete", methods=["POST"])
def metric_delete(key: str) -> Any:
    """Delete a metric no experiment references."""
    metric_service.delete_metric(runtime(), actor(), key)
    flash_message(f"Metric {key} deleted.")
    return redirect_to(link("ui.metrics"))
