"""Periodic in-process work."""
from __future__ import annotations

import threading

from flagship.background import Periodic
from tests.conftest import make_app


def test_periodic_runs_until_stopped_and_survives_failures():
    calls, done = [], threading.Event()

    def task():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        if len(calls) >= 3:
            done.set()

    ticker = Periodic("t", 0.001, task)
    ticker.start()
    assert done.wait(5)
    ticker.stop()
    count = len(calls)
    ticker.run_once()
    assert len(calls) == count + 1 and not ticker._thread.is_alive()


def test_server_app_starts_the_aggregator(database_url):
    app = make_app(database_url, SERVER=True, AUTH=False)
    ticker = app.extensions["flagship"].caches["aggregator"]
    try:
        assert ticker._thread.is_alive() and ticker.interval == 2
    finally:
        ticker.stop()
        app.extensions["flagship"].db.dispose()
    assert "aggregator" not in make_app(database_url, AUTH=False).extensions["flagship"].caches
