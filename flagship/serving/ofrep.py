"""OFREP v0.3.0 (OpenFeature Remote Evaluation Protocol) endpoints: single and bulk evaluation
and the event stream that bulk responses advertise.

Evaluation goes through the same service call as `/api/v1/evaluate`, so experiments
through OFREP honour sticky assignments and record first exposures exactly as it does.
The mapping:

- context: `targetingKey` is our unit `key` (it wins over an attribute named `key`); no
  targeting key is not an error (rollouts and experiments are skipped, as in /evaluate).
- values: a `number` flag whose variant values are all JSON integers is an integer flag
  (values sent as `10`); any other number flag is a float flag (every value sent as a
  float, `10.0`). OpenFeature clients type-check strictly, so ask an integer flag with
  an integer call and a float flag with a float call.
- reasons: ours (TARGETING_MATCH, SPLIT, DEFAULT, DISABLED), except STATIC for an
  enabled flag without rules, allow list or block list (its value is the same for every
  context, which is what OpenFeature's STATIC says).
- errors: FLAG_NOT_FOUND is a 404; INVALID_CONTEXT, PARSE_ERROR and GENERAL a 400 (other
  codes of ours become GENERAL); in bulk they are per flag, inline.
- metadata: `ruleId` and `experiment` when set; single evaluations add `snapshotRevision`
  and `environment`. Bulk metadata is `{"environment"}`: the bulk ETag is the hash of the
  body, so a revision counter in it would change the ETag on every write anywhere.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

import marshmallow as ma
from flask import Response, current_app, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from werkzeug.exceptions import BadRequest

from flagship.api import environment, presented_key, requires, runtime
from flagship.auth import hash_key, verify_key
from flagship.errors import AuthenticationError, ValidationError
from flagship.flags.evaluate import DEFAULT, FLAG_NOT_FOUND, Evaluation
from flagship.flags.model import Flag
from flagship.serving import changes, service
from flagship.serving.stream import event_stream


class OfrepBlueprint(Blueprint):
    """A blueprint that also documents the `X-API-Key` header OFREP clients may send."""

    def register_views_in_doc(self, api: Any, app: Any, spec: Any, *, name: str,
                              parameters: Any) -> None:
        if "apiKeyAuth" not in spec.components.security_schemes:
            spec.components.security_scheme(
                "apiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
        super().register_views_in_doc(api, app, spec, name=name, parameters=parameters)


blp = OfrepBlueprint("ofrep", __name__, url_prefix="/ofrep/v1",
                     description="OpenFeature Remote Evaluation Protocol (OFREP v0.3.0): "
                                 "evaluation for OpenFeature's OFREP providers, with an SDK key "
                                 "(`Authorization: Bearer` or `X-API-Key`)")

STATIC = "STATIC"
REASONS = frozenset({STATIC, "TARGETING_MATCH", "SPLIT", "DISABLED", "DEFAULT", "CACHED",
                     "STALE", "UNKNOWN", "ERROR"})
REQUEST_ERRORS = frozenset({"PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL"})
INACTIVITY_DELAY_SECONDS = 120  # how long a backgrounded client (a hidden tab) keeps the stream
SECURITY = [{"bearerAuth": []}, {"apiKeyAuth": []}]


class OfrepRequestSchema(ma.Schema):
    """An OFREP evaluation request (a missing body or context is an empty context)."""

    context = ma.fields.Dict(metadata={"description": "attributes; `targetingKey` is the unit"})


class OfrepEvaluationSchema(ma.Schema):
    """A successful evaluation of one flag."""

    key = ma.fields.String()
    value = ma.fields.Raw(metadata={"description": "boolean, string, integer, float or object"})
    reason = ma.fields.String(metadata={"enum": sorted(REASONS)})
    variant = ma.fields.String()
    metadata = ma.fields.Dict(metadata={"description": "strings, numbers and booleans"})


class OfrepFailureSchema(ma.Schema):
    """A failed evaluation of one flag (the 400/404 body; inline in bulk answers)."""

    key = ma.fields.String()
    errorCode = ma.fields.String(metadata={"enum": ["FLAG_NOT_FOUND", *sorted(REQUEST_ERRORS)]})
    errorDetails = ma.fields.String()


class OfrepEventStreamSchema(ma.Schema):
    """Where to hear about changes: server-sent `refetchEvaluation` events."""

    type = ma.fields.String(metadata={"enum": ["sse"]})
    url = ma.fields.String()
    inactivityDelaySec = ma.fields.Integer()


class OfrepBulkSchema(ma.Schema):
    """Every flag of the key's environment for one context."""

    flags = ma.fields.List(ma.fields.Raw(), metadata={
        "description": "OfrepEvaluation or OfrepFailure items, in flag key order"})
    metadata = ma.fields.Dict()
    eventStreams = ma.fields.List(ma.fields.Nested(OfrepEventStreamSchema))


class OfrepBulkFailureSchema(ma.Schema):
    """A bulk request that could not be evaluated at all."""

    errorCode = ma.fields.String(metadata={"enum": sorted(REQUEST_ERRORS)})
    errorDetails = ma.fields.String()


BODY = {"content": {"application/json": {"schema": OfrepRequestSchema}}}
# what every OFREP call may also answer (the app's JSON error body; OFREP defines none)
COMMON = {"401": "missing, invalid or revoked API key", "403": "the key may not use this environment",
          "413": "the body is larger than FLAGSHIP_MAX_BODY_BYTES",
          "503": "the database is unavailable; retry after Retry-After seconds"}


def common_errors(*statuses: str) -> Any:
    """Document `statuses` of COMMON on a view (description only, as the OFREP spec does)."""
    def decorate(view: Any) -> Any:
        for status in statuses:
            view = blp.alt_response(int(status), description=COMMON[status])(view)
        return view
    return decorate


@blp.route("/evaluate/flags/<path:key>")
class OfrepFlag(MethodView):
    @requires("sdk")
    @blp.doc(requestBody=BODY, security=SECURITY)
    @blp.response(200, OfrepEvaluationSchema)
    @blp.alt_response(400, schema=OfrepFailureSchema, description="bad context or evaluation error")
    @blp.alt_response(404, schema=OfrepFailureSchema, description="FLAG_NOT_FOUND")
    @common_errors("401", "403", "413", "503")
    def post(self, key: str) -> Response:
        """Evaluate one flag for a context (OpenFeature's OFREP providers call this)

        In the key's environment, sticky-aware and recording first exposures like /evaluate."""
        context, error = _context()
        if error is not None:
            return _json({"key": key, "errorCode": error[0], "errorDetails": error[1]}, 400)
        env = environment()
        rt = runtime()
        flag = service.snapshot(rt, env).snapshot.flags.get(key)
        outcome = service.evaluate(rt, context, [key], env)
        result = outcome.results[key]
        if result.error_code is not None:
            return _json(_failure(result), 404 if result.error_code == FLAG_NOT_FOUND else 400)
        body = _success(result, flag)
        body["metadata"].update(snapshotRevision=outcome.revision, environment=env)
        return _json(body, 200)


@blp.route("/evaluate/flags")
class OfrepFlags(MethodView):
    @requires("sdk")
    @blp.doc(requestBody=BODY, security=SECURITY, parameters=[
        {"in": "header", "name": "If-None-Match", "schema": {"type": "string"},
         "description": "the ETag of an earlier answer for the same context: 304 if unchanged"},
        {"in": "query", "name": "flagConfigEtag", "schema": {"type": "string"},
         "description": "sent by providers after a refetchEvaluation event; accepted, not needed"},
        {"in": "query", "name": "flagConfigLastModified", "schema": {"type": "string"},
         "description": "accepted, not needed"}])
    @blp.response(200, OfrepBulkSchema, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.alt_response(304, description="the answer for this context has not changed")
    @blp.alt_response(400, schema=OfrepBulkFailureSchema, description="unreadable body or context")
    @common_errors("401", "403", "413", "503")
    def post(self) -> Response:
        """Evaluate every flag of the key's environment for a context (static-context providers)

        Per-flag failures are inline. The strong ETag is the hash of the answer, so it covers
        the environment's flags, the context and the unit's sticky assignments; the same
        URL POSTed with another context has another ETag. `eventStreams` names the
        server-sent-event stream that says when to fetch again."""
        context, error = _context()
        if error is not None:
            return _json({"errorCode": error[0], "errorDetails": error[1]}, 400)
        env = environment()
        rt = runtime()
        flags = service.snapshot(rt, env).snapshot.flags
        outcome = service.evaluate(rt, context, None, env)
        body: dict[str, Any] = {
            "flags": [_failure(r) if r.error_code else _success(r, flags.get(key))
                      for key, r in outcome.results.items()],
            "metadata": {"environment": env}}
        if rt.config["STREAM_LIMIT"] > 0:
            body["eventStreams"] = [{"type": "sse", "url": _stream_url(env),
                                     "inactivityDelaySec": INACTIVITY_DELAY_SECONDS}]
        data = current_app.json.dumps(body, separators=(",", ":")).encode()
        etag = '"' + hashlib.sha256(data).hexdigest()[:40] + '"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache",
                   "Vary": "Authorization, X-API-Key"}
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return Response(status=304, headers=headers)
        return Response(data, status=200, mimetype="application/json", headers=headers)


@blp.route("/stream")
class OfrepStream(MethodView):
    @blp.doc(security=[*SECURITY, {}], parameters=[
        {"in": "query", "name": "token", "schema": {"type": "string"},
         "description": "the stream token of the URL in `eventStreams` (EventSource sends no "
                        "headers); without it, an SDK key in a header"},
        {"in": "query", "name": "environment", "schema": {"type": "string"}}])
    @blp.response(200, description="`data: {\"type\": \"refetchEvaluation\", \"etag\": ...}` "
                                   "on every change of the environment, a comment every 15 s",
                  schema={"type": "string"}, content_type="text/event-stream")
    @blp.alt_response(401, description="bad or revoked key or token")
    @blp.alt_response(403, description=COMMON["403"])
    @blp.alt_response(404, description="the environment does not exist")
    @blp.alt_response(503, description="too many open streams in this server process (or the "
                                       "database is unavailable); poll, and retry after "
                                       "Retry-After seconds")
    def get(self) -> Response:
        """OFREP change notifications (the `eventStreams` URL of bulk answers)"""
        token = request.args.get("token")
        if token and runtime().config["AUTH"]:
            env = request.args.get("environment") or runtime().config["DEFAULT_ENVIRONMENT"]
            if not changes.verify_stream_token(runtime(), token, env):
                raise AuthenticationError("invalid stream token, or its key was revoked")
        else:  # a key in a header, checked as on every sdk view (this view's scope is optional)
            env = requires("sdk")(environment)()
        return event_stream(env, changes.refetch_message)


@blp.errorhandler(BadRequest)
def _unreadable(error: BadRequest) -> Response:
    # malformed JSON is refused before the view runs; OFREP clients want their own body
    return _request_error("PARSE_ERROR", error.description or "the body is not valid JSON")


@blp.errorhandler(ValidationError)
def _unacceptable(error: ValidationError) -> Response:
    # JSON beyond the server's bounds (depth, 64-bit integers, NUL characters)
    return _request_error("INVALID_CONTEXT", error.message)


def _request_error(code: str, details: str) -> Response:
    key = (request.view_args or {}).get("key")
    body = {"errorCode": code, "errorDetails": details}
    return _json({"key": key, **body} if key is not None else body, 400)


def _context() -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Our context from the request body, or an OFREP (errorCode, errorDetails)."""
    if not request.get_data(cache=True).strip():
        return {}, None  # the official provider sends no body without a context
    body = request.get_json(force=True, cache=True)  # malformed: BadRequest -> PARSE_ERROR
    if not isinstance(body, dict):
        return {}, ("PARSE_ERROR", "the body must be a JSON object")
    context = body.get("context")
    if context is None:
        return {}, None
    if not isinstance(context, dict):
        return {}, ("INVALID_CONTEXT", f"context must be an object, got {type(context).__name__}")
    if context.get("targetingKey") is not None:
        context = {**context, "key": context["targetingKey"]}
    return context, None


def _success(result: Evaluation, flag: Flag | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if result.rule_id is not None:
        metadata["ruleId"] = result.rule_id
    if result.experiment is not None:
        metadata["experiment"] = result.experiment
    return {"key": result.flag_key, "value": ofrep_value(flag, result.value),
            "reason": ofrep_reason(result, flag), "variant": result.variant, "metadata": metadata}


def _failure(result: Evaluation) -> dict[str, Any]:
    code = result.error_code or "GENERAL"
    if code != FLAG_NOT_FOUND and code not in REQUEST_ERRORS:
        code = "GENERAL"
    return {"key": result.flag_key, "errorCode": code,
            "errorDetails": result.error_message or result.error_code or "evaluation failed"}


def ofrep_value(flag: Flag | None, value: Any) -> Any:
    """`value` as OFREP sends it: a number flag is an integer flag only if all its values are."""
    if flag is None or flag.type != "number" or isinstance(value, bool):
        return value
    if not isinstance(value, (int, float)) or is_integer_flag(flag.variants):
        return value
    return float(value)


def is_integer_flag(variants: Mapping[str, Any]) -> bool:
    """Whether every variant value is a JSON integer (`10`, not `10.0`)."""
    return all(type(v) is int for v in variants.values())


def ofrep_reason(result: Evaluation, flag: Flag | None) -> str:
    """Our reason, or STATIC for the default of a flag that targets nobody."""
    if (result.reason == DEFAULT and flag is not None and flag.enabled and not flag.rules
            and not flag.allowlist and not flag.blocklist):
        return STATIC
    return result.reason if result.reason in REASONS else "UNKNOWN"


def _stream_url(env: str) -> str:
    rt = runtime()
    params = {"environment": env}
    secret = presented_key()
    found = verify_key(rt, secret) if rt.config["AUTH"] and secret else None
    if found is not None:
        params["token"] = changes.stream_token(found[0], hash_key(secret), env)
    return url_for("ofrep.OfrepStream", _external=True, **params)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _json(body: dict[str, Any], status: int) -> Response:
    data = current_app.json.dumps(body, separators=(",", ":"))
    return current_app.response_class(data, status=status, mimetype="application/json")
