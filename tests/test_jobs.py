"""Periodic work: started by `flagship serve`, never by `create_app` or `make_runtime`."""
from __future__ import annotations

import threading

from flagship import jobs
from flagship.runtime import make_runtime


def test_periodic_runs_until_stopped_and_survives_failures():
    calls, done = [], threading.Event()

    def task():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        if len(calls) >= 3:
            done.set()

    ticker = jobs.Periodic("t", 0.001, task)
    ticker.start()
    assert done.wait(5)
    ticker.stop()
    count = len(calls)
    ticker.run_once()
    assert len(calls) == count + 1 and not ticker.running


def test_building_a_runtime_or_an_app_starts_no_thread(database_url):
    from flagship.app import create_app

    before = {t.name for t in threading.enumerate()}
    runtime = make_runtime({"DATABASE_URL": database_url, "ENTRY_POINTS": False})
    create_app(runtime=runtime)
    assert {t.name for t in threading.enumerate()} - before == set()
    runtime.close()


def test_server_jobs_aggregate_and_checkpoint_on_sqlite(database_url):
    runtime = make_runtime({"DATABASE_URL": database_url, "ENTRY_POINTS": False}, server=True)
    names = {job.name: job for job in jobs.server_jobs(runtime)}
    assert names["flagship-aggregate"].interval == 2
    assert ("flagship-checkpoint" in names) == runtime.db.is_sqlite
    started = jobs.start(list(names.values()))
    try:
        assert all(job.running for job in started)
    finally:
        for job in started:
            job.stop()
        runtime.close()
    off = make_runtime({"DATABASE_URL": database_url, "ENTRY_POINTS": False, "AGGREGATE_INTERVAL": 0})
    assert "flagship-aggregate" not in {job.name for job in jobs.server_jobs(off)}
    off.close()
