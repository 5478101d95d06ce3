"""Operating the HTTP server: request ids and logs, `/metrics`, `/readyz`, tracing.

- Every response carries `X-Request-Id` (the caller's, when it sent a sane one). With
  FLAGSHIP_LOG_FORMAT=json each request is one JSON log line; text (the default) logs
  warnings and errors only, as before.
- `GET /metrics`: Prometheus text, added up over every gunicorn worker (multiprocess
  mode). With FLAGSHIP_METRICS_TOKEN set it needs `Authorization: Bearer <that token>`
  (for a scraper that should hold no API key); otherwise an admin API key.
- `GET /readyz`: the checks of `flagship.health`; 200 ready or degraded, 503 unavailable.
- OpenTelemetry tracing (Flask and SQLAlchemy spans) when OTEL_EXPORTER_OTLP_ENDPOINT is
  set and `flagship[otel]` is installed; nothing is imported otherwise.
"""
from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import random
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Response, current_app, g, request

from flagship import telemetry

log = logging.getLogger(__name__)
request_log = logging.getLogger("flagship.request")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HOT_ROUTES = frozenset({"/api/v1/evaluate", "/api/v1/sdk/snapshot", "/api/v1/explain",
                        "/api/v1/experiments/<key>/assign", "/api/v1/experiments/events",
                        "/api/v1/experiments/events/batch"})
HOT_PREFIXES = ("/ofrep/",)


def init_app(app: Flask) -> None:
    """Attach request ids, request metrics and logs, `/metrics` and `/readyz`."""
    telemetry.configure(app.config.get("METRICS_MAX_FLAGS", 100))
    app.before_request(_start)
    app.after_request(_finish)
    app.add_url_rule("/metrics", "prometheus_metrics", _metrics)
    app.add_url_rule("/readyz", "readyz", _readyz)


# -- per request ---------------------------------------------------------------------------------

def _start() -> None:
    g.request_started = time.perf_counter()
    sent = request.headers.get("X-Request-Id", "")
    g.request_id = sent if REQUEST_ID.fullmatch(sent) else new_request_id()


def _finish(response: Response) -> Response:
    started = g.get("request_started")
    if started is None:  # a request that failed before our before_request ran
        return response
    response.headers.setdefault("X-Request-Id", g.request_id)
    record_request(request.url_rule.rule if request.url_rule is not None else "unmatched",
                   request.method, response.status_code, time.perf_counter() - started,
                   request_id=g.request_id, path=request.path, actor=g.get("actor"),
                   remote_addr=request.remote_addr)
    return response


def new_request_id() -> str:
    """32 random hex digits, like a uuid4's, from the process's PRNG: an id to correlate
    log lines, not a secret, so it need not cost a getrandom() system call per request
    (`random` reseeds itself in a forked child, so workers never share a sequence)."""
    return f"{random.getrandbits(128):032x}"


@functools.lru_cache(maxsize=4096)
def _series(route: str, method: str, status: int) -> tuple[Any, Any]:
    """A request's counter and (hot routes) latency series. Their labels are bounded (URL
    rules, methods, statuses); `labels()` takes a lock and builds its key on every call."""
    hot = route in HOT_ROUTES or route.startswith(HOT_PREFIXES)
    return (telemetry.REQUESTS.labels(route, method, str(status)),
            telemetry.LATENCY.labels(route) if hot else None)


def record_request(route: str, method: str, status: int, elapsed: float, *, request_id: str,
                   path: str, actor: str | None, remote_addr: str | None) -> None:
    """Count, time and log one answered request (the Flask app's and the fast path's)."""
    counter, latency = _series(route, method if method in METHODS else "OTHER", status)
    counter.inc()
    if latency is not None:
        latency.observe(elapsed)
    if request_log.isEnabledFor(logging.INFO):
        request_log.info("request", extra={"fields": {
            "request_id": request_id, "method": method, "path": path, "route": route,
            "status": status, "duration_ms": round(elapsed * 1000, 2), "actor": actor,
            "remote_addr": remote_addr}})


# -- /metrics and /readyz ---------------------------------------------------------------------------

def _metrics() -> Any:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    _authorize_scrape()
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Cache-Control": "no-store"})


def _authorize_scrape() -> None:
    from flagship.api import _authenticate
    from flagship.errors import AuthenticationError

    token = current_app.config.get("METRICS_TOKEN") or ""
    if not token:
        _authenticate("admin")  # an admin API key (nothing when FLAGSHIP_AUTH is off)
        return
    kind, _, sent = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
        raise AuthenticationError("/metrics needs 'Authorization: Bearer <FLAGSHIP_METRICS_TOKEN>'")


def _readyz() -> Any:
    from flagship.health import readiness

    jobs = current_app.extensions.get("flagship.jobs")  # the jobs, or how to read their status
    ready, report = readiness(current_app.extensions["flagship"], jobs() if callable(jobs) else jobs)
    headers = {"Cache-Control": "no-store"}
    if not ready:
        headers["Retry-After"] = "5"
    return report, 200 if ready else 503, headers


# -- logs ------------------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(), "pid": record.process}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: str) -> None:
    """`json`: every flagship log line (one per request included) as JSON on stderr;
    `text`: warnings and errors as plain lines."""
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_flagship", False)]:
        root.removeHandler(old)
    handler._flagship = True  # type: ignore[attr-defined]
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        root.setLevel(logging.INFO)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
        root.setLevel(logging.WARNING)
    root.addHandler(handler)


# -- tracing ---------------------------------------------------------------------------------------

def init_tracing(app: Flask, runtime: Any, exporter: Any = None) -> bool:
    """Trace requests and SQL with OpenTelemetry when OTEL_EXPORTER_OTLP_ENDPOINT is set.

    Imports OpenTelemetry only then; starts its export thread, so call it in the serving
    process (after gunicorn's fork). Returns whether tracing is on."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and exporter is None:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                    "(pip install 'flagship[otel]'): tracing is off")
        return False
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor: Any = BatchSpanProcessor(OTLPSpanExporter())
    else:
        processor = SimpleSpanProcessor(exporter)
    service = os.environ.get("OTEL_SERVICE_NAME", "flagship")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    if exporter is None:
        trace.set_tracer_provider(provider)
    fast = app.extensions.get("flagship.fastpath")
    if fast is not None:  # every request goes through Flask, so every request gets its span
        fast.enabled = False
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    # its version pin stops at SQLAlchemy 2.0; the engine events it uses are unchanged in 2.1
    SQLAlchemyInstrumentor().instrument(engine=runtime.db.engine, tracer_provider=provider,
                                        skip_dep_check=True)
    app.extensions["flagship.tracer_provider"] = provider
    return True
