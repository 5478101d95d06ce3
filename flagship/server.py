"""`flagship serve`: gunicorn with one runtime and app per worker, and the periodic jobs
in a process of their own next to the workers (`flagship jobs`, see `flagship.jobs`)."""
from __future__ import annotations

import atexit
import functools
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any

from gunicorn.app.base import BaseApplication

log = logging.getLogger("flagship.serve")


class FlagshipServer(BaseApplication):
    """Gunicorn application whose workers each build their runtime and app after fork."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or _temporary_folder()
        self.jobs = JobsProcess(os.path.join(folder, "flagship-jobs.json"))
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("bind", f"{self.settings['HOST']}:{self.settings['PORT']}")
        self.cfg.set("workers", max(1, self.settings["WORKERS"]))
        self.cfg.set("threads", max(1, self.settings["THREADS"]))
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("keepalive", 5)
        self.cfg.set("accesslog", None)
        self.cfg.set("errorlog", "-")
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1
            # one default path ($HOME/.gunicorn/gunicorn.ctl) for every instance on the host:
            # a second server took it over, and gunicornc reached the wrong one
            self.cfg.set("control_socket_disable", True)
        self.cfg.set("child_exit", _child_exit)
        self.cfg.set("when_ready", lambda _arbiter: self.jobs.start())
        self.cfg.set("on_exit", lambda _arbiter: self.jobs.stop())

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
        # the periodic jobs run in the jobs process; /readyz reports them from its status file
        app.extensions["flagship.jobs"] = functools.partial(jobs.read_status, self.jobs.status_path)
        # Everything imported and built so far lives as long as the process: keep it out
        # of the cyclic GC's scans. A full collection walking it stalled all requests for
        # ~130 ms every few seconds under load.
        gc.collect()
        gc.freeze()
        return app


class JobsProcess:
    """`flagship jobs` next to the workers: started by gunicorn's master once it is ready,
    started again a second after it dies, stopped (SIGTERM) when the master exits; and it
    exits by itself when the master is gone. A fresh interpreter, not a fork of the master.

    Spawned with `posix_spawn`, not `subprocess`: Popen holds a pipe open until the child
    has exec'd, and a gunicorn worker forked in that moment inherited its write end, so
    Popen waited forever (seen in tests). And polled, not waited for: gunicorn's master
    reaps every child (waitpid(-1)), ours too.
    """

    RESTART_SECONDS = 1.0
    POLL_SECONDS = 0.5

    def __init__(self, status_path: str) -> None:
        self.status_path = status_path
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if os.path.exists(self.status_path):
            os.remove(self.status_path)  # an earlier run's: not this one's jobs
        self._stopping.clear()
        self._thread = threading.Thread(target=self._supervise, name="flagship-jobs-supervisor",
                                        daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        command = [sys.executable, "-m", "flagship.cli", "jobs", "--status-file", self.status_path,
                   "--parent", str(os.getpid())]
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                pid = self._pid = os.posix_spawn(sys.executable, command, os.environ)
            while (code := _exit_code(pid)) is None:
                if self._stopping.wait(self.POLL_SECONDS):
                    return
            _forget_metrics(pid)
            if self._stopping.is_set():
                return
            log.warning("flagship: the jobs process exited (%s); starting it again", code)
            if self._stopping.wait(self.RESTART_SECONDS):
                return

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the jobs process and wait for it (SIGKILL after `timeout`)."""
        with self._lock:
            self._stopping.set()
            pid = self._pid
        if pid is not None and _exit_code(pid) is None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _exit_code(pid) is None:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(0.05)
        if self._thread is not None:
            self._thread.join(timeout)


def _exit_code(pid: int) -> str | None:
    """How child `pid` ended, or None while it runs (reaping it if it ended)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "reaped by gunicorn"
    return None if done == 0 else f"exit code {os.waitstatus_to_exitcode(status)}"


def _temporary_folder() -> str:
    folder = tempfile.mkdtemp(prefix="flagship-")
    _remove_at_exit(folder)
    return folder


def _remove_at_exit(folder: str) -> None:
    """Remove `folder` when this process exits, not when a child forked from it does (a
    gunicorn worker leaves through sys.exit, which runs the atexit handlers it inherited:
    it removed the metrics folder and the jobs status under the master's feet)."""
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, True))


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _child_exit(_server: Any, worker: Any) -> None:
    """gunicorn hook: a dead worker's live gauges stop counting in /metrics."""
    _forget_metrics(worker.pid)


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
    _remove_at_exit(folder)
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
