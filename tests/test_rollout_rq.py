"""The periodic round on RQ with a real Redis: one job per slot, a real `flagship worker`,
and the whole loop through the HTTP API with a one-second interval."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from rq import Queue

from flagship import jobs
from flagship.rollout.store import RolloutEvaluationRecord
from tests.sdk_server import free_port

ADMIN = "fsk_admin_rollout_tests_000000000000000000"


def test_one_job_per_slot_and_a_worker_runs_it(runtime, redis_client, redis_url, api):
    runtime.config["REDIS_URL"] = redis_url
    queue = Queue(jobs.QUEUE, connection=redis_client)
    assert jobs.enqueue_round(queue, 1000, 60) is True
    assert [jobs.enqueue_round(queue, 1000, 60) for _ in range(3)] == [False, False, False]
    assert jobs.enqueue_round(queue, 1001, 60) is True
    assert queue.count == 2
    jobs.run_worker(runtime, burst=True, simple=True)
    assert queue.count == 0
    finished = queue.finished_job_registry.get_job_ids()
    assert sorted(finished) == ["rollout-eval-1000", "rollout-eval-1001"]
    assert queue.fetch_job("rollout-eval-1000").return_value()["slot"] == 1000


def _call(port, method, path, body=None, key=ADMIN):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, (json.loads(data) if data else None)


def _start(args, env):
    return subprocess.Popen([sys.executable, "-m", "flagship.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class _Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint: keeps (headers, body) of every POST."""

    got: list = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.xdist_group("serve")
def test_two_real_workers_roll_back_a_regression_within_an_interval(tmp_path: Path, redis_url):
    db = tmp_path / "flagship.db"
    port = free_port()
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": f"sqlite:///{db}", "FLAGSHIP_PORT": str(port),
           "FLAGSHIP_ADMIN_KEY": ADMIN, "FLAGSHIP_WORKERS": "1", "FLAGSHIP_REDIS_URL": redis_url,
           "FLAGSHIP_JOBS": "rq", "FLAGSHIP_ROLLOUT_INTERVAL": "1", "FLAGSHIP_AGGREGATE_INTERVAL": "1"}
    server = _start(["serve"], env)
    workers = []
    _Receiver.got = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        _wait(lambda: _ping(port), 30, "the server")
        workers = [_start(["worker"], env), _start(["worker"], env)]
        status, created = _call(port, "POST", "/api/v1/keys", {"name": "sdk", "scope": "sdk"})
        sdk = created["key"]
        assert _call(port, "POST", "/api/v1/flags", {
            "key": "checkout", "type": "boolean", "variants": {"on": True, "off": False},
            "default_variant": "off",
            "rules": [{"id": "ramp", "kind": "rollout", "variant": "on", "percentage": 0}]})[0] == 201
        assert _call(port, "POST", "/api/v1/metrics", {"key": "errors", "event": "error",
                                                       "kind": "conversion", "direction": "decrease"})[0] == 201
        policy = {"evaluation_interval": 1, "min_consecutive_ok": 1,
                  "steps": [{"percent": 10, "min_duration": 1, "min_units": 20},
                            {"percent": 50, "min_duration": 3600, "min_units": 20}],
                  "checks": [{"id": "errors", "type": "metric_regression", "metric": "errors",
                              "min_units": 20, "on_fail": "rollback"}]}
        status, rollout = _call(port, "POST", "/api/v1/rollouts", {"flag": "checkout", "rule_id": "ramp",
                                                                  "policy": policy})
        assert status == 201, rollout
        rid = rollout["id"]
        status, hook = _call(port, "POST", "/api/v1/webhooks", {
            "name": "ops", "url": f"http://127.0.0.1:{receiver.server_port}/hook",
            "event_types": ["rollout.*", "alert.*"]})
        assert status == 201, hook
        _call(port, "POST", f"/api/v1/rollouts/{rid}/start", {})
        _send(port, sdk, 0, 600, {"treatment": 0.02, "control": 0.02})
        _wait(lambda: _call(port, "GET", f"/api/v1/rollouts/{rid}")[1]["percentage"] == 50, 20, "the advance")
        os.killpg(workers[0].pid, signal.SIGKILL)  # one worker dies: the other carries on
        sent = time.monotonic()
        _send(port, sdk, 1000, 2000, {"treatment": 0.7, "control": 0.02})
        _wait(lambda: _call(port, "GET", f"/api/v1/rollouts/{rid}")[1]["status"] == "rolled_back", 20,
              "the rollback")
        ramp = _wait(lambda: _snapshot_rule(port, sdk), 5, "the snapshot")
        assert ramp["percentage"] == 0
        assert time.monotonic() - sent < 10  # data in -> rollback visible, with aggregation and slots
        delivered = _wait(lambda: [json.loads(b) for h, b in _Receiver.got
                                   if json.loads(b)["type"] == "rollout.rolled_back"], 15, "the webhook")
        headers, body = next((h, b) for h, b in _Receiver.got if json.loads(b)["type"] == "rollout.rolled_back")
        signature = hmac.new(hook["secret"].encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Flagship-Signature"] == f"sha256={signature}"
        assert delivered[0]["rollout"]["id"] == rid and delivered[0]["transition"]["to_status"] == "rolled_back"
        status, deliveries = _call(port, "GET", f"/api/v1/webhooks/{hook['id']}/deliveries")
        assert status == 200 and deliveries
    finally:
        for proc in [server, *workers]:
            _stop(proc)
        receiver.shutdown()
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        per_slot = conn.execute(sa.select(RolloutEvaluationRecord.slot, sa.func.count())
                                .group_by(RolloutEvaluationRecord.slot, RolloutEvaluationRecord.attempt)).all()
    engine.dispose()
    assert per_slot and all(n == 1 for _, n in per_slot)  # every slot evaluated once


def _ping(port):
    try:
        return _call(port, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def _snapshot_rule(port, sdk):
    status, body = _call(port, "GET", "/api/v1/sdk/snapshot", key=sdk)
    rule = next(r for r in body["flags"][0]["rules"] if r["id"] == "ramp")
    return rule if rule["percentage"] == 0 else None


def _send(port, sdk, start, count, rates):
    """An SDK's traffic: the flag evaluated locally, exposures and errors sent in batches."""
    from flagship import Snapshot

    status, doc = _call(port, "GET", "/api/v1/sdk/snapshot", key=sdk)
    snapshot = Snapshot.from_dict(doc)
    items = []
    for i in range(start, start + count):
        unit = f"u{i}"
        result = snapshot.evaluate("checkout", {"key": unit})
        if result.arm is None:
            continue
        items.append({"event_id": f"x-{unit}-{result.experiment}", "unit": unit, "event": "$exposure",
                      "experiment": result.experiment, "variant": result.arm})
        if (i * 7919 % 1000) / 1000 < rates[result.arm]:
            items.append({"event_id": f"e-{unit}", "unit": unit, "event": "error"})
    status, body = _call(port, "POST", "/api/v1/experiments/events/batch", items, key=sdk)
    assert status == 200 and not body["rejected"], body
