"""Periodic work, started by `flagship jobs` (which `flagship serve` runs in a process of
its own) or `flagship worker`, never by `create_app` or `make_runtime`: aggregation, WAL
checkpoints, and the periodic round (rollout evaluation, ended experiments, scheduled
changes, alerts, notifications) either on RQ workers or, on the embedded default, on a
ticker thread guarded by a lease row. A failing run is logged and the next one happens
on schedule.

Why a process of its own, not threads in each gunicorn worker: an aggregation round is
tens of milliseconds of Python, and in a worker it took the GIL from the request
threads; first assignments at 500 requests/s had a p99 of 22 ms with the rounds in the
workers and 5 ms without them. The jobs process reports to the workers' `/readyz`
through a status file (`write_status` / `read_status`).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable

import sqlalchemy as sa

from flagship.db import insert_new
from flagship.runtime import Runtime

log = logging.getLogger(__name__)


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
    jobs = [round_ticker(runtime)] if jobs_mode(runtime) == "thread" else []
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


# -- the jobs process: `flagship jobs` ------------------------------------------------------------

STATUS_SECONDS = 1.0  # how often the jobs process rewrites its status file
STATUS_STALE_SECONDS = 10.0  # a status file older than this: the process is gone or hung


def run_jobs(runtime: Runtime, status_path: str | None = None, parent: int | None = None) -> None:
    """`flagship jobs`: run `server_jobs` until SIGTERM or SIGINT (or until `parent`, the
    gunicorn master that started it, is gone), writing their status to `status_path`
    every `STATUS_SECONDS` for the workers' readiness checks."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    jobs = start(server_jobs(runtime))

    def report() -> None:
        if status_path:
            try:
                write_status(status_path, jobs)
            except OSError as error:  # the jobs go on; readiness will call them stale
                log.warning("flagship: writing the jobs status to %s failed: %s", status_path, error)
    try:
        while True:
            report()
            if stop.wait(STATUS_SECONDS) or (parent is not None and os.getppid() != parent):
                break
    finally:
        for job in jobs:
            job.stop()
        report()  # stopped: readiness says so at once
        runtime.db.dispose()


def write_status(path: str, jobs: list[Periodic]) -> None:
    """The jobs' state for `read_status` in another process (monotonic times are the
    machine's, so they compare across processes); replaced atomically."""
    doc = {"pid": os.getpid(), "written": time.monotonic(),
           "jobs": [{"name": job.name, "interval": job.interval, "running": job.running,
                     "started_at": job.started_at, "last_run": job.last_run,
                     "last_error": job.last_error} for job in jobs]}
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        json.dump(doc, out)
    os.replace(temporary, path)


class JobStatus:
    """One job of the jobs process, as its status file says (a `health.Job`)."""

    def __init__(self, entry: dict[str, Any], alive: bool) -> None:
        self.name: str = entry["name"]
        self.interval: float = entry["interval"]
        self.started_at: float | None = entry["started_at"]
        self.last_run: float | None = entry["last_run"]
        self.last_error: str | None = entry["last_error"]
        self.running = alive and bool(entry["running"])


def read_status(path: str, now: float | None = None) -> list[JobStatus] | None:
    """The jobs process's jobs (None before it first wrote: it is starting). When the file
    was not rewritten for `STATUS_STALE_SECONDS`, every job reads as stopped."""
    try:
        with open(path, encoding="utf-8") as source:
            doc = json.load(source)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable: say the jobs are not known to run
        return [JobStatus({"name": "flagship-jobs", "interval": STATUS_SECONDS, "running": False,
                           "started_at": None, "last_run": None,
                           "last_error": "the jobs status file cannot be read"}, False)]
    now = time.monotonic() if now is None else now
    alive = now - doc["written"] <= STATUS_STALE_SECONDS
    return [JobStatus(entry, alive) for entry in doc["jobs"]]


# -- the periodic round: rollouts, scheduled changes, alerts, notifications --------------------

ROUND_LEASE = "periodic-round"


def jobs_mode(runtime: Runtime) -> str:
    """rq, thread or off: where the periodic round runs (FLAGSHIP_JOBS, auto by Redis)."""
    mode = runtime.config["JOBS"]
    if mode == "auto":
        return "rq" if runtime.config["REDIS_URL"] else "thread"
    return mode


def slot_of(runtime: Runtime, now: datetime | None = None) -> int:
    """The evaluation slot of `now`: floor(epoch / FLAGSHIP_ROLLOUT_INTERVAL)."""
    now = now or runtime.clock()
    return int(now.timestamp() // runtime.config["ROLLOUT_INTERVAL"])


def periodic_round(runtime: Runtime, slot: int | None = None) -> dict[str, Any]:
    """One round, the same in every mode: fold in pending data, evaluate every active rollout
    for the slot, complete ended experiments, apply due scheduled changes, evaluate alert
    rules, deliver notifications. Each part failing is logged; the others still run."""
    from flagship.rollout.evaluation import evaluate_all

    from flagship import telemetry

    started = time.monotonic()
    slot = slot_of(runtime) if slot is None else slot
    report: dict[str, Any] = {"slot": slot}
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("aggregated", lambda: aggregate(runtime)),
        ("rollouts", lambda: evaluate_all(runtime, slot)),
        ("experiments_completed", lambda: complete_ended(runtime)),
        *_scheduled_parts(runtime),
    ]
    for name, part in parts:
        try:
            report[name] = part()
        except Exception:  # noqa: BLE001 - one part must never stop the round
            log.exception("periodic round %s: %s failed", slot, name)
            report[name] = "error"
    telemetry.count_round(report, time.monotonic() - started)
    return report


def _scheduled_parts(runtime: Runtime) -> list[tuple[str, Callable[[], Any]]]:
    """Scheduled flag changes, alerts and notification delivery."""
    from flagship.flags.schedule import apply_due
    from flagship.rollout.alerting import evaluate_alerts
    from flagship.rollout.notifications import dispatch

    now = runtime.clock
    return [("scheduled_changes", lambda: apply_due(runtime, now())),
            ("alerts", lambda: evaluate_alerts(runtime, now())),
            ("notifications", lambda: dispatch(runtime, now()))]


def take_lease(runtime: Runtime, name: str, holder: str, seconds: float) -> bool:
    """Hold the job lease `name` for `seconds` unless another live holder has it (embedded
    mode: several `flagship serve` processes, one runs the round)."""
    from flagship.rollout.store import JobLeaseRecord

    now = runtime.clock()
    table = JobLeaseRecord.__table__
    with runtime.db.write_connection() as conn:
        taken = conn.execute(sa.update(table).where(
            table.c.name == name, sa.or_(table.c.expires_at < now, table.c.holder == holder))
            .values(holder=holder, expires_at=now + timedelta(seconds=seconds))).rowcount
        if taken:
            return True
        return bool(insert_new(conn, table, [{"name": name, "holder": holder,
                                              "expires_at": now + timedelta(seconds=seconds)}], ("name",)))


def round_ticker(runtime: Runtime) -> Periodic:
    """The embedded ticker: every interval / 4 it takes the lease and runs the current slot
    (a slot already evaluated is skipped, so ticking often never double-acts)."""
    interval = float(runtime.config["ROLLOUT_INTERVAL"])
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def tick() -> None:
        if take_lease(runtime, ROUND_LEASE, holder, 2 * interval):
            periodic_round(runtime)
    return Periodic("flagship-rounds", max(interval / 4, 0.25), tick)


# -- RQ (FLAGSHIP_REDIS_URL set): `flagship worker` --------------------------------------------

QUEUE = "flagship"
_worker_runtime: Runtime | None = None


def rq_round(slot: int) -> dict[str, Any]:
    """The RQ job: one periodic round for `slot` (jobs are stored by import path: keep it)."""
    global _worker_runtime
    if _worker_runtime is None:
        from flagship.runtime import make_runtime

        _worker_runtime = make_runtime()
    return periodic_round(_worker_runtime, slot)


def enqueue_round(queue: Any, slot: int, interval: float) -> bool:
    """Enqueue the round of `slot` once: a unique job id per slot, so several tickers (one
    per worker) produce one job; False when it was already queued (the normal case)."""
    from rq.exceptions import DuplicateJobError

    try:
        queue.enqueue("flagship.jobs.rq_round", slot, job_id=f"rollout-eval-{slot}", unique=True,
                      job_timeout=int(min(2 * interval, 300) + 30), result_ttl=int(10 * interval),
                      failure_ttl=7 * 86400, description="flagship periodic round")
    except DuplicateJobError:
        return False
    return True


def rq_ticker(runtime: Runtime, queue: Any) -> Periodic:
    """A ticker thread in the worker's parent process: enqueues each slot's round."""
    interval = float(runtime.config["ROLLOUT_INTERVAL"])
    return Periodic("flagship-rq-ticker", max(interval / 4, 0.25),
                    lambda: enqueue_round(queue, slot_of(runtime), interval))


def run_worker(runtime: Runtime, burst: bool = False, simple: bool = False) -> None:
    """`flagship worker`: an RQ worker (with the scheduler, for delayed retries) on the
    `flagship` queue plus the ticker; work-horses drop the inherited database pool."""
    import redis
    from rq import Queue, SimpleWorker, Worker

    global _worker_runtime
    _worker_runtime = runtime
    connection = redis.Redis.from_url(runtime.config["REDIS_URL"])
    queue = Queue(QUEUE, connection=connection)
    # a forked work-horse must not share the parent's database connections
    os.register_at_fork(after_in_child=lambda: runtime.db.engine.dispose(close=False))
    ticker = rq_ticker(runtime, queue)
    if not burst:
        ticker.start()
    worker_class = SimpleWorker if simple else Worker
    try:
        worker_class([queue], connection=connection).work(burst=burst, with_scheduler=True)
    finally:
        ticker.stop()
