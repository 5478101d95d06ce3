"""Production serving: gunicorn with the app built per worker process."""
from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


class FlagshipServer(BaseApplication):
    """Gunicorn application whose workers each call `create_app()` after fork."""

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
        import gc
        import sys

        from flagship.app import create_app

        # Hand the GIL over more often than every 5 ms: a request thread waiting for the
        # group-commit writer (or a lock) otherwise waits a whole interval per handoff.
        sys.setswitchinterval(0.001)
        app = create_app({"HOST": self.settings["HOST"], "PORT": self.settings["PORT"],
                          "SERVER": True})
        # Everything imported and built so far lives as long as the process: keep it out
        # of the cyclic GC's scans. A full collection walking it stalled all requests for
        # ~130 ms every few seconds under load.
        gc.collect()
        gc.freeze()
        return app


def run_gunicorn(settings: dict[str, Any]) -> None:
    FlagshipServer(settings).run()

