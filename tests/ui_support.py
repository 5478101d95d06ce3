"""Fixtures of the UI view tests: a test client signed in with an admin key, sending the
session's CSRF token, optionally as htmx."""
from __future__ import annotations

import re
from typing import Any

import pytest

from flagship.auth import create_key

HX = {"HX-Request": "true"}


class UI:
    """The Flask test client as a signed-in browser (or htmx) would use the UI."""

    def __init__(self, client: Any, runtime: Any) -> None:
        self.client, self.runtime = client, runtime

    def sign_in(self, name: str = "alice", environment: str | None = None) -> str:
        secret = create_key(self.runtime, "test", name, "admin", environment=environment)
        self.client.get("/ui/sign-in")
        response = self.client.post("/ui/sign-in", data={"key": secret, "csrf_token": self.csrf})
        assert response.status_code == 303, response.text
        return secret

    @property
    def csrf(self) -> str:
        with self.client.session_transaction("/ui/") as session:
            return session.get("csrf", "")

    def get(self, path: str, htmx: bool = False, status: int | None = 200, **kwargs: Any) -> Any:
        response = self.client.get(path, headers=HX if htmx else {}, **kwargs)
        if status is not None:
            assert response.status_code == status, (path, response.status_code, response.text[:3000])
        return response

    def post(self, path: str, data: dict[str, Any] | None = None, htmx: bool = False,
             status: int | None = None, csrf: bool = True, **kwargs: Any) -> Any:
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.csrf)
        response = self.client.post(path, data=data, headers=HX if htmx else {}, **kwargs)
        if status is not None:
            assert response.status_code == status, (path, response.status_code, response.text[:3000])
        return response


@pytest.fixture
def ui(client: Any, runtime: Any) -> UI:
    """Signed in as admin key `alice` (actor `ui:alice`)."""
    browser = UI(client, runtime)
    browser.sign_in()
    return browser


def field_error(html: str, path: str) -> str:
    """The error message shown next to the input named `path` ('' when none)."""
    found = re.search(r'id="f-%s-error"[^>]*>(.*?)</p>' % re.escape(path.replace(".", "-")), html, re.S)
    return found.group(1).strip() if found else ""


def audit(runtime: Any, **filters: Any) -> list[dict[str, Any]]:
    from flagship import audit as audit_service

    return audit_service.list_audit(runtime, per_page=200, **filters)[0]
