"""`GET /api/v1/sdk/stream`: the SDK client against a real `flagship serve` picks up changes
made in any process within a second; the stream's limit, heartbeats, end and auth in process."""
from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any, Iterator

import pytest

from flagship.sdk import Client
from flagship.serving import changes
from tests.conftest import boolean_flag, make_app
from tests.sdk_server import Server, shared_server, wait_for

STREAM_FLAG = {"key": "stream-flag", "type": "boolean", "variants": {"on": True, "off": False},
               "default_variant": "off"}


# -- against a real server (gunicorn, SQLite) ----------------------------------------------

@pytest.fixture(scope="module")
def server() -> Server:
    srv = shared_server()
    srv.seed("/api/v1/flags", STREAM_FLAG)
    return srv


def _streaming_client(server: Server) -> Client:
    # polling every minute: whatever arrives within a second came through the stream
    client = Client(server.base_url, server.sdk_key()[1], stream=True, poll_interval=60.0,
                    jitter=0.0, timeout=5.0, events=False)
    assert client.ready(5)
    assert wait_for(lambda: client.stats["streaming"], 5), client.stats
    return client


def _picked_up_within(client: Client, expected: bool, change: Any) -> float:
    requests = client.stats["snapshot_requests"]
    change()
    changed = time.monotonic()
    assert wait_for(lambda: client.bool_value("stream-flag", {"key": "u"}, not expected) is expected, 2)
    elapsed = time.monotonic() - changed
    assert client.stats["snapshot_requests"] > requests  # the stream woke a conditional GET
    return elapsed


def test_the_client_stream_picks_up_an_api_change_within_a_second(server: Server) -> None:
    with _streaming_client(server) as client:
        assert client.bool_value("stream-flag", {"key": "u"}, True) is False
        elapsed = _picked_up_within(client, True, lambda: server.patch_flag(
            "stream-flag", {"default_variant": "on"}))
        assert elapsed < 1.0, elapsed
        assert _picked_up_within(client, False, lambda: server.patch_flag(
            "stream-flag", {"default_variant": "off"})) < 1.0
        assert client.stats["streaming"] is True and client.stats["poll_failures"] == 0


def test_a_change_written_by_another_process_reaches_the_stream(server: Server) -> None:
    # this test process writes the server's SQLite file directly, as the CLI would
    from flagship.flags import service as flags
    from flagship.runtime import make_runtime

    writer = make_runtime({"DATABASE_URL": f"sqlite:///{server.db}", "ENTRY_POINTS": False,
                           "PLUGINS": ""})
    try:
        with _streaming_client(server) as client:
            elapsed = _picked_up_within(client, True, lambda: flags.patch_flag(
                writer, "cli", "stream-flag", {"default_variant": "on"}, None, "production"))
            assert elapsed < 1.0, elapsed
            flags.patch_flag(writer, "cli", "stream-flag", {"default_variant": "off"}, None,
                             "production")
            assert wait_for(lambda: not client.bool_value("stream-flag", {"key": "u"}, True), 2)
    finally:
        writer.db.dispose()


def _open_raw(server: Server, key: str) -> tuple[http.client.HTTPConnection, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/api/v1/sdk/stream", headers={"Authorization": f"Bearer {key}"})
    return conn, conn.getresponse()


def test_streams_beyond_the_limit_get_503_and_never_starve_requests(server: Server) -> None:
    limit = int(os.environ.get("FLAGSHIP_STREAM_LIMIT", "4"))
    key = server.sdk_key()[1]
    time.sleep(changes.CHECK_SECONDS + 0.5)  # streams of earlier tests have given their slots back
    opened = []
    try:
        for _ in range(limit):
            conn, response = _open_raw(server, key)
            opened.append(conn)
            assert response.status == 200
            assert response.getheader("Content-Type").startswith("text/event-stream")
            assert response.readline().startswith(b"id: ")
        conn, response = _open_raw(server, key)
        assert response.status == 503 and response.getheader("Retry-After") == "30"
        assert "FLAGSHIP_STREAM_LIMIT" in json.loads(response.read())["message"]
        conn.close()
        # the other threads of the worker still answer ordinary requests
        assert server.call("GET", "/api/v1/sdk/snapshot", key=key)[0] == 200
        assert server.call("GET", "/api/v1/flags/stream-flag")[0] == 200
    finally:
        for conn in opened:
            conn.close()

    def reopened() -> bool:  # closed clients free their slots within CHECK_SECONDS
        conn, response = _open_raw(server, key)
        conn.close()
        return response.status == 200
    assert wait_for(reopened, 3, interval=0.2)


# -- in process (Flask test client, both backends) -----------------------------------------

@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changes, "HEARTBEAT_SECONDS", 0.05)


def _events(response: Any, timeout: float = 2.0) -> Iterator[bytes]:
    """The chunks of a streaming test response (each read returns within a heartbeat)."""
    deadline = time.monotonic() + timeout
    for chunk in response.response:
        yield chunk
        if time.monotonic() > deadline:
            return


def _chunks_within(body: Iterator[bytes], timeout: float) -> Iterator[bytes]:
    deadline = time.monotonic() + timeout
    for chunk in body:  # heartbeats (`fast`) keep each read short
        yield chunk
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing but heartbeats for {timeout} s")


def _next_event(response: Any, timeout: float = 2.0) -> dict[str, Any] | None:
    for chunk in _events(response, timeout):
        if not chunk.startswith(b":"):
            lines = dict(line.split(": ", 1) for line in chunk.decode().strip().split("\n"))
            return {**lines, "data": json.loads(lines["data"])}
    return None


def _etag(client: Any, headers: dict[str, str]) -> str:
    return client.get("/api/v1/sdk/snapshot", headers=headers).headers["ETag"]


def test_announces_its_environment_changes_and_ignores_other_environments(
        client: Any, api: Any, sdk: dict[str, str], fast: None) -> None:
    api("post", "/flags", boolean_flag("f"), status=201)
    api("post", "/environments", {"key": "staging", "name": "Staging", "copy_from": "production"},
        status=201)
    stream = client.get("/api/v1/sdk/stream", headers=sdk, buffered=False)
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    assert stream.headers["Cache-Control"] == "no-cache"
    first = _next_event(stream)
    assert first["event"] == "revision" and first["data"]["etag"] == _etag(client, sdk)
    assert first["id"] == first["data"]["etag"].strip('"')
    api("post", "/flags/f/environments/staging/disable")
    assert _next_event(stream, timeout=0.6) is None  # staging's change: heartbeats only
    api("post", "/flags/f/disable")
    changed = time.monotonic()
    event = _next_event(stream)
    assert time.monotonic() - changed < 1.0
    assert event["data"] == {"revision": event["data"]["revision"], "etag": _etag(client, sdk)}
    assert event["data"]["etag"] != first["data"]["etag"]
    stream.close()


def test_heartbeats_a_resumed_stream_and_the_end_of_a_stream(
        client: Any, sdk: dict[str, str], fast: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changes, "MAX_STREAM_SECONDS", 0.4)
    current = _etag(client, sdk).strip('"')
    # a client resuming at the current ETag (Last-Event-ID) missed nothing: no event at once
    stream = client.get("/api/v1/sdk/stream", headers={**sdk, "Last-Event-ID": current},
                        buffered=False)
    started = time.monotonic()
    chunks = list(stream.response)  # until the server ends the stream
    assert 0.3 < time.monotonic() - started < 2.0
    assert chunks[0] == b": connected\n\n"
    assert chunks.count(b": heartbeat\n\n") >= 3 and len(set(chunks[1:])) == 1
    stream.close()
    assert client.application.extensions["flagship.streams"].open == 0


def test_beyond_the_limit_a_stream_gets_503_with_retry_after(
        database_url: str, fast: None) -> None:
    from flagship.auth import create_key

    app = make_app(database_url, STREAM_LIMIT=1)
    try:
        client = app.test_client()
        headers = {"Authorization": "Bearer " + create_key(
            app.extensions["flagship"], "test", "s", "sdk")}
        first = client.get("/api/v1/sdk/stream", headers=headers, buffered=False)
        assert first.status_code == 200 and _next_event(first) is not None
        refused = client.get("/api/v1/sdk/stream", headers=headers)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
        assert refused.get_json()["code"] == 503
        assert client.get("/api/v1/sdk/snapshot", headers=headers).status_code == 200
        first.close()  # the slot comes back
        again = client.get("/api/v1/sdk/stream", headers=headers, buffered=False)
        assert again.status_code == 200
        again.close()
        hub = app.extensions["flagship.streams"]
        assert hub.open == 0
        assert wait_for(lambda: hub.revision is None, 2)  # the watcher stopped with the last stream
    finally:
        app.extensions["flagship"].db.dispose()


def test_zero_turns_streams_off(database_url: str) -> None:
    from flagship.auth import create_key

    app = make_app(database_url, STREAM_LIMIT=0, AUTH=False)
    try:
        assert app.test_client().get("/api/v1/sdk/stream").status_code == 503
    finally:
        app.extensions["flagship"].db.dispose()


def test_the_stream_needs_a_key_of_its_environment(client: Any, api: Any, runtime: Any) -> None:
    from flagship.auth import create_key

    assert client.get("/api/v1/sdk/stream").status_code == 401
    assert client.get("/api/v1/sdk/stream", headers={"X-API-Key": "fsk_sdk_nope"}).status_code == 401
    api("post", "/environments", {"key": "staging", "name": "Staging"}, status=201)
    staging = {"X-API-Key": create_key(runtime, "test", "stg", "sdk", environment="staging")}
    refused = client.get("/api/v1/sdk/stream?environment=production", headers=staging)
    assert refused.status_code == 403
    assert client.get("/api/v1/sdk/stream?environment=nowhere", headers={
        "Authorization": f"Bearer {create_key(runtime, 'test', 'adm', 'admin')}"}).status_code == 404


def test_the_watcher_starts_again_in_a_forked_child() -> None:
    revision = [1]
    hub = changes.StreamHub(lambda: revision[0], limit=2)
    assert hub.try_open() and hub.wait(None, 2) == 1
    pid = os.fork()
    if pid == 0:  # the child: no streams, no watcher thread, a lock nobody holds
        ok = hub.open == 0 and hub.revision is None and hub.try_open() and hub.wait(None, 2) == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    revision[0] = 2
    assert hub.wait(1, 2) == 2  # the parent's watcher goes on
    hub.close()
    assert wait_for(lambda: hub.revision is None, 2)  # the watcher stopped with the last stream


def test_a_change_the_watcher_saw_is_sent_before_the_snapshot_cache_rereads(
        database_url: str, fast: None) -> None:
    # The watcher reads the revision itself; the serving process's snapshot cache re-reads it
    # only every `revision_check` seconds. A stream woken in between must not compare the old
    # snapshot with itself and move on: the change would never be sent.
    from flagship.flags import service as flags
    from flagship.runtime import make_runtime

    settings = {"DATABASE_URL": database_url, "ENTRY_POINTS": False, "PLUGINS": ""}
    serving, other = make_runtime(settings, server=True), make_runtime(settings, server=True)
    try:
        flags.create_flag(serving, "t", boolean_flag("f"), "production")
        serving.db.revision_check = 3600.0  # the cache would not re-read on its own in this test
        first = serving.snapshots.get("production")
        hub = changes.StreamHub(serving.db.read_snapshot_revision, limit=1)
        assert hub.try_open()
        body = iter(changes.Stream(serving, hub, "production", changes.revision_message))
        assert json.loads(next(body).split(b"data: ")[1])["etag"] == first.etag
        flags.patch_flag(other, "t", "f", {"enabled": False}, None, "production")
        changed = other.snapshots.get("production")
        assert changed.etag != first.etag
        chunk = next(c for c in _chunks_within(body, 3.0) if not c.startswith(b":"))
        assert json.loads(chunk.split(b"data: ")[1]) == {"revision": changed.revision,
                                                         "etag": changed.etag}
        body.close()
        assert hub.open == 0
    finally:
        serving.close()
        other.close()
