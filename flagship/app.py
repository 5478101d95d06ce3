"""The composition root: `create_app` builds everything; nothing is module-level."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask, redirect

from flagship.config import load_config
from flagship.db import Database
from flagship.plugins import make_plugin_manager, operator_table
from flagship.runtime import Runtime


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build a flagship app from FLAGSHIP_* settings plus `config` overrides."""
    settings = load_config(config)
    app = Flask(__name__)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_BYTES"]
    app.json.sort_keys = False

    plugins = make_plugin_manager(settings["PLUGINS"].split(","),
                                  entry_points=settings.get("ENTRY_POINTS", True))
    server = bool(settings.get("SERVER"))
    runtime = Runtime(db=Database(settings["DATABASE_URL"], background_checkpoint=server), plugins=plugins,
                      operators=operator_table(plugins), config=settings)
    app.extensions["flagship"] = runtime
    _init_services(runtime)
    _init_http(app)
    return app


def _init_services(runtime: Runtime) -> None:
    from flagship.evaluation import Evaluator, SnapshotCache
    from flagship.experiments.sticky import make_assignment_store

    # long-running server processes keep the compiled snapshot out of GC scans
    snapshots = SnapshotCache(runtime.db, runtime.operators,
                              settle_gc=runtime.config.get("SERVER", False))
    assignments = make_assignment_store(runtime.db, runtime.config["REDIS_URL"])
    # the lambda reads runtime.clock at call time, so tests can move the clock
    runtime.caches["evaluator"] = Evaluator(snapshots, assignments, lambda: runtime.clock())
    if runtime.config.get("SERVER") and runtime.config["AGGREGATE_INTERVAL"] > 0:
        # keeps per-unit aggregates fresh between monitor/results calls (which also catch up)
        from flagship.background import Periodic
        from flagship.experiments.aggregate import catch_up

        ticker = Periodic("flagship-aggregate", runtime.config["AGGREGATE_INTERVAL"],
                          lambda: catch_up(runtime.db))
        ticker.start()
        runtime.caches["aggregator"] = ticker
    if runtime.config.get("SERVER") and runtime.db.is_sqlite:
        from flagship.background import Periodic

        checkpointer = Periodic("flagship-checkpoint", 1.0, runtime.db.checkpoint)
        checkpointer.start()
        runtime.caches["checkpointer"] = checkpointer


def _init_http(app: Flask) -> None:
    from flagship import admin_api, serving
    from flagship.api import init_api
    from flagship.experiments import api as experiments_api
    from flagship.experiments import events_api, metrics_api, report_api, stats_api
    from flagship.flags import api as flags_api

    api = init_api(app)
    for module in (flags_api, experiments_api, events_api, metrics_api, report_api, stats_api,
                   serving, admin_api):
        api.register_blueprint(module.blp)
    app.add_url_rule("/healthz", "healthz", lambda: {"status": "ok"})
    app.add_url_rule("/", "index", lambda: redirect("/api/docs"))
