"""Degrade, don't fail: Redis stopped (a private redis-server), PostgreSQL connections cut."""
from __future__ import annotations

import logging
import socket
import subprocess
import time
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_ADMIN_URL, boolean_flag, make_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own on a free port, started and killed on demand."""

    def __init__(self, tmp_path: Any) -> None:
        self.port = _free_port()
        self.dir = tmp_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Any) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def _experiment(api: Any) -> None:
    api("post", "/flags", boolean_flag("plain", rules=[{"kind": "rollout", "variant": "on",
                                                         "percentage": 50}]), 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "exp", "flag": "colour", "layer": "main",
                                 "traffic_percentage": 100, "variants": [
                                     {"variant": "a", "value": "a", "is_control": True},
                                     {"variant": "b", "value": "b"}]}, 201)
    api("post", "/experiments/exp/start")


def test_redis_down_degrades_to_sql_and_recovers(database_url, private_redis, caplog):
    import redis

    app = make_app(database_url, REDIS_URL=private_redis.url)
    runtime = app.extensions["flagship"]
    runtime.assignments.retry_seconds = 0.2
    client = app.test_client()
    from flagship.auth import create_key

    headers = {"Authorization": f"Bearer {create_key(runtime, 't', 'admin', 'admin')}"}

    def api(method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = getattr(client, method)("/api/v1" + path, json=body, headers=headers)
        assert response.status_code == status, (path, response.status_code, response.get_json())
        return response.get_json()

    try:
        _experiment(api)
        before = {u: api("post", "/experiments/exp/assign", {"context": {"key": u}})["variant"]
                  for u in ("u1", "u2")}
        assert redis.Redis.from_url(private_redis.url).hget("flagship:assign:u1", "exp")
        private_redis.kill()
        caplog.set_level(logging.ERROR)
        # flags without sticky state never touch Redis; the others fall back to SQL
        assert api("post", "/evaluate", {"context": {"key": "u1"}, "flags": ["plain"]})["flags"]["plain"]
        for _ in range(3):
            flags = api("post", "/evaluate", {"context": {"key": "u1"}})["flags"]
            assert flags["colour"]["variant"] == before["u1"]
            assert api("post", "/experiments/exp/assign", {"context": {"key": "u2"}})["variant"] == before["u2"]
        new = api("post", "/experiments/exp/assign", {"context": {"key": "u3"}})
        assert new["in_experiment"] and api("post", "/explain", {"flag": "colour", "context": {"key": "u3"}})
        assert [a["variant"] for a in api("get", "/experiments/user/u3")["assignments"]] == [new["variant"]]
        loud = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
        assert len(loud) == 1, "logged loudly, once"
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json["status"] == "degraded"
        assert ready.json["checks"]["redis"]["status"] == "down"
        # Redis is back (empty): the assignments made meanwhile are copied into it at the
        # first store access (u3 itself is remembered by this process: a new unit reads)
        private_redis.start()
        time.sleep(0.3)
        assert api("post", "/experiments/exp/assign", {"context": {"key": "u4"}})["in_experiment"]
        assert api("post", "/experiments/exp/assign", {"context": {"key": "u3"}})["variant"] == new["variant"]
        restored = redis.Redis.from_url(private_redis.url)
        assert restored.hget("flagship:assign:u3", "exp").decode().split("\t")[0] == new["variant"]
        assert client.get("/readyz").json["status"] == "ready"
    finally:
        runtime.db.dispose()


def _admin_engine() -> sa.Engine:
    return sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")


def test_postgres_connections_cut_answer_503_then_recover(database_url, api, client, admin):
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    name = sa.make_url(database_url).database
    api("post", "/flags", boolean_flag("f"), 201)
    terminate = sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()")
    admin_engine = _admin_engine()
    try:
        with admin_engine.connect() as conn:  # cut while idle: the pool notices, no error
            conn.execute(terminate, {"name": name})
        assert api("get", "/flags/f")["key"] == "f"
        with admin_engine.connect() as conn:  # and now the database refuses connections
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(terminate, {"name": name})
        time.sleep(1.1)  # past the key cache
        for path in ("/api/v1/flags/f", "/api/v1/evaluate"):
            response = client.open(path, method="GET" if path.endswith("/f") else "POST",
                                    json={"context": {"key": "u"}}, headers=admin)
            assert response.status_code == 503, (path, response.status_code, response.get_json())
            assert response.headers["Retry-After"].isdigit() and response.json["code"] == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["checks"]["database"]["status"] == "down"
    finally:
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin_engine.dispose()
    assert api("get", "/flags/f")["key"] == "f"  # recovered without a restart
    assert client.get("/readyz").json["checks"]["database"]["status"] == "ok"
