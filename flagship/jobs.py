"""Periodic work: aggregation and WAL checkpoints, started by `flagship serve` (and later
`flagship worker`), never by `create_app` or `make_runtime`.

On the embedded default the jobs run on daemon threads inside each server process; a
failing run is logged and the next one happens on schedule.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from flagship.runtime import Runtime

log = logging.getLogger(__name__)
SCHEDULE_INTERVAL = 10.0  # seconds between checks for experiments past their end_at


class Periodic:
    """Runs `task` every `interval` seconds on a daemon thread until stopped.

    A failing run is logged and the next one happens on schedule: background upkeep must
    never take the server down.
    """

    def __init__(self, name: str, interval: float, task: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.task = task
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None   # monotonic; readiness reads these
        self.last_run: float | None = None
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if not self.running:
            self._stop.clear()
            self.started_at = time.monotonic()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> None:
        try:
            self.task()
        except Exception as error:  # noqa: BLE001 - logged; the next tick retries
            self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" \
                if str(error) else type(error).__name__
            log.exception("background task %s failed", self.name)
        else:
            self.last_error = None
        finally:
            self.last_run = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()


def aggregate(runtime: Runtime) -> int:
    """Fold pending events and exposures into the per-unit aggregates (one job run)."""
    from flagship import telemetry
    from flagship.experiments.store.aggregates import catch_up
    from flagship.experiments.store.reads import oldest_pending_event

    done = catch_up(runtime.db, late_after=float(runtime.config["EVENT_LATE_SECONDS"]))
    telemetry.AGGREGATED_ROWS.inc(done)
    with runtime.db.engine.connect() as conn:
        oldest = oldest_pending_event(conn)
    now = runtime.clock()
    telemetry.AGGREGATION_LAG.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    telemetry.AGGREGATION_LAST_SUCCESS.set(now.timestamp())
    return done


def checkpoint(runtime: Runtime) -> None:
    """Copy the SQLite write-ahead log into the database file (one job run)."""
    runtime.db.checkpoint()


def complete_ended(runtime: Runtime) -> list[str]:
    """Complete the experiments whose end_at has passed (their buckets return to the layer)."""
    from flagship.experiments.service import complete_ended as complete

    return complete(runtime, runtime.clock())


def server_jobs(runtime: Runtime) -> list[Periodic]:
    """The periodic jobs a serving process runs in-process on the embedded default."""
    jobs = [Periodic("flagship-schedule", SCHEDULE_INTERVAL, lambda: complete_ended(runtime))]
    if runtime.config["AGGREGATE_INTERVAL"] > 0:
        # keeps per-unit aggregates fresh between monitor/results calls (which also catch up)
        jobs.append(Periodic("flagship-aggregate", runtime.config["AGGREGATE_INTERVAL"],
                             lambda: aggregate(runtime)))
    if runtime.db.is_sqlite:
        jobs.append(Periodic("flagship-checkpoint", 1.0, lambda: checkpoint(runtime)))
    return jobs


def start(jobs: list[Periodic]) -> list[Periodic]:
    """Start `jobs` (in the process that will run them: threads do not survive a fork)."""
    for job in jobs:
        job.start()
    return jobs
