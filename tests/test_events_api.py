"""Event ingestion: validation per item, idempotency, exposures, limits, durability."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from flagship.experiments.store.tables import EventRecord, ExposureRecord

V = "/api/v1"


def post(client, headers, path, body, status):
    response = client.post(V + path, json=body, headers=headers)
    assert response.status_code == status, response.get_json(silent=True)
    return response.get_json(silent=True)


def stored(runtime, table=EventRecord):
    with runtime.db.engine.connect() as conn:
        return conn.execute(sa.select(table.__table__)).all()


def test_single_event_defaults_and_errors(client, sdk, runtime):
    body = post(client, sdk, "/experiments/events", {"unit": "u1", "event": "purchase"}, 202)
    assert body == {"accepted": 1, "duplicates": 0, "rejected": []}
    (row,) = stored(runtime)
    assert row.value == 1.0 and row.unit == "u1" and len(row.event_id) == 32
    bad = post(client, sdk, "/experiments/events", {"unit": "u1", "event": "buy", "value": "ten"}, 422)
    assert "value" in bad["errors"]["json"] and "value" in bad["message"]
    assert post(client, sdk, "/experiments/events", {"event": "buy"}, 422)["errors"]["json"]["unit"]
    assert post(client, sdk, "/experiments/events", {"unit": "u", "event": "$secret"}, 422)
    assert post(client, sdk, "/experiments/events", {"unit": "u", "event": "e", "colour": 1}, 422)[
        "errors"]["json"]["colour"] == ["unknown field"]
    response = client.post(V + "/experiments/events", data="{nope", headers={**sdk, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert client.post(V + "/experiments/events", json={"unit": "u", "event": "e"}).status_code == 401


def test_batch_partial_rejection_keeps_the_good_items(client, sdk, runtime):
    now = datetime.now(timezone.utc)
    items = [
        {"event_id": "a", "unit": "u1", "event": "purchase", "value": 12.5},
        {"event_id": "b", "unit": "u2", "event": "purchase", "timestamp": (now + timedelta(hours=2)).isoformat()},
        {"event_id": "c", "unit": "u3", "event": "purchase", "timestamp": (now - timedelta(days=90)).isoformat()},
        "not an object",
        {"event_id": "d", "unit": 42, "event": "click", "timestamp": (now - timedelta(hours=3)).isoformat()},
        {"event_id": "a", "unit": "u1", "event": "purchase"},
        {"event_id": "e", "unit": "u5", "event": "click", "timestamp": "yesterday"},
    ]
    body = post(client, sdk, "/experiments/events/batch", items, 200)
    assert body["accepted"] == 2 and body["duplicates"] == 1
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3, 6]
    assert "future" in body["rejected"][0]["errors"]["timestamp"][0]
    assert "past" in body["rejected"][1]["errors"]["timestamp"][0]
    assert {r.event_id: r.unit for r in stored(runtime)} == {"a": "u1", "d": "42"}
    again = post(client, sdk, "/experiments/events/batch", {"events": items[:1]}, 200)
    assert again == {"accepted": 0, "duplicates": 1, "rejected": []}


def test_batch_limits(app, client, sdk):
    app.config["MAX_EVENT_BATCH"] = 3
    too_many = client.post(V + "/experiments/events/batch", json=[{"unit": "u", "event": "e"}] * 4, headers=sdk)
    assert too_many.status_code == 413 and "limit is 3" in too_many.json["message"]
    app.config["MAX_EVENT_BATCH_BYTES"] = 500
    too_big = client.post(V + "/experiments/events/batch", json=[{"unit": "u" * 100, "event": "e"}] * 10, headers=sdk)
    assert too_big.status_code == 413
    assert client.post(V + "/experiments/events/batch", json={"x": 1}, headers=sdk).status_code == 400


def test_exposure_events_count_only_the_first(client, admin, sdk, runtime):
    client.post(V + "/layers", json={"key": "main"}, headers=admin)
    client.post(V + "/experiments", json={"key": "e1", "flag": "f", "layer": "main", "variants": [
        {"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]}, headers=admin)
    client.post(V + "/experiments/e1/start", headers=admin)
    batch = [{"unit": "u1", "event": "$exposure", "experiment": "e1", "variant": "b"},
             {"unit": "u1", "event": "$exposure", "experiment": "e1", "variant": "a"},
             {"unit": "u2", "event": "$exposure", "experiment": "nope", "variant": "a"},
             {"unit": "u3", "event": "$exposure", "experiment": "e1", "variant": "zzz"},
             {"unit": "u4", "event": "$exposure", "experiment": "e1"}]
    body = post(client, sdk, "/experiments/events/batch", batch, 200)
    assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [2, 3, 4]
    assert [(r.unit, r.variant) for r in stored(runtime, ExposureRecord)] == [("u1", "b")]
    # the SDK-sent exposure is sticky for server-side evaluation too
    assert client.post(V + "/experiments/e1/assign", json={"context": {"key": "u1"}}, headers=sdk).json["variant"] == "b"


def test_same_batch_from_eight_threads_is_stored_once(app, sdk, runtime):
    items = [{"event_id": f"ev-{i}", "unit": f"u{i % 50}", "event": "click", "value": i} for i in range(500)]
    results = []

    def send():
        results.append(app.test_client().post(V + "/experiments/events/batch", json=items, headers=sdk).json)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["accepted"] for r in results) == 500
    assert sum(r["duplicates"] for r in results) == 7 * 500
    assert len(stored(runtime)) == 500


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.xdist_group("serve")
def test_accepted_events_survive_sigkill(tmp_path):
    port, key = _free_port(), "fsk_admin_durability_test_key_0000000"
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": url, "FLAGSHIP_PORT": str(port),
           "FLAGSHIP_ADMIN_KEY": key, "FLAGSHIP_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    accepted = 0
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        for batch in range(20):
            items = [{"event_id": f"{batch}-{i}", "unit": f"u{i}", "event": "buy"} for i in range(250)]
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/experiments/events/batch",
                                             data=json.dumps(items).encode(), method="POST",
                                             headers={"Authorization": f"Bearer {key}",
                                                      "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                accepted += json.load(response)["accepted"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no shutdown, no flush: the whole process group dies
        proc.wait(timeout=10)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == accepted == 5000
    engine.dispose()
