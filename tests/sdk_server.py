"""A real `flagship serve` (gunicorn, SQLite) for the SDK tests: start, kill, restart, call."""
from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ADMIN_KEY = "fsk_admin_sdk_tests_0000000000000000000000"


_DEAD_PORTS: list[socket.socket] = []


def dead_url() -> str:
    """The URL of a port that refuses connections for the whole test run: bound, never
    listening, so no server started later (in this process or another) can take it. A
    port merely free at import was sometimes taken by a test server later, and a client
    meant to find nothing got that server's 401."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _DEAD_PORTS.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One server process group on a fixed port and SQLite file, restartable."""

    def __init__(self, folder: Path) -> None:
        self.db = folder / "flagship.db"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start `flagship serve` and wait for /healthz."""
        env = {**os.environ, "FLAGSHIP_DATABASE_URL": f"sqlite:///{self.db}",
               "FLAGSHIP_PORT": str(self.port), "FLAGSHIP_ADMIN_KEY": ADMIN_KEY,
               "FLAGSHIP_WORKERS": "1", "FLAGSHIP_AGGREGATE_INTERVAL": "0"}
        # its own process group: killing it must take the gunicorn worker down too
        self._proc = subprocess.Popen([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError("flagship serve did not start")

    def kill(self) -> None:
        """SIGKILL the whole server (master and worker), as a crash would."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait(timeout=10)
        self._proc = None

    def call(self, method: str, path: str, body: Any = None, key: str = ADMIN_KEY) -> tuple[int, Any]:
        """One JSON request; returns (status, parsed body or None)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        return response.status, json.loads(data) if data else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """A request that must succeed (2xx); returns the body."""
        status, answer = self.call(method, path, body)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    def seed(self, path: str, body: Any = None) -> None:
        """Create something unless it exists (modules sharing the server seed independently)."""
        status, answer = self.call("POST", path, body)
        assert 200 <= status < 300 or status == 409, (path, status, answer)

    def sdk_key(self) -> tuple[str, str]:
        """A new SDK key: (name, secret)."""
        name = f"sdk-{uuid.uuid4().hex[:8]}"
        return name, self.ok("POST", "/api/v1/keys", {"name": name, "scope": "sdk"})["key"]

    def patch_flag(self, key: str, changes: dict[str, Any]) -> None:
        """PATCH a flag at its current version."""
        version = self.ok("GET", f"/api/v1/flags/{key}")["version"]
        self.ok("PATCH", f"/api/v1/flags/{key}", {**changes, "version": version})

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the server's SQLite file read-only (what was stored, not what was answered)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> Any:
    """Poll `predicate()` until it is truthy or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    return predicate()


_shared: Server | None = None


def shared_server() -> Server:
    """One server for every SDK test module of this process (each start costs seconds).

    Tests that change flags put them back; tests that kill it start it again.
    """
    global _shared
    if _shared is None:
        folder = tempfile.TemporaryDirectory(prefix="flagship-sdk-tests-")
        server = Server(Path(folder.name))
        server.start()
        atexit.register(folder.cleanup)
        atexit.register(server.kill)
        _shared = server
    return _shared
