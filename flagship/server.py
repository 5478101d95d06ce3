"""`flagship serve`: gunicorn with one runtime, app and set of in-process jobs per worker."""
from __future__ import annotations

import gc
import sys
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

    def load(self) -> Any:
        from flagship import jobs
        from flagship.app import create_app
        from flagship.runtime import make_runtime

        # Hand the GIL over more often than every 5 ms: a request thread waiting for the
        # group-commit writer (or a lock) otherwise waits a whole interval per handoff.
        sys.setswitchinterval(0.001)
        runtime = make_runtime({"HOST": self.settings["HOST"], "PORT": self.settings["PORT"]},
                               server=True)
        app = create_app(runtime=runtime)
        app.extensions["flagship.jobs"] = jobs.start(jobs.server_jobs(runtime))
        # Everything imported and built so far lives as long as the process: keep it out
        # of the cyclic GC's scans. A full collection walking it stalled all requests for
        # ~130 ms every few seconds under load.
        gc.collect()
        gc.freeze()
        return app


def run_gunicorn(settings: dict[str, Any]) -> None:
    FlagshipServer(settings).run()
