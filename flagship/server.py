"""`flagship serve`: gunicorn with one runtime, app and set of in-process jobs per worker."""
from __future__ import annotations

import atexit
import gc
import os
import shutil
import sys
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication


class FlagshipServer(BaseApplication):
    """Gunicorn application whose workers each build their runtime and app after fork."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("bind", f"{self.settings['HOST']}:{self.settings['PORT']}")
        self.cfg.set("workers", max(1, self.settings["WORKERS"]))
        self.cfg.set("threads", max(1, self.settings["THREADS"]))
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("keepalive", 5)
        self.cfg.set("accesslog", None)
        self.cfg.set("errorlog", "-")
        self.cfg.set("child_exit", _child_exit)

    def load(self) -> Any:
        from flagship import jobs
        from flagship.app import create_app
        from flagship.observability import configure_logging, init_tracing
        from flagship.runtime import make_runtime

        # Hand the GIL over more often than every 5 ms: a request thread waiting for the
        # group-commit writer (or a lock) otherwise waits a whole interval per handoff.
        sys.setswitchinterval(0.001)
        runtime = make_runtime({"HOST": self.settings["HOST"], "PORT": self.settings["PORT"]},
                               server=True)
        app = create_app(runtime=runtime)
        configure_logging(runtime.config["LOG_FORMAT"])
        init_tracing(app, runtime)  # only when OTEL_EXPORTER_OTLP_ENDPOINT is set
        app.wsgi_app = _terminated_chunked_bodies(app.wsgi_app)  # type: ignore[method-assign]
        app.extensions["flagship.jobs"] = jobs.start(jobs.server_jobs(runtime))
        # Everything imported and built so far lives as long as the process: keep it out
        # of the cyclic GC's scans. A full collection walking it stalled all requests for
        # ~130 ms every few seconds under load.
        gc.collect()
        gc.freeze()
        return app


def _child_exit(_server: Any, worker: Any) -> None:
    """gunicorn hook: a dead worker's live gauges stop counting in /metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def prepare_metrics_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR for the workers to share: the one given (emptied of an
    earlier run's files), else a new temporary folder removed at exit. Must run before
    anything imports prometheus_client (it picks its mode on import)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        return given
    folder = tempfile.mkdtemp(prefix="flagship-metrics-")
    atexit.register(shutil.rmtree, folder, True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


def _terminated_chunked_bodies(wsgi_app: Any) -> Any:
    """gunicorn de-chunks a chunked body and ends the stream where it ends, but does not
    say so; without `wsgi.input_terminated` Werkzeug reads such a body as empty (a 400
    instead of the 413 FLAGSHIP_MAX_BODY_BYTES promises)."""
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input_terminated"] = True
        return wsgi_app(environ, start_response)
    return app


def run_gunicorn(settings: dict[str, Any]) -> None:
    FlagshipServer(settings).run()
