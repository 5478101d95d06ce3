"""The "framework floor" for bench_cpu.py: a bare Flask app under flagship's gunicorn model.

Same gunicorn settings as `flagship serve` (flagship/server.py): gthread workers, the
given workers and threads, keepalive 5 s, no access log, the app built per worker after
fork. It serves the same paths as flagship's hot endpoints, each doing only what any
Flask JSON endpoint must do:

- POST /api/v1/evaluate, /api/v1/experiments/<key>/assign, /api/v1/experiments/events,
  /api/v1/experiments/events/batch: parse the JSON body (`request.get_json()`) and answer
  `jsonify(...)` with a body of the same shape and status as flagship's answer (one
  entry per requested flag; 202 for a single event; counts for a batch).
- GET /api/v1/sdk/snapshot: compare If-None-Match with a fixed ETag and answer 304
  with the same headers flagship sends (ETag, Cache-Control, X-Flagship-Revision).

No auth, no database, no validation: that is what flagship is measured against. Python's
default GIL switch interval and GC settings are kept (flagship's server sets a 1 ms
switch interval and freezes the GC after start-up; those are flagship's choices and so
part of its cost). `--switch-interval` sets it for comparison.

    python benchmarks/bare_app.py --port 8001 [--workers 2] [--threads 8]
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from flask import Flask, Response, jsonify, request
from gunicorn.app.base import BaseApplication

ETAG = '"bare-snapshot-etag"'


def evaluation(key: str) -> dict[str, Any]:
    return {"value": "A", "variant": "a", "reason": "default", "rule_id": None, "key": key}


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/api/v1/evaluate")
    def evaluate() -> Any:
        body = request.get_json()
        flags = body.get("flags") or ["flag"]
        return jsonify({"revision": 1, "flags": {key: evaluation(key) for key in flags}})

    @app.post("/api/v1/experiments/<key>/assign")
    def assign(key: str) -> Any:
        body = request.get_json()
        unit = body["context"]["key"]
        return jsonify({"experiment": key, "variant": "a", "value": unit, "in_experiment": True,
                        "reason": "experiment", "sticky": False})

    @app.post("/api/v1/experiments/events")
    def event() -> Any:
        body = request.get_json()
        return jsonify({"accepted": 1, "duplicates": 0, "rejected": [], "id": body.get("event_id")}), 202

    @app.post("/api/v1/experiments/events/batch")
    def batch() -> Any:
        items = request.get_json()
        return jsonify({"accepted": len(items), "duplicates": 0, "rejected": []})

    @app.get("/api/v1/sdk/snapshot")
    def snapshot() -> Response:
        headers = {"ETag": ETAG, "Cache-Control": "no-cache", "X-Flagship-Revision": "1"}
        if request.headers.get("If-None-Match", "") == ETAG:
            return Response(status=304, headers=headers)
        return Response("{}", status=200, mimetype="application/json", headers=headers)

    app.add_url_rule("/healthz", "healthz", lambda: {"status": "ok"})
    return app


class BareServer(BaseApplication):
    """Gunicorn configured like flagship.server.FlagshipServer, serving the bare app."""

    def __init__(self, port: int, workers: int, threads: int, switch_interval: float | None) -> None:
        self.port, self.workers, self.threads = port, workers, threads
        self.switch_interval = switch_interval
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("bind", f"127.0.0.1:{self.port}")
        self.cfg.set("workers", self.workers)
        self.cfg.set("threads", self.threads)
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("keepalive", 5)
        self.cfg.set("accesslog", None)
        self.cfg.set("errorlog", "-")

    def load(self) -> Flask:
        if self.switch_interval:
            sys.setswitchinterval(self.switch_interval)
        return create_app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval in each worker (default: Python's 5 ms)")
    args = parser.parse_args()
    BareServer(args.port, args.workers, args.threads, args.switch_interval).run()


if __name__ == "__main__":
    main()
