"""The hot endpoints without the framework: a WSGI layer in front of the Flask app.

`POST /api/v1/evaluate`, `POST /api/v1/experiments/{key}/assign`, `POST
/api/v1/experiments/events` and `GET /api/v1/sdk/snapshot` are what SDKs and services
call on every request; through Flask, flask-smorest, webargs and marshmallow each cost
3-6x a bare Flask request, while the work itself (evaluating, reading a sticky record,
committing an event) is a fraction of that. This layer answers them directly, calling the
same service functions as the Flask views, when the request is the ordinary case:

- a live key of the right scope (the same key cache as `flagship.api`),
- a JSON body with a Content-Length within the endpoint's limit, that parses, is within
  the JSON bounds and passes the endpoint's validator (`evaluate_body`, `assign_body`,
  the events' own `parse_event`), and no query but `?environment=`.

Anything else is *declined*: the request goes on, untouched (its body put back), to the
Flask app, whose views answer it exactly as before. So every error (401, 403, 404, 413,
415, 422 naming the field, 503) still comes from the one implementation the OpenAPI
document describes, and the validators here only have to accept what the documented
schemas accept, with the same result (`tests/test_fastpath.py` checks that with
hypothesis, and that both paths answer alike). A write (a first assignment, an event) is
declined only before anything was written, so a declined request is never applied twice.

Each answered request is counted, timed and logged like any other (`flagship.observability`).
With OpenTelemetry tracing on, the layer steps aside so every request gets its spans.
"""
from __future__ import annotations

import io
import logging
import re
import time
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

from flagship import observability
from flagship.auth import verify_key
from flagship.errors import FlagshipError
from flagship.experiments import ingest
from flagship.jsonvalue import json_problem
from flagship.runtime import Runtime
from flagship.serving import service

log = logging.getLogger(__name__)
Environ = dict[str, Any]
Answer = tuple[int, list[tuple[str, str]], bytes]
DECLINE = None

PREFIX = "/api/v1"
ASSIGN = re.compile(r"/api/v1/experiments/([^/]+)/assign")
MAX_FLAGS = 1000  # EvaluateSchema's bound on `flags`
STATUS_LINES = {200: "200 OK", 202: "202 ACCEPTED", 304: "304 NOT MODIFIED"}
JSON_TYPES = ("application/json", "application/json; charset=utf-8", "application/json;charset=utf-8")


# -- validators: accept exactly what the documented schemas accept, or say None ------------

def evaluate_body(body: Any) -> tuple[dict[str, Any], list[str] | None] | None:
    """`(context, flags)` of a body `EvaluateSchema` accepts; None for any other body."""
    if type(body) is not dict or "context" not in body or not body.keys() <= {"context", "flags"}:
        return None
    context, flags = body["context"], body.get("flags")
    if type(context) is not dict:
        return None
    if "flags" in body:
        if type(flags) is not list or len(flags) > MAX_FLAGS \
                or not all(type(flag) is str for flag in flags):
            return None
    return context, flags


def assign_body(body: Any) -> dict[str, Any] | None:
    """The context of a body `AssignSchema` accepts; None for any other body."""
    if type(body) is not dict or body.keys() != {"context"} or type(body["context"]) is not dict:
        return None
    return body["context"]


# -- the WSGI layer ----------------------------------------------------------------------------

class FastPath:
    """WSGI middleware answering the ordinary hot requests; the Flask app gets the rest."""

    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app = app
        self.next = app.wsgi_app
        self.runtime = runtime
        self.enabled = True
        self._posts: dict[str, Callable[[Environ, str, bytes], Answer | None]] = {
            PREFIX + "/evaluate": self._evaluate,
            PREFIX + "/experiments/events": self._event,
        }

    def __call__(self, environ: Environ, start_response: Callable) -> Iterable[bytes]:
        if self.enabled:
            started = time.perf_counter()
            route, answer = self._answer(environ)
            if answer is not None:
                return self._respond(environ, start_response, route, answer, started)
        return self.next(environ, start_response)

    # which request, and its answer ---------------------------------------------------------

    def _answer(self, environ: Environ) -> tuple[str, Answer | None]:
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX):
            return "", DECLINE
        if method == "GET":
            if path == PREFIX + "/sdk/snapshot":
                return path, self._guarded(environ, lambda env: self._snapshot(environ, env))
            return "", DECLINE
        if method != "POST":
            return "", DECLINE
        handler = self._posts.get(path)
        if handler is not None:
            route = path
        else:
            match = ASSIGN.fullmatch(path)
            if match is None:
                return "", DECLINE
            route, key = PREFIX + "/experiments/<key>/assign", match.group(1)
            handler = lambda environ, env, body: self._assign(key, env, body)  # noqa: E731
        limit = "MAX_EVENT_BATCH_BYTES" if route.endswith("/events") else "MAX_BODY_BYTES"
        return route, self._guarded(environ, lambda env: self._with_body(environ, env, handler, limit))

    def _guarded(self, environ: Environ, answer: Callable[[str], Answer | None]) -> Answer | None:
        try:
            env = self._environment(environ)
            return DECLINE if env is None else answer(env)
        except FlagshipError:  # unknown environment or experiment: the Flask view says so
            return DECLINE
        except Exception:  # noqa: BLE001 - e.g. the database or Redis is down: the Flask
            # app answers (503 with Retry-After). A write that raised was rolled back, so
            # answering it again there cannot apply it twice.
            log.debug("fast path declined after an error", exc_info=True)
            return DECLINE

    def _environment(self, environ: Environ) -> str | None:
        """The environment of an authenticated sdk-or-admin request, or None (decline)."""
        query = environ.get("QUERY_STRING", "")
        requested = None
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(name != "environment" for name, _ in pairs) or len(pairs) > 1:
                return DECLINE
            requested = pairs[0][1] or None
        bound = None
        if self.runtime.config["AUTH"]:
            token = _presented_key(environ)
            found = verify_key(self.runtime, token) if token else None
            if found is None:  # missing, unknown or revoked: the Flask app answers 401
                return DECLINE
            environ["flagship.actor"] = f"key:{found[0]}"
            bound = found[2]
        else:
            environ["flagship.actor"] = "anonymous"
        if bound is not None:
            return bound if requested in (None, bound) else DECLINE
        return requested or self.runtime.config["DEFAULT_ENVIRONMENT"]

    def _with_body(self, environ: Environ, env: str, handler: Callable, limit: str) -> Answer | None:
        if environ.get("CONTENT_TYPE", "").lower() not in JSON_TYPES:
            return DECLINE
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return DECLINE  # chunked or missing: the Flask app bounds and reads it
        if not 0 < length <= self.runtime.config[limit]:
            return DECLINE
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # declined: the Flask app reads it again
        if len(raw) != length:
            return DECLINE
        try:
            body = self.app.json.loads(raw)
        except ValueError:
            return DECLINE
        return handler(environ, env, body)

    # the endpoints ----------------------------------------------------------------------------

    def _evaluate(self, environ: Environ, env: str, body: Any) -> Answer | None:
        parsed = evaluate_body(body)
        if parsed is None or json_problem(body) is not None:
            return DECLINE
        context, flags = parsed
        outcome = service.evaluate(self.runtime, context, flags, env)
        return self._json(200, {"revision": outcome.revision, "environment": env, "flags": {
            key: service.evaluation_body(result) for key, result in outcome.results.items()}})

    def _assign(self, key: str, env: str, body: Any) -> Answer | None:
        context = assign_body(body)
        if context is None or json_problem(body) is not None:
            return DECLINE
        return self._json(200, service.assign(self.runtime, key, context, env))

    def _event(self, environ: Environ, env: str, body: Any) -> Answer | None:
        if type(body) is not dict:
            return DECLINE
        items = [body]
        checked = ingest.check(self.runtime, items, self.runtime.clock(), env)
        if checked.rejected:  # nothing written yet: the Flask view counts and explains it
            return DECLINE
        result = ingest.ingest(self.runtime, items, environment=env, checked=checked)
        # what `_json(202, result.to_dict())` writes (nothing was rejected), without the encoder
        data = b'{"accepted":%d,"duplicates":%d,"rejected":[]}\n' % (result.accepted, result.duplicates)
        return 202, [("Content-Type", "application/json")], data

    def _snapshot(self, environ: Environ, env: str) -> Answer:
        compiled = service.snapshot(self.runtime, env)
        headers = [("ETag", compiled.etag), ("Cache-Control", "no-cache"), ("Vary", "Authorization"),
                   ("X-Flagship-Revision", str(compiled.revision)), ("X-Flagship-Environment", env)]
        sent = environ.get("HTTP_IF_NONE_MATCH", "")
        if sent and compiled.etag in {t.strip().removeprefix("W/") for t in sent.split(",")}:
            return 304, headers, b""
        return 200, [("Content-Type", "application/json"), *headers], compiled.body

    # answering ---------------------------------------------------------------------------------

    def _json(self, status: int, body: Any) -> Answer:
        data = (self.app.json.dumps(body, separators=(",", ":")) + "\n").encode()  # as jsonify
        return status, [("Content-Type", "application/json")], data

    def _respond(self, environ: Environ, start_response: Callable, route: str, answer: Answer,
                 started: float) -> Iterable[bytes]:
        status, headers, data = answer
        sent_id = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = sent_id if observability.REQUEST_ID.fullmatch(sent_id) else observability.new_request_id()
        headers.append(("Content-Length", str(len(data))))
        headers.append(("X-Request-Id", request_id))
        start_response(STATUS_LINES[status], headers)
        observability.record_request(
            route, environ["REQUEST_METHOD"], status, time.perf_counter() - started,
            request_id=request_id, path=environ.get("PATH_INFO", ""),
            actor=environ.get("flagship.actor"), remote_addr=environ.get("REMOTE_ADDR"))
        return [data]


def _presented_key(environ: Environ) -> str | None:
    """Like `flagship.api.presented_key`, from the WSGI environ."""
    kind, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if kind.lower() == "bearer" and token.strip():
        return token.strip()
    return environ.get("HTTP_X_API_KEY", "").strip() or None


def install(app: Any, runtime: Runtime) -> FastPath:
    """Put the fast path in front of `app` (the test client goes through it too)."""
    fast = FastPath(app, runtime)
    app.wsgi_app = fast
    app.extensions["flagship.fastpath"] = fast
    return fast
