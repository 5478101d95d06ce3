"""HTTP glue shared by every blueprint: the Api object, auth, error mapping, paging."""
from __future__ import annotations

import functools
from typing import Any, Callable

import marshmallow as ma
from flask import Flask, current_app, g, request, send_from_directory
from flask_smorest import Api, Blueprint
from werkzeug.exceptions import HTTPException

from flagship.auth import verify_key
from flagship.errors import (AuthenticationError, ConflictError, FlagshipError, NotFoundError,
                             PermissionDeniedError, ValidationError)
from flagship.runtime import Runtime

STATUS = {ValidationError: 422, NotFoundError: 404, ConflictError: 409,
          AuthenticationError: 401, PermissionDeniedError: 403}
HTTP_NAMES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
              422: "Unprocessable Entity", 428: "Precondition Required", 500: "Internal Server Error"}


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
    """flask-smorest's Api whose error bodies always carry a readable `message`."""

    def handle_http_exception(self, error: HTTPException) -> Any:
        payload, code, headers = super().handle_http_exception(error)
        if "message" not in payload:
            errors = payload.get("errors")
            payload["message"] = (f"invalid input: {_first_error(errors)}" if errors
                                  else (error.description or payload["status"]))
        return payload, code, headers


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
    api = FlagshipApi(app)
    app.register_error_handler(FlagshipError, _handle_flagship_error)
    app.before_request(_reject_nul_characters)
    app.add_url_rule("/api/docs/assets/<path:filename>", "docs_assets", _docs_asset)
    return api


def _nul_path(value: Any, path: str = "") -> str | None:
    """Dotted path of the first string (or key) holding a NUL character, if any."""
    if isinstance(value, str):
        return path or "body" if "\x00" in value else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        child = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return child
        found = _nul_path(item, child)
        if found:
            return found
    return None


def _reject_nul_characters() -> None:
    # PostgreSQL text cannot hold NUL; refuse it up front with a 422 instead of failing in
    # the database. Event ingestion checks its own fields (and sets its own size limit).
    if request.method not in ("POST", "PUT", "PATCH") or not request.is_json:
        return
    if request.path.startswith("/api/v1/experiments/events"):
        return
    field = _nul_path(request.get_json(silent=True))
    if field is not None:
        raise ValidationError("text must not contain NUL characters", field=field)


def _docs_asset(filename: str) -> Any:
    # Swagger UI ships inside the swagger-ui-bundle wheel: the docs page needs no CDN.
    from swagger_ui_bundle import swagger_ui_path

    return send_from_directory(swagger_ui_path, filename, max_age=86400)


def _authenticate(scope: str) -> None:
    rt = runtime()
    if not rt.config["AUTH"]:
        g.actor, g.scope, g.key_environment = "anonymous", "admin", None
        return
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    found = verify_key(rt, token.strip())
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
            _authenticate(scope)
            return view(*args, **kwargs)
        return wrapper
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
    return requested or runtime().config["DEFAULT_ENVIRONMENT"]


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
    """The version a write edits: `If-Match` header or `version` field (else 428 if required)."""
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
    if required:
        from flask_smorest import abort
        abort(428, message="send the version you edit: an If-Match header or a 'version' field "
                           "(GET the object to learn it)", errors={"version": ["required"]})
    return None


class PageArgs(ma.Schema):
    """Paging query parameters."""

    page = ma.fields.Integer(load_default=1, validate=ma.validate.Range(min=1))
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
    return Blueprint(name, __name__, url_prefix="/api/v1", description=description)

