"""The HTTP composition root: `create_app` wraps a runtime in a Flask app; nothing is module-level."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask
from werkzeug.routing import IntegerConverter

from flagship.runtime import Runtime, make_runtime

MAX_ID = 2 ** 31 - 1  # a row id: INTEGER, 32 bits on PostgreSQL


class IdConverter(IntegerConverter):
    """`<int:...>` in every route: a row id, at most MAX_ID. A larger number matches no
    route, a 404 like any unknown id, instead of overflowing the database driver (a 500:
    SQLite's beyond 64 bits, PostgreSQL's INTEGER beyond 32); the OpenAPI document shows
    the bound."""

    def __init__(self, map: Any, fixed_digits: int = 0, min: int | None = None,  # noqa: A002
                 max: int | None = MAX_ID, signed: bool = False) -> None:  # noqa: A002
        super().__init__(map, fixed_digits, min, max, signed)


def create_app(config: Mapping[str, Any] | None = None, runtime: Runtime | None = None) -> Flask:
    """A flagship app over `runtime`, or over one built from FLAGSHIP_* settings plus `config`.

    Starts no threads: periodic work belongs to `flagship serve` / `flagship worker`.
    """
    runtime = runtime or make_runtime(config)
    app = Flask(__name__)
    app.url_map.converters["int"] = IdConverter  # before any route is added
    app.config.update(runtime.config)
    app.config["MAX_CONTENT_LENGTH"] = runtime.config["MAX_BODY_BYTES"]
    app.json.sort_keys = False
    app.extensions["flagship"] = runtime
    _init_http(app)
    return app


def _init_http(app: Flask) -> None:
    from flagship import admin_api, config_api, observability
    from flagship.api import init_api
    from flagship.experiments.api import BLUEPRINTS as experiment_blueprints
    from flagship.flags import api as flags_api
    from flagship.rollout.api import BLUEPRINTS as rollout_blueprints
    from flagship.serving import api as serving_api, fastpath, ofrep, stream
    from flagship.ui import init_ui

    observability.init_app(app)  # first: request ids and metrics also for refused requests
    api = init_api(app)
    for blueprint in (flags_api.blp, *experiment_blueprints, *rollout_blueprints, serving_api.blp,
                      stream.blp, ofrep.blp, admin_api.blp, config_api.blp):
        api.register_blueprint(blueprint)
    app.add_url_rule("/healthz", "healthz", lambda: {"status": "ok"})
    init_ui(app)  # the HTMX UI at /ui/; `/` leads browsers there (API clients to /api/docs)
    fastpath.install(app, app.extensions["flagship"])  # the hot endpoints' ordinary requests
