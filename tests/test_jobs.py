"""Periodic work: started by `flagship jobs` (in a process of its own under `flagship serve`),
never by `create_app` or `make_runtime`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from flagship import jobs
from flagship.runtime import make_runtime
from tests.sdk_server import wait_for


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


# -- the jobs process ----------------------------------------------------------------------

def test_the_status_file_round_trip_and_what_readiness_makes_of_it(tmp_path):
    from flagship.health import check_jobs

    path = str(tmp_path / "jobs.json")
    assert jobs.read_status(path) is None  # not written yet: the process is starting
    assert check_jobs(jobs.read_status(path))["status"] == "not started"
    ticker = jobs.Periodic("flagship-aggregate", 2, lambda: None)
    ticker.start()
    try:
        ticker.run_once()
        jobs.write_status(path, [ticker])
    finally:
        ticker.stop()
    [seen] = jobs.read_status(path)
    assert (seen.name, seen.interval, seen.running, seen.last_run) == ("flagship-aggregate", 2, True, ticker.last_run)
    assert check_jobs([seen])["status"] == "ok"
    stale = jobs.read_status(path, now=time.monotonic() + jobs.STATUS_STALE_SECONDS + 1)
    assert stale[0].running is False  # not rewritten: the process is gone or hung
    assert check_jobs(stale)["jobs"]["flagship-aggregate"]["status"] == "stopped"
    (tmp_path / "jobs.json").write_text("{not json")
    assert check_jobs(jobs.read_status(path))["status"] == "degraded"


def test_flagship_jobs_runs_the_jobs_until_sigterm(tmp_path):
    from flagship.db import upgrade

    url = f"sqlite:///{tmp_path / 'f.db'}"
    upgrade(url)
    status = tmp_path / "jobs.json"
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": url, "FLAGSHIP_AGGREGATE_INTERVAL": "1"}
    process = subprocess.Popen([sys.executable, "-m", "flagship.cli", "jobs", "--status-file", str(status)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ran = wait_for(lambda: [j for j in jobs.read_status(str(status)) or []
                                if j.name == "flagship-aggregate" and j.last_run], 30)
        assert ran, "the aggregation job never ran"
        assert ran[0].running and ran[0].last_error is None
        names = {j.name for j in jobs.read_status(str(status))}
        assert names == {"flagship-rounds", "flagship-aggregate", "flagship-checkpoint"}
    finally:
        process.send_signal(signal.SIGTERM)
        out = process.communicate(timeout=30)[0]
    assert process.returncode == 0, out
    assert not any(j.running for j in jobs.read_status(str(status)))  # it said it stopped


@pytest.mark.xdist_group("serve")
def test_serve_runs_the_jobs_in_a_process_of_its_own_and_restarts_it(tmp_path):
    """The periodic jobs run in a child of the master next to the two workers; it comes back
    when killed, reports to the workers' /readyz, and goes with the master."""
    from tests.test_observability import _free_port, _request

    port, metrics = _free_port(), tmp_path / "metrics"
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": f"sqlite:///{tmp_path / 'f.db'}",
           "FLAGSHIP_PORT": str(port), "FLAGSHIP_WORKERS": "2", "FLAGSHIP_AUTH": "false",
           "FLAGSHIP_PLUGINS": "", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    server = subprocess.Popen([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    status = str(metrics / "flagship-jobs.json")

    def ready_jobs():
        try:
            code, body = _request(port, "GET", "/readyz")
        except OSError:
            return None
        report = json.loads(body)["checks"]["jobs"]
        return report if code == 200 and report["status"] == "ok" else None
    try:
        report = wait_for(ready_jobs, 60, interval=0.05)
        assert report, "/readyz never reported the jobs ok"
        assert set(report["jobs"]) == {"flagship-rounds", "flagship-aggregate", "flagship-checkpoint"}
        first = json.loads(open(status).read())["pid"]
        children = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(server.pid)],
                                  capture_output=True, text=True).stdout.splitlines()
        jobs_line = [line for line in children if line.split()[0] == str(first)]
        assert jobs_line and "flagship.cli jobs" in jobs_line[0], children  # the master's child
        assert len(children) == 3  # and two workers
        os.kill(first, signal.SIGKILL)

        def restarted():
            try:
                pid = json.loads(open(status).read())["pid"]
            except (OSError, ValueError):  # not written yet by the new process
                return None
            return pid if pid != first else None
        second = wait_for(restarted, 30, interval=0.05)
        assert second, "the jobs process was not started again"
        assert wait_for(ready_jobs, 30, interval=0.05)
    finally:
        server.terminate()
        server.wait(30)
    assert wait_for(lambda: not _alive(second), 10)  # the jobs process went with the master


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_forked_child_leaving_does_not_remove_the_servers_folders(tmp_path):
    # gunicorn workers leave through sys.exit, which runs the atexit handlers they inherited
    folder = tmp_path / "owned"
    folder.mkdir()
    code = f"""
import os, sys
from flagship.server import _remove_at_exit
_remove_at_exit({str(folder)!r})
pid = os.fork()
if pid == 0:
    sys.exit(0)
os.waitpid(pid, 0)
assert os.path.isdir({str(folder)!r}), "removed by the child"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not folder.exists()  # by its owner, at its exit
