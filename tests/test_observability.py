"""`/metrics`, `/readyz`, request logs and tracing; a real `flagship serve --workers 2`."""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import boolean_flag, make_app


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_need_an_admin_key_and_count_requests_evaluations_and_events(api, client, admin, sdk):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=sdk).status_code == 403
    api("post", "/flags", boolean_flag("f"), 201)
    before = client.get("/metrics", headers=admin).get_data(as_text=True)
    for i in range(3):
        api("post", "/evaluate", {"context": {"key": f"u{i}"}})
    api("post", "/experiments/events/batch", [{"unit": "u", "event": "e", "event_id": "x"},
                                             {"unit": "u", "event": "e", "event_id": "x"},
                                             {"unit": "", "event": "e"}])
    response = client.get("/metrics", headers=admin)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)

    def delta(name: str, **labels: str) -> float:
        return _sample(text, name, **labels) - _sample(before, name, **labels)

    assert delta("flagship_http_requests_total", route="/api/v1/evaluate", method="POST", status="200") == 3
    assert delta("flagship_evaluations_total", flag="f", reason="DEFAULT") == 3
    assert delta("flagship_http_request_duration_seconds_count", route="/api/v1/evaluate") == 3
    assert delta("flagship_events_total", outcome="accepted") == 1
    assert delta("flagship_events_total", outcome="duplicate") == 1
    assert delta("flagship_events_total", outcome="rejected") == 1
    assert delta("flagship_writer_batch_size_count") >= 1
    assert _sample(text, "flagship_snapshot_revision") >= 1



def test_the_periodic_round_counts_rollouts_schedules_alerts_and_notifications(api, client, admin, runtime):
    import types
    from datetime import timedelta

    from flagship import jobs
    from flagship.hookspecs import hookimpl

    broken = types.ModuleType("pager")
    broken.notify = hookimpl(lambda event: (_ for _ in ()).throw(ConnectionError("pager is down")))
    runtime.plugins.register(broken, name="pager")
    api("post", "/flags", boolean_flag("ramped", rules=[{"id": "ramp", "kind": "rollout", "variant": "on",
                                                         "percentage": 0}]), 201)
    rollout = api("post", "/rollouts", {"flag": "ramped", "rule_id": "ramp", "policy": {
        "steps": [{"percent": 10, "min_duration": "1h", "min_units": 100}], "evaluation_interval": "1m"}}, 201)
    api("post", f"/rollouts/{rollout['id']}/start")
    api("post", "/flags", boolean_flag("later", enabled=False), 201)
    now = runtime.clock()
    api("post", "/flags/later/schedule", {"at": (now + timedelta(minutes=5)).isoformat(),
                                          "change": {"action": "enable"}}, 201)
    before = client.get("/metrics", headers=admin).get_data(as_text=True)
    runtime.clock = lambda: now + timedelta(minutes=10)
    report = jobs.periodic_round(runtime)
    text = client.get("/metrics", headers=admin).get_data(as_text=True)

    def delta(name: str, **labels: str) -> float:
        return _sample(text, name, **labels) - _sample(before, name, **labels)

    assert delta("flagship_round_duration_seconds_count") == 1
    assert report["rollouts"] == {"hold": 1}  # 10 minutes into a step that must run an hour
    assert delta("flagship_rollout_evaluations_total", outcome="hold") == 1
    assert delta("flagship_scheduled_changes_total", outcome="applied") == 1
    assert report["notifications"]["failed"] >= 1  # every event so far failed the pager
    assert delta("flagship_notifications_total", outcome="failed") == report["notifications"]["failed"]
    assert delta("flagship_notifier_failures_total", notifier="pager") >= report["notifications"]["failed"]
    assert "error" not in report.values()  # so no part failure was counted either

def test_a_metrics_token_replaces_the_admin_key(database_url):
    app = make_app(database_url, METRICS_TOKEN="scrape-secret")
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200
    finally:
        app.extensions["flagship"].db.dispose()


def test_flag_labels_are_capped():
    from flagship.telemetry import FlagLabels

    labels = FlagLabels(limit=2)
    assert [labels(k) for k in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]


FORKED_METRICS = """
import os, sys
from prometheus_client import CollectorRegistry, multiprocess
from flagship import telemetry
telemetry.count_events(2, 0, 0)
pid = os.fork()
if pid == 0:
    telemetry.count_events(5, 1, 0)
    os._exit(0)
os.waitpid(pid, 0)
telemetry.count_events(1, 0, 0)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
got = {s.labels["outcome"]: s.value for m in registry.collect() for s in m.samples
       if s.name == "flagship_events_total"}
files = sorted(f for f in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]) if f.startswith("counter_"))
print(got, os.getpid() != pid and files == sorted([f"counter_{os.getpid()}.db", f"counter_{pid}.db"]))
"""


def test_multiprocess_metrics_follow_a_fork_with_the_cached_pid(tmp_path):
    """flagship tells prometheus-client its pid from a value the at-fork hook keeps
    current (no getpid() per increment): a forked child still writes files of its own,
    and a scrape adds both processes up."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", FORKED_METRICS], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'accepted': 8.0, 'duplicate': 1.0} True"


def test_readyz_reports_each_check(client, runtime):
    from flagship.jobs import Periodic

    body = client.get("/readyz")
    assert body.status_code == 200 and body.json["status"] == "ready"
    assert body.json["checks"]["database"]["status"] == "ok"
    assert body.json["checks"]["migrations"]["status"] == "ok"
    assert body.json["checks"]["redis"]["status"] == "not configured"
    stopped = Periodic("flagship-aggregate", 1.0, lambda: None)
    client.application.extensions["flagship.jobs"] = [stopped]
    body = client.get("/readyz").json
    assert body["status"] == "degraded" and body["checks"]["jobs"]["jobs"]["flagship-aggregate"]["status"] == "stopped"
    assert client.get("/healthz").json == {"status": "ok"}


def test_json_logs_have_one_line_per_request_with_its_id(client, admin, capsys):
    from flagship.observability import JsonFormatter, configure_logging

    configure_logging("json")
    try:
        client.get("/api/v1/flags", headers={**admin, "X-Request-Id": "req-42"})
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        [line] = [entry for entry in lines if entry.get("request_id") == "req-42"]
        assert line["route"] == "/api/v1/flags" and line["status"] == 200
        assert line["actor"] == "key:test-admin" and line["duration_ms"] >= 0 and line["pid"] == os.getpid()
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "boom %s", ("!",), None)
        assert json.loads(JsonFormatter().format(record))["message"] == "boom !"
    finally:
        configure_logging("text")
        logging.getLogger().setLevel(logging.WARNING)


def test_tracing_is_off_without_an_endpoint_and_traces_requests_and_sql_with_one(
        client, admin, monkeypatch):
    from flagship.observability import init_tracing

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert init_tracing(client.application, None) is False
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.conftest import make_app as fresh

    app = fresh(client.application.extensions["flagship"].db.url)
    exporter = InMemorySpanExporter()
    try:
        assert init_tracing(app, app.extensions["flagship"], exporter=exporter) is True
        app.test_client().get("/api/v1/flags", headers=admin)
        names = [span.name for span in exporter.get_finished_spans()]
        assert any("/api/v1/flags" in name for name in names), names
        assert any(name.split()[0] in ("SELECT", "connect") for name in names), names
    finally:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().uninstrument()
        app.extensions["flagship"].db.dispose()


# -- a real server ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port: int, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, raw: Any = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        try:
            conn.request(method, path, body=data, headers=headers or {},
                         encode_chunked=raw is not None and not isinstance(raw, bytes))
        except (BrokenPipeError, ConnectionResetError):
            # the server answered (413) and closed before the whole body was sent: the
            # answer is read below when it arrived first
            pass
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _refused(port: int, headers: dict[str, str], chunks: Any) -> int:
    """The status of an oversized chunked body; a few tries, as the server may reset the
    connection (it stops reading at the limit) before its 413 is read."""
    for _ in range(5):
        try:
            return _request(port, "POST", "/api/v1/flags", headers=headers, raw=chunks())[0]
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            continue
    raise AssertionError("the oversized chunked body never got an answer")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a log being written (a partial last line is skipped)."""
    found = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


@pytest.mark.xdist_group("serve")
def test_serve_with_two_workers_adds_metrics_up_and_logs_json(tmp_path: Path):
    port, key = _free_port(), "fsk_admin_observability_test_key"
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": f"sqlite:///{tmp_path / 'f.db'}",
           "FLAGSHIP_PORT": str(port), "FLAGSHIP_WORKERS": "2", "FLAGSHIP_THREADS": "4",
           "FLAGSHIP_ADMIN_KEY": key, "FLAGSHIP_LOG_FORMAT": "json", "FLAGSHIP_PLUGINS": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert _request(port, "POST", "/api/v1/flags", boolean_flag("f"), headers)[0] == 201
        sent = 0

        def client(offset: int) -> None:
            for i in range(20):
                assert _request(port, "POST", "/api/v1/evaluate",
                                {"context": {"key": f"u{offset}-{i}"}}, headers)[0] == 200

        def serving() -> set[int]:
            return {line["pid"] for line in _json_lines(tmp_path / "serve.log")
                    if line.get("route") == "/api/v1/evaluate"}

        # the kernel hands connections to whichever worker accepts first: send rounds of
        # concurrent requests until both workers have served some (the point is the sum)
        for round_ in range(20):
            threads = [threading.Thread(target=client, args=(round_ * 6 + n,)) for n in range(6)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            sent += 120
            log.flush()
            if len(serving()) == 2:
                break

        def chunks() -> Any:
            for _ in range(2048):
                yield b" " * 1024
        assert _refused(port, headers, chunks) == 413

        scrapes = [_request(port, "GET", "/metrics", headers=headers)[1].decode() for _ in range(4)]
        for text in scrapes:  # whichever worker answers, the sum over both
            assert _sample(text, "flagship_http_requests_total", route="/api/v1/evaluate",
                           method="POST", status="200") == sent
            assert _sample(text, "flagship_evaluations_total", flag="f", reason="DEFAULT") == sent
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    lines = _json_lines(tmp_path / "serve.log")
    pids = {line["pid"] for line in lines if line.get("route") == "/api/v1/evaluate"}
    assert len(pids) == 2, "both workers served evaluations"
    assert sum(1 for line in lines if line.get("route") == "/api/v1/evaluate") == sent
