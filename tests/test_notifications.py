"""Notifications: the outbox dispatcher and webhooks, against a real local HTTP receiver.

Signatures verify, every attempt is in the delivery log, a failing receiver is retried with
backoff and gets the event once it answers (a healthy one is never sent it twice), a raising
notifier never blocks the others, filters by pattern and environment, secrets shown once.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import types
from collections import Counter
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from flagship.hookspecs import hookimpl
from flagship.rollout import notifications
from flagship.rollout.notifications import dispatch, matches, pending_events
from tests.conftest import boolean_flag, make_app

WEBHOOKS = "flagship.plugins.default_notifiers:webhooks"


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    """The app with the webhook endpoints (registered here until the app registers them)."""
    from flagship.rollout.api import webhooks

    app = make_app(database_url)
    if webhooks.blp.name not in app.blueprints:
        app.extensions["flask-smorest"]["apis"][""]["ext_obj"].register_blueprint(webhooks.blp)
    yield app
    app.extensions["flagship"].db.dispose()


class Receiver:
    """A local HTTP server: records every request; answers per path from a script of statuses."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: dict[str, list[int]] = {}
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "json": json.loads(body)})
                time.sleep(receiver.delay)
                statuses = receiver.script.get(self.path) or [200]
                status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


def hook(api: Any, receiver: Receiver, name: str, patterns: list[str], **extra: Any) -> dict[str, Any]:
    return api("post", "/webhooks", {"name": name, "url": receiver.url(f"/{name}"),
                                     "event_types": patterns, **extra}, 201)


def now() -> datetime:
    return datetime.now(timezone.utc)


def outbox(runtime: Any) -> list[dict[str, Any]]:
    from flagship.store import OutboxRecord

    with runtime.db.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(OutboxRecord.__table__))]


def test_webhooks_get_signed_events_and_every_attempt_is_logged(api, runtime, receiver):
    created = hook(api, receiver, "a", ["flag.*"])
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 30
    api("post", "/flags", boolean_flag(), 201)
    counts = dispatch(runtime)
    assert counts["delivered"] >= 2 and counts["failed"] == 0  # webhook.create, flag.create, ...
    [request] = receiver.at("/a")
    headers = request["headers"]
    assert headers["X-Flagship-Event"] == "flag.create" and headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Flagship-Signature"], expected)
    event = request["json"]
    assert headers["X-Flagship-Delivery"] == event["id"] and event["type"] == "flag.create"
    assert event["actor"] == "key:test-admin" and event["environment"] == "production"
    assert event["audit"]["before"] is None and event["audit"]["after"]["key"] == "new-checkout"
    log = api("get", f"/webhooks/{created['id']}/deliveries")
    assert log["total"] == 1
    entry = log["items"][0]
    assert (entry["event_id"], entry["type"], entry["attempt"], entry["ok"], entry["status_code"]) == \
        (event["id"], "flag.create", 1, True, 200)
    assert entry["error"] is None and entry["duration_ms"] >= 0
    assert pending_events(runtime) == [] and dispatch(runtime)["claimed"] == 0
    assert len(receiver.requests) == 1  # delivered events are never sent again


def test_a_failing_receiver_gets_the_event_later_and_others_only_once(api, runtime, receiver, caplog):
    a, b = hook(api, receiver, "a", ["flag.disable"]), hook(api, receiver, "b", ["flag.*"])
    api("post", "/flags", boolean_flag(), 201)
    t0 = now()
    dispatch(runtime, t0)
    receiver.script["/a"] = [500, 200]
    api("post", "/flags/new-checkout/disable")
    caplog.set_level(logging.INFO, logger="flagship.notify")
    first = dispatch(runtime, t0 + timedelta(seconds=1))
    assert (first["claimed"], first["delivered"], first["failed"]) == (1, 0, 1)
    [row] = [r for r in outbox(runtime) if r["delivered_at"] is None]
    assert row["attempts"] == 1 and list(row["failed"]) == [WEBHOOKS]
    assert "HTTP 500" in pending_events(runtime)[0]["failed"][WEBHOOKS]
    assert dispatch(runtime, t0 + timedelta(seconds=10))["claimed"] == 0  # backoff: 10 s
    second = dispatch(runtime, t0 + timedelta(seconds=11.5))
    assert (second["claimed"], second["delivered"]) == (1, 1)
    assert [r["headers"]["X-Flagship-Event"] for r in receiver.at("/a")] == ["flag.disable"] * 2
    assert [r["headers"]["X-Flagship-Event"] for r in receiver.at("/b")] == ["flag.create", "flag.disable"]
    [event_id] = {r["json"]["id"] for r in receiver.at("/a")}  # one id: the idempotency key
    logged = [r for r in caplog.records if r.name == "flagship.notify" and event_id in r.getMessage()]
    assert len(logged) == 1  # the redelivery went to the failed notifier only
    attempts = api("get", f"/webhooks/{a['id']}/deliveries")["items"]
    assert [(d["attempt"], d["ok"], d["status_code"]) for d in attempts] == [(2, True, 200), (1, False, 500)]
    assert api("get", f"/webhooks/{b['id']}/deliveries")["total"] == 2
    assert pending_events(runtime) == []


def test_a_raising_notifier_blocks_neither_the_others_nor_the_change(api, runtime, receiver, caplog):
    seen: list[str] = []
    broken = types.ModuleType("broken_notifier")

    def notify(event: dict[str, Any]) -> None:
        if broken.down:  # type: ignore[attr-defined]
            raise ConnectionError("pager is down")
        seen.append(event["type"])
    broken.notify = hookimpl(notify)  # type: ignore[attr-defined]
    broken.down = True  # type: ignore[attr-defined]
    runtime.plugins.register(broken, name="broken")
    hook(api, receiver, "a", ["flag.*"])
    caplog.set_level(logging.INFO, logger="flagship.notify")
    api("post", "/flags", boolean_flag(), 201)  # the change commits whatever the notifiers do
    t0 = now()
    counts = dispatch(runtime, t0)
    assert counts["failed"] >= 2 and counts["delivered"] == 0
    assert [r["headers"]["X-Flagship-Event"] for r in receiver.requests] == ["flag.create"]
    logged = [r.getMessage() for r in caplog.records if r.name == "flagship.notify"]
    assert any("flag.create" in line for line in logged)
    assert {tuple(e["failed"]) for e in pending_events(runtime)} == {("broken",)}
    broken.down = False  # type: ignore[attr-defined]
    caplog.clear()
    later = dispatch(runtime, t0 + timedelta(seconds=11))
    assert later["delivered"] == counts["failed"] and pending_events(runtime) == []
    assert "flag.create" in seen and len(seen) == len(set(seen))  # each event once
    assert len(receiver.requests) == 1 and not [r for r in caplog.records if r.name == "flagship.notify"]
    assert api("get", "/flags/new-checkout")["key"] == "new-checkout"


def test_event_patterns_and_environment_filters(api, runtime, receiver):
    api("post", "/environments", {"key": "staging", "name": "Staging", "colour": "#1a7f37"}, 201)
    hook(api, receiver, "rollouts", ["rollout.*"])
    hook(api, receiver, "staging", ["flag.update", "alert.opened"], environment="staging")
    hook(api, receiver, "prod", ["*"], environment="production")
    hook(api, receiver, "off", ["*"], enabled=False)
    with runtime.change("system:test") as tx:
        tx.emit("rollout.holding", {"rollout": {"id": 1}}, environment="production")
        tx.emit("rollout.rolled_back", {"rollout": {"id": 2}}, environment="staging")
        tx.emit("flag.update", {}, environment="staging")
        tx.emit("flag.update", {}, environment="production")
        tx.emit("alert.opened", {}, environment=None)
        tx.emit("rolloutx", {}, environment="staging")
    dispatch(runtime)
    got = {path: sorted(r["headers"]["X-Flagship-Event"] for r in receiver.at(f"/{path}"))
           for path in ("rollouts", "staging", "prod", "off")}
    assert got == {"rollouts": ["rollout.holding", "rollout.rolled_back"], "staging": ["flag.update"],
                   "prod": ["flag.update", "rollout.holding"], "off": []}
    assert matches(["experiment.*"], None, {"type": "experiment.start", "environment": "x"})
    assert not matches(["experiment.*"], None, {"type": "experiments", "environment": "x"})
    assert matches(["*"], "x", {"type": "a"}) is False


def test_webhook_crud_validation_and_secrets_shown_once(api, client, runtime, receiver):
    created = hook(api, receiver, "a", ["rollout.*", "alert.*"], secret="s" * 20)
    assert created["secret"] == "s" * 20 and created["version"] == 1
    for bad, field in [({"url": "ftp://example.com/x"}, "url"), ({"url": "http:///nohost"}, "url"),
                       # these three were a 500 (urlsplit raising) or stored as given
                       ({"url": "http://[::1"}, "url"), ({"url": "http://x.com:99999/"}, "url"),
                       ({"url": " http://x.com"}, "url"), ({"url": "http://x.com/\n"}, "url"),
                       ({"event_types": ["rollout.?"]}, "event_types.0"), ({"event_types": []}, "event_types"),
                       ({"environment": "nowhere"}, "environment"), ({"secret": "short"}, "secret")]:
        body = {"name": "b", "url": receiver.url("/b"), "event_types": ["*"], **bad}
        error = api("post", "/webhooks", body, 422)
        assert field in error["errors"]["json"], (bad, error)
    api("post", "/webhooks", {"name": "a", "url": receiver.url("/x"), "event_types": ["*"]}, 409)
    assert "url" in api("patch", f"/webhooks/{created['id']}", {"url": "http://[zz", "version": 1},
                        422)["errors"]["json"]
    changed = api("patch", f"/webhooks/{created['id']}", {"enabled": False, "secret": "t" * 20, "version": 1})
    assert not changed["enabled"] and changed["version"] == 2 and "secret" not in changed
    api("patch", f"/webhooks/{created['id']}", {"enabled": True, "version": 1}, 409)
    listed = api("get", "/webhooks")
    assert [w["name"] for w in listed] == ["a"] and "secret" not in listed[0]
    assert "secret" not in api("get", f"/webhooks/{created['id']}")
    audit = api("get", "/audit?target_type=webhook")["items"]
    assert [a["action"] for a in audit] == ["webhook.update", "webhook.create"]
    assert audit[0]["after"]["secret_rotated"] is True
    for text in (json.dumps(audit), json.dumps(outbox(runtime), default=str),
                 client.get("/api/openapi.json").get_data(as_text=True)):
        assert "s" * 20 not in text and "t" * 20 not in text
    api("delete", f"/webhooks/{created['id']}", None, 204)
    api("get", f"/webhooks/{created['id']}", None, 404)
    api("get", f"/webhooks/{created['id']}/deliveries", None, 404)


def test_timeouts_give_up_and_pruning(api, runtime, receiver, monkeypatch):
    monkeypatch.setattr(notifications, "WEBHOOK_TIMEOUT", 0.2)
    hook(api, receiver, "slow", ["flag.*"])
    receiver.delay = 0.6
    api("post", "/flags", boolean_flag(), 201)
    t0 = now()
    assert dispatch(runtime, t0, max_attempts=2)["failed"] == 1
    [failure] = api("get", "/webhooks/1/deliveries")["items"]
    assert not failure["ok"] and failure["status_code"] is None and "timed out" in failure["error"]
    receiver.delay, receiver.script["/slow"] = 0.0, [503]
    assert dispatch(runtime, t0 + timedelta(seconds=11), max_attempts=2)["abandoned"] == 1
    assert pending_events(runtime) == []  # given up after max_attempts, kept with its failures
    [row] = [r for r in outbox(runtime) if r["type"] == "flag.create"]
    assert row["delivered_at"] is not None and row["failed"]
    stored = len(outbox(runtime))
    assert dispatch(runtime, t0 + timedelta(days=6))["pruned"] == 0
    assert dispatch(runtime, t0 + timedelta(days=8))["pruned"] == stored > 0
    assert outbox(runtime) == [] and api("get", "/webhooks/1/deliveries")["total"] == 2


def test_two_dispatchers_at_once_deliver_each_event_once(api, runtime, receiver):
    hook(api, receiver, "a", ["*"])
    with runtime.change("system:test") as tx:
        for n in range(30):
            tx.emit("rollout.holding", {"n": n})
    results: list[dict[str, int]] = []
    start = threading.Barrier(3)

    def run() -> None:
        start.wait()
        results.append(dispatch(runtime, limit=10))
    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while pending_events(runtime):
        dispatch(runtime)
    delivered = Counter(r["json"]["id"] for r in receiver.requests if r["json"]["type"] == "rollout.holding")
    assert len(delivered) == 30 and set(delivered.values()) == {1}
