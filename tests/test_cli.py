"""The `flagship` command line, and `serve` as a real gunicorn process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from flagship.cli import main
from flagship.config import SETTINGS, load_config
from flagship.errors import ConfigError


@pytest.fixture
def cli(runner):
    return runner


def test_keys_create_prints_only_the_key_then_list_and_revoke(cli):
    created = cli("keys", "create", "--scope", "sdk", "--name", "mobile")
    assert created.exit_code == 0
    assert created.stdout.strip().startswith("fsk_sdk_") and len(created.stdout.split()) == 1
    listed = json.loads(cli("keys", "list", "--json").stdout)
    assert [(k["name"], k["scope"], k["revoked_at"]) for k in listed] == [("mobile", "sdk", None)]
    assert "mobile" in cli("keys", "list").stdout
    assert cli("keys", "revoke", "mobile").exit_code == 0
    assert json.loads(cli("keys", "list", "--json").stdout)[0]["revoked_at"]
    again = cli("keys", "create", "--scope", "sdk", "--name", "mobile")
    assert again.exit_code == 1 and "already exists" in again.output
    bad = cli("keys", "create", "--scope", "root", "--name", "x")
    assert bad.exit_code == 2


def test_plugins_lists_builtins_and_operators(cli):
    output = json.loads(cli("plugins", "--json").stdout)
    assert any(p["name"] == "flagship.plugins.default_operators" for p in output["plugins"])
    assert "semver_gte" in output["operators"]
    assert "register_operators" in cli("plugins").stdout


def test_db_upgrade_creates_a_fresh_database(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    monkeypatch.setenv("FLAGSHIP_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0 and (tmp_path / "new.db").exists()


def test_bad_configuration_is_a_clear_message():
    with pytest.raises(ConfigError, match="FLAGSHIP_DATABASE_URL"):
        load_config(environ={"FLAGSHIP_DATABASE_URL": "mysql://x"})
    with pytest.raises(ConfigError, match="FLAGSHIP_PORT must be an integer"):
        load_config(environ={"FLAGSHIP_PORT": "eighty"})
    with pytest.raises(ConfigError, match="FLAGSHIP_REDIS_URL"):
        load_config(environ={"FLAGSHIP_REDIS_URL": "http://x"})
    with pytest.raises(ConfigError, match="FLAGSHIP_AUTH"):
        load_config(environ={"FLAGSHIP_AUTH": "maybe"})
    result = CliRunner().invoke(main, ["keys", "list"], env={"FLAGSHIP_PORT": "-1"})
    assert result.exit_code == 2 and "FLAGSHIP_PORT" in result.output


def test_readme_documents_every_setting():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for setting in SETTINGS:
        assert setting.env in readme, setting.env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.xdist_group("serve")
def test_serve_migrates_bootstraps_an_admin_key_and_serves(tmp_path):
    port = _free_port()
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
           "FLAGSHIP_PORT": str(port), "FLAGSHIP_WORKERS": "1", "FLAGSHIP_THREADS": "2",
           "HOME": str(tmp_path)}  # where gunicorn would put its control socket
    env.pop("FLAGSHIP_ADMIN_KEY", None)
    env.pop("XDG_RUNTIME_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        key = None
        deadline = time.monotonic() + 30
        while key is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if line.strip().startswith("fsk_admin_"):
                key = line.strip()
        assert key, "serve did not print a first admin key"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/flags",
                                         headers={"Authorization": f"Bearer {key}"})
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    assert json.load(response)["total"] == 0
                    assert response.headers["Server"].startswith("gunicorn")  # not Flask's dev server
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        # no control socket shared by every instance on the host (gunicorn's default)
        assert not (tmp_path / ".gunicorn").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_refuses_a_default_environment_that_does_not_exist(tmp_path):
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": f"sqlite:///{tmp_path / 'typo.db'}",
           "FLAGSHIP_DEFAULT_ENVIRONMENT": "prodution", "FLAGSHIP_PORT": "1"}
    done = subprocess.run([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "FLAGSHIP_DEFAULT_ENVIRONMENT='prodution' names no environment; there are: production" \
        in done.stderr
