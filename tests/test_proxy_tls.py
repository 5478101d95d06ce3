"""Behind a TLS-terminating proxy: the real server (gunicorn) takes `X-Forwarded-Proto:
https` from a trusted proxy address (gunicorn's FORWARDED_ALLOW_IPS, loopback by default),
so the UI's cookie is Secure; from anyone else the header changes nothing."""
from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.sdk_server import Server

pytestmark = pytest.mark.xdist_group("proxy-tls")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def start(allowed: str | None) -> Server:
        if allowed is None:
            monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
        else:
            monkeypatch.setenv("FORWARDED_ALLOW_IPS", allowed)
        started = Server(tmp_path)
        started.start()
        servers.append(started)
        return started
    servers: list[Server] = []
    yield start
    for s in servers:
        s.kill()


def _cookie(server: Server, headers: dict[str, str]) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/ui/sign-in", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.getheader("Set-Cookie") or ""
    finally:
        conn.close()


def test_a_trusted_proxy_saying_https_makes_the_cookie_secure(server: Any) -> None:
    local = server(None)  # the default: a proxy on this host is trusted
    assert "Secure" in _cookie(local, {"X-Forwarded-Proto": "https"})
    assert "Secure" not in _cookie(local, {})


def test_an_untrusted_address_cannot_claim_https(server: Any) -> None:
    elsewhere = server("10.9.8.7")  # only that proxy is trusted; we call from loopback
    assert "Secure" not in _cookie(elsewhere, {"X-Forwarded-Proto": "https"})
