"""The HTMX UI: a blueprint at `/ui/` whose views parse a form, call a service and render.

Every view renders a full page, or for an htmx request the page's fragment (the same
template the page includes), so each screen is a linkable URL and the back button works.
Modules by area: `session` (sign-in, CSRF), `base` (blueprint, environment, rendering),
`home`, `flags`, `targeting`, `schedule` (a flag's scheduled changes), `catalog` (segments,
environments, layers, metrics), `experiments`, `experiment_alerts` (an experiment's alert
rules), `analysis` (monitor, results), `rollouts` and `rollout_templates` (progressive
delivery), `alerts`, `webhooks`, `admin` (audit log, API keys); `forms` turns posted
fields into documents, `charts` draws the SVG.
"""
from __future__ import annotations

from typing import Any

from flask import Flask, redirect, request


def init_ui(app: Flask) -> None:
    """Attach htmx-flask, the UI session and the `/ui/` blueprint; `/` leads browsers to it."""
    from htmx_flask import Htmx

    from flagship.ui import (admin, alerts, analysis, catalog, experiment_alerts,  # noqa: F401 - routes
                             experiments, flags, home, rollout_templates, rollouts, schedule,
                             targeting, webhooks)
    from flagship.ui.base import bp, install_filters
    from flagship.ui.session import init_session

    Htmx(app)
    init_session(app)
    install_filters(app)
    app.register_blueprint(bp)
    app.add_url_rule("/", "index", _index)


def _index() -> Any:
    # browsers get the UI; API clients and tools asking for JSON keep getting the API docs
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return redirect("/ui/" if best == "text/html" else "/api/docs")
