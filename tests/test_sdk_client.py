"""The SDK client against a real `flagship serve`: outages, recovery, 401, fork, events, cold starts."""
from __future__ import annotations

import http.server
import json
import os
import select
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from flagship.sdk import Client
from flagship.sdk.stream import SseEvent, SseParser
from flagship.sdk.transport import parse_retry_after
from tests.sdk_server import Server, dead_url, shared_server, wait_for

FAST: dict[str, Any] = {"poll_interval": 0.2, "jitter": 0.0, "max_backoff": 0.4, "timeout": 2.0}
BOOL_FLAG = {"key": "checkout", "type": "boolean", "variants": {"on": True, "off": False},
             "default_variant": "off"}
DEAD_URL = dead_url()


@pytest.fixture(scope="module")
def server() -> Server:
    srv = shared_server()
    srv.seed("/api/v1/flags", BOOL_FLAG)
    srv.seed("/api/v1/flags", {"key": "colour", "type": "string",
                               "variants": {"r": "red", "g": "green"}, "default_variant": "r"})
    srv.seed("/api/v1/layers", {"key": "main"})
    srv.seed("/api/v1/experiments", {
        "key": "button", "flag": "button-colour", "layer": "main", "traffic_percentage": 100,
        "variants": [{"variant": "blue", "value": "#00f", "is_control": True},
                     {"variant": "green", "value": "#0a0"}]})
    srv.seed("/api/v1/experiments/button/start")
    return srv


@pytest.fixture
def sdk_key(server: Server) -> str:
    return server.sdk_key()[1]


def snapshot_doc(server: Server, key: str) -> dict[str, Any]:
    status, doc = server.call("GET", "/api/v1/sdk/snapshot", key=key)
    assert status == 200
    return doc


def test_importing_the_sdk_needs_no_server_stack() -> None:
    probe = (
        "import json, sys\n"
        "from flagship.sdk import Client\n"
        "doc = {'revision': 1, 'flags': [{'key': 'f', 'type': 'boolean', 'variants': "
        "{'on': True, 'off': False}, 'default_variant': 'on'}]}\n"
        f"client = Client({DEAD_URL!r}, 'k', bootstrap=doc)\n"
        "assert client.bool_value('f', {'key': 'u'}, False) is True\n"
        "client.close(timeout=0.1)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          timeout=60)
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert loaded & {"flask", "werkzeug", "sqlalchemy", "sqlmodel", "redis", "rq", "openfeature"} == set()


def test_evaluates_locally_and_picks_up_a_change_within_one_poll(server: Server, sdk_key: str) -> None:
    with Client(server.base_url, sdk_key, **FAST) as client:
        assert client.ready(5) and client.status == "ready"
        assert client.bool_value("checkout", {"key": "u-1"}, True) is False
        server.patch_flag("checkout", {"default_variant": "on"})
        try:
            changed = time.monotonic()
            assert wait_for(lambda: client.bool_value("checkout", {"key": "u-1"}, False), 2)
            assert time.monotonic() - changed < FAST["poll_interval"] + 0.5
        finally:  # the shared server's flag as the next tests expect it, whatever happened
            server.patch_flag("checkout", {"default_variant": "off"})


def test_typed_helpers_return_the_default_on_every_error_path(server: Server, sdk_key: str) -> None:
    with Client(server.base_url, sdk_key, **FAST) as client:
        assert client.ready(5)
        assert client.string_value("colour", {"key": "u"}, "x") == "red"
        assert client.bool_value("colour", {"key": "u"}, True) is True  # type mismatch
        assert client.number_value("colour", {"key": "u"}, 7) == 7
        assert client.json_value("colour", {"key": "u"}, {"d": 1}) == {"d": 1}
        assert client.string_value("missing", {"key": "u"}, "d") == "d"
        assert client.string_value("colour", "not a context", "d") == "d"
        assert client.evaluate("missing", {}).error_code == "FLAG_NOT_FOUND"
        assert client.evaluate(["unhashable"], {}).error_code == "FLAG_NOT_FOUND"  # type: ignore[arg-type]
        assert client.evaluate("colour", {"key": {"bad": 1}}).error_code == "INVALID_CONTEXT"


def test_no_server_and_nothing_to_serve_gives_defaults(tmp_path: Path) -> None:
    with Client(DEAD_URL, "k", **FAST) as client:
        assert client.ready(0.3) is False
        assert client.status == "error"
        result = client.evaluate("checkout", {"key": "u"})
        assert (result.reason, result.error_code) == ("ERROR", "PROVIDER_NOT_READY")
        assert client.bool_value("checkout", {"key": "u"}, True) is True


def test_401_stops_polling_for_good(server: Server) -> None:
    name, key = server.sdk_key()
    with Client(server.base_url, key, **FAST) as client:
        assert client.ready(5)
        server.ok("DELETE", f"/api/v1/keys/{name}")
        assert wait_for(lambda: client.status == "fatal", 3)
        assert "invalid or revoked" in (client.status_message or "")
        assert wait_for(lambda: not client.stats["polling"], 1)
        requests = client.stats["snapshot_requests"]
        time.sleep(4 * FAST["poll_interval"])
        assert client.stats["snapshot_requests"] == requests
        # the last good snapshot is still served
        assert client.bool_value("checkout", {"key": "u"}, True) is False
    with Client(server.base_url, "fsk_sdk_not_a_key", **FAST) as client:
        assert client.ready(3) is False and client.status == "fatal"
        assert client.evaluate("checkout", {"key": "u"}).error_code == "PROVIDER_FATAL"


def test_a_forked_child_polls_again_and_sees_later_changes(server: Server, sdk_key: str) -> None:
    with Client(server.base_url, sdk_key, **FAST) as client:
        assert client.ready(5) and client.bool_value("checkout", {"key": "u"}, True) is False
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it sees, then leave without running pytest's exit
            try:
                os.close(read_end)
                seen = wait_for(lambda: client.bool_value("checkout", {"key": "u"}, False), 5)
                os.write(write_end, json.dumps({"seen": seen, **client.stats}).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            server.patch_flag("checkout", {"default_variant": "on"})
            ready, _, _ = select.select([read_end], [], [], 10)
            report = json.loads(os.read(read_end, 65536)) if ready else {}
        finally:
            os.close(read_end)
            os.waitpid(pid, 0)
            server.patch_flag("checkout", {"default_variant": "off"})
        assert report.get("seen") is True, report
        assert report["polling"] is True


def test_server_outage_keeps_answering_then_catches_up_and_delivers_once(
        server: Server, sdk_key: str) -> None:
    units = [f"exp-unit-{i}" for i in range(20)]
    with Client(server.base_url, sdk_key, flush_interval=0.2, **FAST) as client:
        assert client.ready(5)
        server.kill()
        try:
            assert wait_for(lambda: client.status == "stale", 3)
            answered, raised = hammer(client, seconds=0.5)
            assert raised == [] and answered > 1000  # every call answered from the last snapshot
            variants = {u: client.evaluate("button-colour", {"key": u}).variant for u in units}
            assert set(variants.values()) == {"blue", "green"}
            # a second evaluation is sticky and records nothing new
            assert all(client.evaluate("button-colour", {"key": u}).variant == v
                       for u, v in variants.items())
            ids = [client.track(u, "purchase", 9.5, {"sku": "a"}) for u in units]
            assert client.flush(timeout=0.3) is False
            assert wait_for(lambda: client.stats["failed_attempts"] >= 2, 3)
            assert client.stats["queued"] == 2 * len(units)
        finally:
            server.start()
        server.patch_flag("checkout", {"default_variant": "on"})
        changed = time.monotonic()
        assert wait_for(lambda: client.bool_value("checkout", {"key": "u-9"}, False), 3)
        assert client.status == "ready"
        # backoff is capped at max_backoff: the change lands one capped retry + one poll later
        assert time.monotonic() - changed < FAST["max_backoff"] + FAST["poll_interval"] + 0.5
        assert client.flush(timeout=5) is True
        assert client.stats["sent"] == 2 * len(units)
    server.patch_flag("checkout", {"default_variant": "off"})
    stored = dict(server.query(
        # this test's units only: other modules' tests track purchases on the shared server
        "SELECT event_id, COUNT(*) FROM events WHERE event = 'purchase' AND unit LIKE 'exp-unit-%' "
        "GROUP BY event_id"))
    assert stored == {event_id: 1 for event_id in ids}
    exposures = dict(server.query(
        "SELECT unit, variant FROM exposures WHERE experiment_key = 'button'"))
    assert {u: exposures.get(u) for u in units} == variants
    rows = server.query("SELECT unit, COUNT(*) FROM events WHERE event = '$exposure' GROUP BY unit")
    assert {u: n for u, n in rows if u in variants} == {u: 1 for u in units}


def hammer(client: Client, seconds: float, threads: int = 4) -> tuple[int, list[BaseException]]:
    """Evaluate from several threads for `seconds`; return (calls answered, exceptions raised)."""
    answered, raised, stop = [0] * threads, [], threading.Event()

    def work(n: int) -> None:
        while not stop.is_set():
            try:
                assert client.bool_value("checkout", {"key": f"u-{n}"}, True) is False
                answered[n] += 1
            except BaseException as err:  # noqa: BLE001 - any escape is the failure we count
                raised.append(err)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    return sum(answered), raised


def test_a_returning_unit_keeps_the_variant_the_server_gave_it(server: Server, sdk_key: str) -> None:
    unit = "returning-unit-1"
    first = server.ok("POST", "/api/v1/experiments/button/assign", {"context": {"key": unit}})["variant"]
    other = "green" if first == "blue" else "blue"
    doc = server.ok("GET", "/api/v1/experiments/button")
    weights = [{**v, "weight": 1.0 if v["variant"] == first else 1_000_000.0} for v in doc["variants"]]
    server.ok("PATCH", "/api/v1/experiments/button", {"variants": weights, "version": doc["version"]})
    try:
        with Client(server.base_url, sdk_key, events=False, **FAST) as client:
            assert client.ready(5)
            assert client.evaluate("button-colour", {"key": unit}).variant == first  # asked the server
            assert client.evaluate("button-colour", {"key": "brand-new-unit"}).variant == other
        with Client(server.base_url, sdk_key, events=False, sticky_lookup=False, **FAST) as client:
            assert client.ready(5)
            # what the contract says without the lookup: local hashing follows the new weights
            assert client.evaluate("button-colour", {"key": unit}).variant == other
    finally:
        doc = server.ok("GET", "/api/v1/experiments/button")
        even = [{**v, "weight": 1.0} for v in doc["variants"]]
        server.ok("PATCH", "/api/v1/experiments/button", {"variants": even, "version": doc["version"]})


def test_bounded_queue_drops_the_oldest_and_counts() -> None:
    with Client(DEAD_URL, "k", bootstrap={"revision": 1}, max_queue=5, flush_interval=60,
                **FAST) as client:
        ids = [client.track("u", "click") for _ in range(8)]
        assert client.stats["dropped"] == 3 and client.stats["queued"] == 5
        assert all(ids) and len(set(ids)) == 8
        assert client.track(None, "click") is None and client.track("u", "$exposure") is None


def test_a_full_batch_is_sent_without_waiting_for_the_timer(server: Server, sdk_key: str) -> None:
    with Client(server.base_url, sdk_key, batch_size=5, flush_interval=60, **FAST) as client:
        ids = [client.track("batch-unit", "view") for _ in range(5)]
        assert wait_for(lambda: client.stats["sent"] == 5, 3)
    assert len(server.query(f"SELECT 1 FROM events WHERE event_id IN ({','.join('?' * 5)})", *ids)) == 5


def test_queued_events_are_flushed_at_interpreter_exit(server: Server, sdk_key: str) -> None:
    script = (
        "from flagship.sdk import Client\n"
        f"client = Client({server.base_url!r}, {sdk_key!r}, flush_interval=60)\n"
        "print(client.track('exit-unit', 'signup'))\n")  # no close(): exit must flush
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    event_id = done.stdout.strip()
    assert server.query("SELECT unit FROM events WHERE event_id = ?", event_id) == [("exit-unit",)]


def test_cold_start_from_bootstrap_and_from_the_cache(server: Server, sdk_key: str, tmp_path: Path) -> None:
    cache = tmp_path / "snapshot.json"
    with Client(server.base_url, sdk_key, cache_path=cache, **FAST) as client:
        assert client.ready(5)
        revision = client.revision
    assert json.loads(cache.read_text())["snapshot"]["revision"] == revision
    with Client(DEAD_URL, sdk_key, cache_path=cache, **FAST) as cold:
        assert cold.ready(2) is True and cold.status == "stale"
        assert cold.revision == revision
        assert cold.string_value("colour", {"key": "u"}, "x") == "red"
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(snapshot_doc(server, sdk_key)))
    for source in (str(bootstrap), snapshot_doc(server, sdk_key)):
        with Client(DEAD_URL, sdk_key, bootstrap=source, **FAST) as cold:
            assert cold.ready(2) and cold.string_value("colour", {"key": "u"}, "x") == "red"
    # the cached ETag makes the first fetch a 304 against the live server
    with Client(server.base_url, sdk_key, cache_path=cache, **FAST) as warm:
        assert warm.ready(5) and warm.status == "ready" and warm.revision == revision
    cache.write_text("{not json")
    with Client(DEAD_URL, sdk_key, cache_path=cache, **FAST) as broken:
        assert broken.ready(0.3) is False


def test_stream_enabled_client_follows_changes_over_the_stream(server: Server, sdk_key: str) -> None:
    # over FLAGSHIP_STREAM_LIMIT the server answers 503 and the client polls (test_sdk_stream.py)
    with Client(server.base_url, sdk_key, stream=True, **FAST) as client:
        assert client.ready(5)
        assert wait_for(lambda: client.stats["streaming"], 5)
        server.patch_flag("checkout", {"default_variant": "on"})
        assert wait_for(lambda: client.bool_value("checkout", {"key": "u"}, False), 2)
    server.patch_flag("checkout", {"default_variant": "off"})


def test_sse_parser_reads_revision_events_and_skips_heartbeats() -> None:
    parser = SseParser()
    lines = [": heartbeat", "", "event: revision", 'data: {"revision": 7,', 'data: "etag": "x"}',
             "id: 7", "retry: 1500", "", "data: plain", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert events == [SseEvent("revision", '{"revision": 7,\n"etag": "x"}', "7"),
                      SseEvent("message", "plain", "7")]


class _Sequence(http.server.BaseHTTPRequestHandler):
    """Answers snapshot GETs from a list of (status, headers, body); the last one repeats."""

    answers: list[tuple[int, Any, bytes]] = []  # headers: a dict, or a callable making one
    seen: list[float] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.seen.append(time.monotonic())
        status, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        headers = headers() if callable(headers) else headers
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve_sequence(answers: list[tuple[int, Any, bytes]]) -> http.server.ThreadingHTTPServer:
    _Sequence.answers, _Sequence.seen = answers, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sequence)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _snapshot(revision: int, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"revision": revision, "flags": [BOOL_FLAG], **extra}).encode()
    return 200, {"ETag": f'"r{revision}"'}, body


def test_retry_after_is_honoured_in_seconds_and_as_a_date() -> None:
    # 429 with Retry-After in seconds, then 503 with an HTTP date 2 s ahead, then the snapshot
    in_two_seconds = lambda: {"Retry-After": formatdate(time.time() + 2, usegmt=True)}  # noqa: E731
    httpd = _serve_sequence([(429, {"Retry-After": "1"}, b"{}"), (503, in_two_seconds, b"{}"), _snapshot(4)])
    try:
        with Client(f"http://127.0.0.1:{httpd.server_port}", "k", poll_interval=0.05, jitter=0.0,
                    max_backoff=0.05) as client:
            assert client.ready(5) and client.revision == 4
            first, second, third = _Sequence.seen[:3]
        assert second - first >= 0.95  # not the 0.05 s backoff
        assert third - second >= 0.95  # an HTTP date has 1 s resolution: 1-2 s
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_a_plugin_operator_the_client_lacks_errs_only_where_it_is_reached(caplog) -> None:
    """The server has a plugin's operator, this client does not: the snapshot still loads
    (refusing it would freeze the client, kill switches included); flags reaching the
    unknown condition answer ERROR with the reason, earlier rules and other flags work."""
    import logging

    from flagship import Snapshot
    from flagship.flags.model import flag_from_dict
    from flagship.flags.operators import default_operators
    from tests.plugins.even_operator import register_operators

    with_plugin = {**default_operators(), **{op.name: op for op in register_operators()}}
    rules = [{"id": "vip", "kind": "force", "variant": "on",
              "conditions": [{"attribute": "plan", "operator": "eq", "values": ["vip"]}]},
             {"id": "even", "kind": "force", "variant": "on",
              "conditions": [{"attribute": "age", "operator": "is_even", "values": []}]}]
    flags = [flag_from_dict({"key": "plugged", "type": "boolean", "variants": {"on": True, "off": False},
                             "default_variant": "off", "rules": rules}, with_plugin),
             flag_from_dict({"key": "plain", "type": "boolean", "variants": {"on": True, "off": False},
                             "default_variant": "on"}, with_plugin)]
    doc = Snapshot(7, flags, operators=with_plugin).to_dict()
    caplog.set_level(logging.WARNING, logger="flagship.sdk")
    with Client(DEAD_URL, "k", bootstrap=doc, **FAST) as client:
        assert client.ready(0.3) and client.revision == 7
        assert client.bool_value("plain", {"key": "u"}, False) is True
        assert client.evaluate("plugged", {"key": "u", "plan": "vip", "age": 4}).rule_id == "vip"
        missing = client.evaluate("plugged", {"key": "u", "plan": "free"})  # no age: still unknown
        assert (missing.reason, missing.error_code) == ("ERROR", "GENERAL")  # the real one may accept absence
        reached = client.evaluate("plugged", {"key": "u", "plan": "free", "age": 4})
        assert (reached.reason, reached.error_code) == ("ERROR", "GENERAL")
        assert "is_even" in reached.error_message
        assert client.bool_value("plugged", {"key": "u", "age": 4}, True) is True  # the caller's default
    assert "operator 'is_even', which this client does not have" in caplog.text
    with Client(DEAD_URL, "k", bootstrap=doc, operators=with_plugin, **FAST) as client:
        assert client.bool_value("plugged", {"key": "u", "age": 4}, False) is True  # with the plugin: evaluated


def test_a_snapshot_that_does_not_compile_never_stops_polling() -> None:
    """`"variants": 5` in an experiment raised a TypeError that ended the polling thread:
    the client served its old snapshot for good, reporting ready."""
    broken = {"experiments": [{"key": "e", "flag": "checkout", "layer": "l", "status": "running",
                               "ranges": [[0, 10000]], "variants": 5}]}
    httpd = _serve_sequence([_snapshot(1), _snapshot(2, **broken), _snapshot(3)])
    try:
        with Client(f"http://127.0.0.1:{httpd.server_port}", "k", poll_interval=0.05, jitter=0.0,
                    max_backoff=0.05) as client:
            assert client.ready(5)
            assert wait_for(lambda: client.revision == 3, 5), client.status
            assert client.status == "ready"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_retry_after_of_zero_or_in_the_past_is_not_a_busy_loop() -> None:
    past = formatdate(time.time() - 3600, usegmt=True)
    httpd = _serve_sequence([(503, {"Retry-After": "0"}, b"{}"), (429, {"Retry-After": past}, b"{}")])
    try:
        with Client(f"http://127.0.0.1:{httpd.server_port}", "k", bootstrap={"revision": 1},
                    poll_interval=0.05, jitter=0.0, max_backoff=0.2):
            time.sleep(1.0)
        # the backoff (0.05 s doubling to 0.2 s) paces it: about eight; it was thousands
        assert 2 <= len(_Sequence.seen) < 30, len(_Sequence.seen)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_track_refuses_what_json_cannot_carry_and_the_sender_lives_on(server: Server, sdk_key: str,
                                                                      caplog) -> None:
    """A datetime in properties killed the event thread at send time: every later event
    stayed queued and flush()/close() raised."""
    import datetime as dt
    from decimal import Decimal

    with Client(server.base_url, sdk_key, flush_interval=60, **FAST) as client:
        assert client.track("u-json", "buy", 2.0, {"when": dt.datetime.now()}) is None
        assert client.track("u-json", "buy", "ten") is None and client.track("u-json", "buy", True) is None
        assert client.track("u-json", "buy", float("nan")) is None
        assert "properties must be plain JSON" in caplog.text
        kept = [client.track("u-json", "buy", Decimal("2.5")), client.track("u-json", "buy", 3, {"a": [1]})]
        assert all(kept) and client.flush(5)
    rows = server.query("SELECT value FROM events WHERE event_id IN (?, ?) ORDER BY value", *kept)
    assert rows == [(2.5,), (3.0,)]
