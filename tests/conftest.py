"""Shared fixtures: an app per test on a fresh database, on SQLite and PostgreSQL."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from flagship.db import upgrade

POSTGRES_ADMIN_URL = os.environ.get("FLAGSHIP_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [b for b in os.environ.get("FLAGSHIP_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test process; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own on the shared server, migrated once, dropped at the end."""
    name = f"flagship_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        tables = [row[0] for row in conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('alembic_version', 'meta', 'environments')"))]
        if tables:
            conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        # the migration's own row stays: a fresh install has the production environment
        conn.execute(sa.text("DELETE FROM environments WHERE key <> 'production'"))
        conn.execute(sa.text("UPDATE environments SET name = 'Production', colour = '#cf222e', "
                             "requires_approval = false, position = 0, version = 1"))
        conn.execute(sa.text("UPDATE meta SET snapshot_revision = 0"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database for one test."""
    if request.param == "sqlite":
        path = tmp_path / "flagship.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


def make_app(database_url: str, **config: Any) -> Any:
    from flagship.app import create_app

    settings = {"DATABASE_URL": database_url, "TESTING": True, "ENTRY_POINTS": False,
                "SECRET_KEY": "test", "PLUGINS": ""}
    settings.update(config)
    return create_app(settings)


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    app = make_app(database_url)
    yield app
    app.extensions["flagship"].db.dispose()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runtime(app: Any) -> Any:
    return app.extensions["flagship"]


@pytest.fixture
def admin(runtime: Any) -> dict[str, str]:
    """Headers of an admin key."""
    from flagship.auth import create_key

    return {"Authorization": f"Bearer {create_key(runtime, 'test', 'test-admin', 'admin')}"}


@pytest.fixture
def sdk(runtime: Any) -> dict[str, str]:
    """Headers of an SDK key."""
    from flagship.auth import create_key

    return {"Authorization": f"Bearer {create_key(runtime, 'test', 'test-sdk', 'sdk')}"}


@pytest.fixture
def api(client: Any, admin: dict[str, str]) -> Any:
    """Call `/api/v1` as admin; assert the status; return the JSON body."""
    def call(method: str, path: str, body: Any = None, status: int = 200,
             headers: dict[str, str] | None = None) -> Any:
        response = getattr(client, method)("/api/v1" + path, json=body,
                                           headers={**admin, **(headers or {})})
        payload = response.get_json(silent=True)
        assert response.status_code == status, (method, path, response.status_code, payload)
        return payload
    return call


@pytest.fixture
def runner(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `flagship ...` against the test's database: runner("keys", "list")."""
    from click.testing import CliRunner

    from flagship.cli import main

    monkeypatch.setenv("FLAGSHIP_DATABASE_URL", database_url)
    monkeypatch.delenv("FLAGSHIP_PLUGINS", raising=False)
    cli = CliRunner()
    return lambda *args, input=None: cli.invoke(main, list(args), input=input, catch_exceptions=False)


REDIS_LOCK = "flagship:test-run"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database index of this test process's own, on the machine's Redis server.

    Indexes 1-15 are claimed with a lock key (SET NX), so parallel test processes and two
    test runs on one machine never share one; the index is flushed before and after.
    """
    import redis

    token = uuid.uuid4().hex
    for index in range(1, 16):
        client = redis.Redis(host="127.0.0.1", port=6379, db=index)
        try:
            if client.set(REDIS_LOCK, token, nx=True, ex=3600):
                break
        except redis.ConnectionError:
            pytest.skip("no Redis server on 127.0.0.1:6379")
        client.close()
    else:
        raise RuntimeError("every Redis database index 1-15 is claimed by another test run")
    _flush_keeping_lock(client, token)
    try:
        yield f"redis://127.0.0.1:6379/{index}"
    finally:
        client.flushdb()
        client.close()


def _flush_keeping_lock(client: Any, token: str) -> None:
    client.flushdb()
    client.set(REDIS_LOCK, token, ex=3600)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A client of this process's Redis index, emptied (but for the claim) before and after."""
    import redis

    client = redis.Redis.from_url(redis_url)
    token = client.get(REDIS_LOCK)
    _flush_keeping_lock(client, token)
    yield client
    _flush_keeping_lock(client, token)
    client.close()


def boolean_flag(key: str = "new-checkout", **extra: Any) -> dict[str, Any]:
    """A minimal valid boolean flag document."""
    doc = {"key": key, "type": "boolean", "variants": {"on": True, "off": False},
           "default_variant": "off"}
    doc.update(extra)
    return doc
