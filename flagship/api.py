"""HTTP glue shared by every blueprint: the Api object, auth, error mapping, paging.

Every request to a view is authenticated first (a before-request hook reads the scope
`requires` put on the view), and only then is its body read: limited in size (413, also
for chunked bodies), parsed once with a parser that turns any malformed, too deep or
too large JSON into a 400, and bounded (depth, 64-bit integers, no NUL: 422) before a
schema sees it.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, Callable

import marshmallow as ma
from flask import Flask, Response, current_app, g, request, send_from_directory
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api, Blueprint
from sqlalchemy import exc as sql_errors
from webargs import core as webargs_core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed

from flagship.auth import verify_key
from flagship.errors import (AuthenticationError, ConflictError, FlagshipError, NotFoundError,
                             PermissionDeniedError, ValidationError, VersionRequiredError)
from flagship.flags.service import VERSION_REQUIRED, require_environment
from flagship.jsonvalue import json_problem
from flagship.runtime import Runtime

log = logging.getLogger(__name__)

STATUS = {ValidationError: 422, NotFoundError: 404, ConflictError: 409, VersionRequiredError: 428,
          AuthenticationError: 401, PermissionDeniedError: 403}
HTTP_NAMES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
              405: "Method Not Allowed", 409: "Conflict", 412: "Precondition Failed",
              413: "Content Too Large", 422: "Unprocessable Entity", 428: "Precondition Required",
              500: "Internal Server Error", 503: "Service Unavailable"}
RETRY_AFTER_SECONDS = 2
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
MAX_PAGE = 1_000_000        # page x per_page stays far inside SQL's 64-bit OFFSET
MAX_VERSION = 2 ** 31 - 1   # versions are 32-bit integers in the store
# Served with every HTML response that has none of its own (the API docs, reports). The
# docs page runs Swagger UI's inline start-up script; nothing loads from another origin.
HTML_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def runtime() -> Runtime:
    """The app's runtime (services take it as their first argument)."""
    return current_app.extensions["flagship"]


def error_body(status: int, message: str, errors: dict | None = None) -> dict[str, Any]:
    """The JSON error body flask-smorest uses everywhere."""
    body: dict[str, Any] = {"code": status, "status": HTTP_NAMES.get(status, "Error"),
                            "message": message}
    if errors:
        body["errors"] = errors
    return body


def _handle_flagship_error(error: FlagshipError) -> tuple[dict[str, Any], int, dict[str, str]]:
    status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)
    errors = error.errors
    if isinstance(error, ValidationError) and errors:
        errors = {"json": errors}  # same place webargs reports body errors
    headers = {"WWW-Authenticate": 'Bearer realm="flagship"'} if status == 401 else {}
    return error_body(status, error.message, errors), status, headers


_last_outage_log = [0.0]


def _handle_unavailable(error: Exception) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The database (or Redis) cannot be reached or is saturated: 503, try again shortly."""
    now = time.monotonic()
    if now - _last_outage_log[0] > 10:  # loud, but not once per request of a storm
        _last_outage_log[0] = now
        log.error("backing store unavailable, answering 503: %s", str(error).splitlines()[0][:300])
    body = error_body(503, "the database is unavailable or overloaded; retry shortly")
    return body, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def _handle_sql_error(error: sql_errors.SQLAlchemyError) -> Any:
    if isinstance(error, (sql_errors.OperationalError, sql_errors.InterfaceError,
                          sql_errors.TimeoutError, sql_errors.DisconnectionError)) or (
            isinstance(error, sql_errors.DBAPIError) and error.connection_invalidated):
        return _handle_unavailable(error)
    raise error  # a bug: Flask answers 500 and logs the traceback


def _first_error(errors: Any, path: str = "") -> str:
    """`field.path: message` of the first leaf in a nested webargs/marshmallow error dict."""
    if isinstance(errors, dict) and errors:
        key, value = next(iter(errors.items()))
        skip = key in ("json", "query", "headers", "_schema")
        return _first_error(value, path if skip else (f"{path}.{key}" if path else str(key)))
    if isinstance(errors, list) and errors:
        return _first_error(errors[0], path)
    return f"{path}: {errors}" if path else str(errors)


class FlagshipApi(Api):
    """flask-smorest's Api whose error bodies always carry a readable `message`, whose 405
    answers say which methods are allowed, and whose OpenAPI document lists each
    operation's real error responses (`flagship.openapi`) instead of a catch-all."""

    DEFAULT_ERROR_RESPONSE_NAME = None

    def init_app(self, app: Flask, *, spec_kwargs: dict[str, Any] | None = None) -> None:
        from flagship import openapi

        super().init_app(app, spec_kwargs=spec_kwargs)
        self.ma_plugin.converter.add_attribute_function(openapi.exclusive_bounds)
        openapi.register_components(self.spec)
        self.spec.components.schema("EventIn", openapi.EVENT_SCHEMA)

    def register_blueprint(self, blp: Blueprint, **options: Any) -> None:
        from flagship import openapi

        super().register_blueprint(blp, **options)
        openapi.document_errors(self.spec, self._app)

    def handle_http_exception(self, error: HTTPException) -> Any:
        payload, code, headers = super().handle_http_exception(error)
        if "message" not in payload:
            errors = payload.get("errors")
            payload["message"] = (f"invalid input: {_first_error(errors)}" if errors
                                  else (error.description or payload["status"]))
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers = {**dict(headers or {}), "Allow": ", ".join(sorted(error.valid_methods))}
        return payload, code, headers


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider whose `loads` fails only with ValueError (a 400 from
    `request.get_json`), also on input nested beyond the interpreter's recursion limit."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _json_error(data: bytes) -> str:
    """Why `data` is not acceptable JSON, in words a client can act on."""
    try:
        current_app.json.loads(data)
    except json.JSONDecodeError as error:
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    except ValueError as error:
        return "it is nested too deeply" if "nested" in str(error) else \
            "a number in it has too many digits"
    return "it cannot be decoded"


class FlagshipParser(FlaskParser):
    """webargs' parser reading the body Flask parsed (once, safely, after authentication)."""

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req) or not req.get_data(cache=True):
            # no body (an action sent with a JSON Content-Type and nothing else, as curl
            # does): the schema says what is missing, by field, instead of a bare 400
            return webargs_core.missing
        return req.get_json(cache=True)


class FlagshipBlueprint(Blueprint):
    ARGUMENTS_PARSER = FlagshipParser()


def init_api(app: Flask) -> Api:
    """Create the Api, register the error table and the offline docs assets."""
    app.config.update(
        API_TITLE="flagship", API_VERSION="v1", OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api", OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs", OPENAPI_SWAGGER_UI_URL="/api/docs/assets/",
        API_SPEC_OPTIONS={
            "info": {"description": "Feature flags, experiments and progressive delivery. "
                                    "Authenticate with `Authorization: Bearer <api key>`."},
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearerAuth": []}],
        },
    )
    app.json = SafeJSONProvider(app)
    app.json.sort_keys = False
    api = FlagshipApi(app)
    app.register_error_handler(FlagshipError, _handle_flagship_error)
    app.register_error_handler(sql_errors.SQLAlchemyError, _handle_sql_error)
    _register_redis_errors(app)
    app.before_request(_guard_request)
    app.after_request(_security_headers)
    app.add_url_rule("/api/docs/assets/<path:filename>", "docs_assets", _docs_asset)
    return api


def _register_redis_errors(app: Flask) -> None:
    # the assignment store falls back to SQL when Redis is down; this is the safety net
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    app.register_error_handler(RedisConnectionError, _handle_unavailable)
    app.register_error_handler(RedisTimeoutError, _handle_unavailable)


def _view_method() -> Callable | None:
    """The function that will handle this request (the MethodView method), if routed."""
    if request.url_rule is None:
        return None
    view = current_app.view_functions.get(request.endpoint or "")
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return view
    method = request.method.lower()
    handler = getattr(view_class, method, None)
    if handler is None and method == "head":
        handler = getattr(view_class, "get", None)
    return handler


def _has_body() -> bool:
    return bool(request.content_length) or (
        request.content_length is None
        and "chunked" in request.headers.get("Transfer-Encoding", "").lower())


def _guard_request() -> None:
    """Authenticate, then read and bound the body: before any schema or view sees it."""
    view = _view_method()
    if view is None:
        return
    scope = getattr(view, "_flagship_scope", None)
    if scope is not None:
        _authenticate(scope)
        g.flagship_authenticated = True
    limit = getattr(view, "_flagship_body_limit", None)
    if limit is not None:
        request.max_content_length = current_app.config[limit]
    if request.method not in BODY_METHODS or not _has_body():
        return
    if not request.is_json:
        if scope is not None and request.path.startswith("/api/"):
            # read as no body at all, it came back as every field missing
            raise BadRequest("the body must be JSON (Content-Type: application/json), got "
                             f"{request.content_type or 'no Content-Type'}")
        return
    request.get_data(cache=True)
    if request.content_length is None:
        # a chunked body stops at the limit without a word: one more read raises the 413
        request.stream.read(1)
    try:
        body = request.get_json()  # parsed once, cached for the schemas and views
    except BadRequest:
        raise BadRequest(f"the body is not valid JSON: {_json_error(request.get_data())}") from None
    if getattr(view, "_flagship_items_checked", False):
        return  # event items are bounded one by one (a bad item never sinks the batch)
    problem = json_problem(body)
    if problem is not None:
        raise ValidationError(problem[1], field=problem[0])


def _security_headers(response: Response) -> Response:
    """HTML gets CSP, nosniff and a referrer policy (a header already set is kept); cookies
    get Secure when the request came over TLS."""
    if response.mimetype == "text/html":
        for name, value in HTML_SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    if request.is_secure:
        cookies = response.headers.getlist("Set-Cookie")
        if any("secure" not in c.lower() for c in cookies):
            response.headers.setlist("Set-Cookie", [
                c if "secure" in c.lower() else f"{c}; Secure" for c in cookies])
    return response


def _docs_asset(filename: str) -> Any:
    # Swagger UI ships inside the swagger-ui-bundle wheel: the docs page needs no CDN.
    from swagger_ui_bundle import swagger_ui_path

    return send_from_directory(swagger_ui_path, filename, max_age=86400)


def presented_key() -> str | None:
    """The API key a request presents: `Authorization: Bearer <key>`, else `X-API-Key: <key>`
    (the header OFREP clients may send)."""
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def _authenticate(scope: str) -> None:
    rt = runtime()
    if not rt.config["AUTH"]:
        g.actor, g.scope, g.key_environment = "anonymous", "admin", None
        return
    token = presented_key()
    if token is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>' "
                                  "(or 'X-API-Key: <key>')")
    found = verify_key(rt, token)
    if found is None:
        raise AuthenticationError("invalid or revoked API key")
    name, key_scope, key_environment = found
    if scope == "admin" and key_scope != "admin":
        raise PermissionDeniedError(f"this call needs an admin key; {name!r} is an {key_scope} key")
    g.actor, g.scope, g.key_environment = f"key:{name}", key_scope, key_environment


def requires(scope: str = "admin") -> Callable:
    """Decorate a view method: the caller needs a live key of `scope` (admin covers sdk)."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not g.get("flagship_authenticated"):  # normally done before the body is read
                _authenticate(scope)
            return view(*args, **kwargs)
        wrapper._flagship_scope = scope  # type: ignore[attr-defined]
        return wrapper
    return decorate


def body_options(limit: str | None = None, items_checked: bool = False) -> Callable:
    """Decorate a view method (inside `requires`): `limit` names the setting bounding its
    body; `items_checked` leaves bounding the JSON to the view (it checks item by item)."""
    def decorate(view: Callable) -> Callable:
        view._flagship_body_limit = limit  # type: ignore[attr-defined]
        view._flagship_items_checked = items_checked  # type: ignore[attr-defined]
        return view
    return decorate


def environment(named: str | None = None) -> str:
    """The environment a call acts in: `named` (a path segment) or `?environment=`, else the
    key's own, else the default one. A key bound to an environment cannot act in another."""
    requested = named or request.args.get("environment") or None
    bound = g.get("key_environment")
    if bound is not None:
        if requested is not None and requested != bound:
            raise PermissionDeniedError(
                f"this key is bound to environment {bound!r}; it cannot use {requested!r}")
        return bound
    if requested is None:
        return runtime().config["DEFAULT_ENVIRONMENT"]
    # a mistyped one is a 404 here, for every endpoint alike: some (events, layers) used to
    # act in it, storing what could never count or listing nothing
    with runtime().db.session() as session:
        require_environment(session, requested)
    return requested


def require_unbound(what: str) -> None:
    """Changes that reach every environment need a key bound to none."""
    bound = g.get("key_environment")
    if bound is not None:
        raise PermissionDeniedError(f"{what} affects every environment: this key is bound to "
                                    f"environment {bound!r}")


def bound_environment() -> str | None:
    """The environment the calling key is bound to, if any."""
    return g.get("key_environment")


def actor() -> str:
    return g.get("actor", "anonymous")


def expected_version(body: dict[str, Any] | None = None, required: bool = False) -> int | None:
    """The version a write edits: `If-Match` header or `version` field. None if neither and
    not `required`; else VERSION_REQUIRED, which the service's `check_version` answers with
    428 once it knows the object exists (an unknown one is a 404 first)."""
    header = request.headers.get("If-Match")
    if header:
        raw = header.strip().removeprefix("W/").strip('"')
        try:
            return int(raw)
        except ValueError:
            raise ValidationError(f"If-Match must be a version number, got {header!r}",
                                  field="If-Match") from None
    if body and body.get("version") is not None:
        version = body["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValidationError(f"must be a version number, got {version!r}", field="version")
        return version
    return VERSION_REQUIRED if required else None


class PageArgs(ma.Schema):
    """Paging query parameters."""

    page = ma.fields.Integer(load_default=1, validate=ma.validate.Range(min=1, max=MAX_PAGE))
    per_page = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=500))


def page_body(items: list[Any], total: int, page: int, per_page: int) -> dict[str, Any]:
    """The envelope of every paged listing."""
    return {"items": items, "total": total, "page": page, "per_page": per_page}


def page_schema(item: type[ma.Schema], name: str) -> type[ma.Schema]:
    """The schema of a paged listing of `item` (what `page_body` returns)."""
    return type(name, (ma.Schema,), {
        "items": ma.fields.List(ma.fields.Nested(item)), "total": ma.fields.Integer(),
        "page": ma.fields.Integer(), "per_page": ma.fields.Integer(),
        "__doc__": f"One page of {item.__name__.removesuffix('Schema')} items."})


def versioned(view: Any, status: int = 200) -> tuple[Any, int, dict[str, str]]:
    """A response whose ETag is the object's version (what If-Match sends back)."""
    number = view["version"] if isinstance(view, dict) else view.version
    return view, status, {"ETag": f'"{number}"'}


def make_blueprint(name: str, description: str) -> Blueprint:
    return FlagshipBlueprint(name, __name__, url_prefix="/api/v1", description=description)

