"""The OpenAPI document says what the API does: every operation's error responses.

One post-processing step instead of a decorator per status on sixty views: after each
blueprint is registered, every operation gets the error responses that can actually
come out of it, derived from what the view declares and does:

- 401 and 403 when it needs a key (`requires`); 403 also covers keys bound to another
  environment;
- 400 and 413 when it reads a JSON body (malformed or too deep JSON; too large);
- 422 when it takes a body or query arguments, or is an admin write (an unparsable
  If-Match), and 428 on PUT and PATCH (the version is required);
- 404 when it has path parameters, acts in an environment (unknown environment) or is
  an admin write whose body names other objects (`copy_from`, a flag to promote);
- 409 on admin writes (stale version, duplicates, objects in use, illegal transitions);
- 503 (with Retry-After) everywhere: the database may be unavailable.

flask-smorest's catch-all `default` response is not used, so a status the document does
not list is a defect a conformance check can find. Range bounds that exclude their end
are documented as exclusive.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import marshmallow as ma
from flask import Flask

from flagship.experiments.events import MAX_EVENT_VALUE

ERROR = "Error"
PATH_PARAM = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
CALLS_ENVIRONMENT = re.compile(r"(?<![\w.])environment\(")
WRITES = ("POST", "PUT", "PATCH", "DELETE")
DESCRIPTIONS = {
    "400": "Malformed JSON (or nested deeper than the parser allows)",
    "401": "Missing, invalid or revoked API key",
    "403": "The key's scope or environment does not allow this call",
    "404": "The object, or the environment named, does not exist",
    "409": "Conflict: a stale version, a duplicate key, an object in use or an illegal move",
    "413": "The body is larger than the configured limit",
    "422": "Invalid input; `errors` names the field",
    "428": "The version is required: send If-Match or a `version` field",
    "503": "The database is unavailable or overloaded; retry after Retry-After seconds",
}


def exclusive_bounds(_converter: Any, field: ma.fields.Field, **_kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: OpenAPI 3.0's exclusiveMinimum/Maximum for Range bounds
    that leave out their end (apispec writes plain minimum/maximum for both kinds)."""
    out: dict[str, Any] = {}
    for validator in field.validators:
        if isinstance(validator, ma.validate.Range):
            if validator.min is not None and not validator.min_inclusive:
                out["exclusiveMinimum"] = True
            if validator.max is not None and not validator.max_inclusive:
                out["exclusiveMaximum"] = True
    return out


def register_components(spec: Any) -> None:
    """One response per documented error status (flask-smorest registers the `Error`
    schema: `{code, status, message, errors}`)."""
    for status, description in DESCRIPTIONS.items():
        response: dict[str, Any] = {"description": description, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}}}
        if status == "503":
            response["headers"] = {"Retry-After": {
                "description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
        if status == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        spec.components.response(f"Error{status}", response)


def _openapi_path(rule: str) -> str:
    return PATH_PARAM.sub(r"{\1}", rule)


def _handlers(app: Flask) -> dict[tuple[str, str], Callable]:
    """(OpenAPI path, method) -> the view method handling it."""
    found: dict[tuple[str, str], Callable] = {}
    for rule in app.url_map.iter_rules():
        view_class = getattr(app.view_functions.get(rule.endpoint), "view_class", None)
        for method in rule.methods or ():
            handler = getattr(view_class, method.lower(), None) if view_class else None
            if handler is not None:
                found[(_openapi_path(rule.rule), method.lower())] = handler
    return found


def _calls_environment(handler: Callable) -> bool:
    try:
        source = inspect.getsource(inspect.unwrap(handler))
    except (OSError, TypeError):
        return False
    return bool(CALLS_ENVIRONMENT.search(source))


def error_statuses(path: str, method: str, operation: dict[str, Any],
                   handler: Callable | None) -> list[str]:
    """The error statuses operation `method path` can answer, from what its view declares."""
    scope = getattr(handler, "_flagship_scope", None)
    verb = method.upper()
    has_body = "requestBody" in operation
    has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
    admin_write = scope == "admin" and verb in WRITES
    statuses = {"503"}
    if scope is not None:
        statuses |= {"401", "403"}
    if has_body:
        statuses |= {"400", "413", "422"}
    if has_query or admin_write:
        statuses.add("422")
    if "{" in path or (admin_write and has_body) or (
            handler is not None and _calls_environment(handler)):
        statuses.add("404")  # the object, an object the body names, or the environment
    if admin_write:
        statuses.add("409")
    if verb in ("PUT", "PATCH"):
        statuses.add("428")
    return sorted(statuses)


def document_errors(spec: Any, app: Flask) -> None:
    """Give every registered operation the error responses it can answer (keeping any a
    view documents itself) and drop `default` (idempotent: runs after each blueprint
    registration)."""
    handlers = _handlers(app)
    for path, operations in spec._paths.items():  # apispec keeps registered paths here
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("default", None)
            handler = handlers.get((path, method))
            for status in error_statuses(path, method, operation, handler):
                responses.setdefault(status, {"$ref": f"#/components/responses/Error{status}"})
            if "404" in responses and handler is not None and "{" not in path:
                _document_environment_param(operation)


def _document_environment_param(operation: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if any(p.get("name") == "environment" and p.get("in") == "query" for p in parameters):
        return
    parameters.append({"name": "environment", "in": "query", "required": False,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                       "description": "the environment to act in (default: the key's own, "
                                      "else FLAGSHIP_DEFAULT_ENVIRONMENT)"})


EVENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["unit", "event"], "additionalProperties": False,
    "properties": {
        "event_id": {"type": "string", "minLength": 1, "maxLength": 128,
                     "description": "makes the event idempotent across requests"},
        "unit": {"type": "string", "minLength": 1, "maxLength": 256},
        "event": {"type": "string", "minLength": 1, "maxLength": 128,
                  "description": "names starting with '$' are reserved ($exposure)"},
        "value": {"type": "number", "nullable": True, "minimum": -MAX_EVENT_VALUE,
                  "maximum": MAX_EVENT_VALUE, "description": "default 1"},
        "timestamp": {"type": "string", "format": "date-time",
                      "description": "default: when received"},
        "properties": {"type": "object", "description": "at most 8 KiB, 32 levels deep"},
        "experiment": {"type": "string", "maxLength": 128, "description": "$exposure only"},
        "variant": {"type": "string", "maxLength": 64, "description": "$exposure only"},
    }}


def event_body(batch: bool, max_items: int = 10_000) -> dict[str, Any]:
    """The requestBody of the event endpoints (they validate item by item themselves)."""
    event = {"$ref": "#/components/schemas/EventIn"}
    if not batch:
        schema: dict[str, Any] = event
    else:
        items = {"type": "array", "items": event, "maxItems": max_items}
        schema = {"oneOf": [items, {"type": "object", "required": ["events"],
                                    "properties": {"events": items}}]}
    return {"required": True, "content": {"application/json": {"schema": schema}}}
