"""Readiness: can this process serve, and what is degraded (what `GET /readyz` reports).

The database (reachable, schema at the migrations' head) decides readiness: without it
nothing can be served. Redis (when configured) and the periodic jobs only degrade the
service: sticky assignments fall back to SQL, aggregates go stale. So the answer is
`ready`, `degraded` (still 200: keep sending traffic) or `unavailable` (503).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Iterable, Protocol

import sqlalchemy as sa

from flagship.db import MIGRATIONS_DIR
from flagship.runtime import Runtime

JOB_GRACE_SECONDS = 30.0  # a job may be this late (beyond 3 intervals) before it counts as stuck


class Job(Protocol):
    name: str
    interval: float
    started_at: float | None
    last_run: float | None
    last_error: str | None

    @property
    def running(self) -> bool: ...


@functools.lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The head revision(s) of the migrations shipped with this code."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return frozenset(ScriptDirectory.from_config(config).get_heads())


def _error(error: Exception) -> str:
    # /readyz is unauthenticated: name the failure, not hosts or users (those go to the log)
    return type(error).__name__


def check_database(runtime: Runtime) -> tuple[dict[str, Any], dict[str, Any]]:
    """(database, migrations) checks: a round trip, then the schema's revision."""
    started = time.perf_counter()
    try:
        with runtime.db.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            elapsed = round((time.perf_counter() - started) * 1000, 1)
            try:
                current = frozenset(row[0] for row in conn.execute(
                    sa.text("SELECT version_num FROM alembic_version")))
            except sa.exc.SQLAlchemyError as error:
                return ({"status": "ok", "latency_ms": elapsed},
                        {"status": "unknown", "error": _error(error)})
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        return {"status": "down", "error": _error(error)}, {"status": "unknown"}
    heads = migration_heads()
    migrations = {"status": "ok" if current == heads else "behind",
                  "current": sorted(current), "head": sorted(heads)}
    return {"status": "ok", "latency_ms": elapsed}, migrations


def check_redis(runtime: Runtime) -> dict[str, Any]:
    """Redis, when FLAGSHIP_REDIS_URL is set (its store falls back to SQL when down)."""
    if not runtime.config.get("REDIS_URL"):
        return {"status": "not configured"}
    check = getattr(runtime.assignments, "check", None)
    return check() if check is not None else {"status": "unknown"}


def check_jobs(jobs: Iterable[Job] | None, now: float | None = None) -> dict[str, Any]:
    """Each periodic job: running, and ticking on schedule."""
    if jobs is None:
        return {"status": "not started", "detail": "this process runs no periodic jobs"}
    now = time.monotonic() if now is None else now
    report: dict[str, Any] = {}
    for job in jobs:
        since = job.last_run if job.last_run is not None else job.started_at
        late = since is None or now - since > 3 * job.interval + JOB_GRACE_SECONDS
        status = "stopped" if not job.running else ("stuck" if late else "ok")
        entry: dict[str, Any] = {"status": status, "interval_s": job.interval}
        if job.last_run is not None:
            entry["last_run_s_ago"] = round(now - job.last_run, 1)
        if job.last_error:
            entry["last_error"] = job.last_error
        report[job.name] = entry
    ok = all(entry["status"] == "ok" for entry in report.values())
    return {"status": "ok" if ok else "degraded", "jobs": report}


def readiness(runtime: Runtime, jobs: Iterable[Job] | None = None) -> tuple[bool, dict[str, Any]]:
    """(ready to serve?, the report). Only the database and its schema decide readiness."""
    database, migrations = check_database(runtime)
    checks = {"database": database, "migrations": migrations, "redis": check_redis(runtime),
              "jobs": check_jobs(jobs)}
    ready = database["status"] == "ok" and migrations["status"] == "ok"
    degraded = checks["redis"]["status"] == "down" or checks["jobs"]["status"] == "degraded"
    status = "unavailable" if not ready else ("degraded" if degraded else "ready")
    return ready, {"status": status, "checks": checks}
