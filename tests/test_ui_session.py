"""Signing in to the UI, the session cookie, CSRF, security headers and environments."""
from __future__ import annotations

from typing import Any

from flagship.auth import create_key, revoke_key
from tests.conftest import boolean_flag, make_app
from tests.ui_support import HX, UI, ui  # noqa: F401 - fixture

PAGES = ["/ui/", "/ui/flags", "/ui/flags/-/new", "/ui/segments", "/ui/segments/-/new", "/ui/environments",
         "/ui/environments/-/new", "/ui/layers", "/ui/metrics", "/ui/metrics/-/new", "/ui/experiments",
         "/ui/experiments/-/new", "/ui/rollouts", "/ui/rollouts/-/new", "/ui/rollouts/templates",
         "/ui/rollouts/templates/-/new", "/ui/alerts", "/ui/webhooks", "/ui/webhooks/-/new", "/ui/audit",
         "/ui/keys"]


def test_every_screen_needs_a_session_and_remembers_where_you_were_going(client: Any) -> None:
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["Location"].startswith("/ui/sign-in?next=")
    answer = client.get("/ui/flags?q=x", headers=HX)
    assert answer.status_code == 401
    assert answer.headers["HX-Redirect"].startswith("/ui/sign-in")


def test_sign_in_with_an_admin_key_then_every_screen_renders(client: Any, runtime: Any) -> None:
    browser = UI(client, runtime)
    page = browser.get("/ui/sign-in").text
    assert 'type="password"' in page and 'name="csrf_token"' in page
    sdk = create_key(runtime, "test", "app", "sdk")
    refused = browser.post("/ui/sign-in", {"key": sdk}, status=401)
    assert "the UI needs an admin key" in refused.text
    assert "That is not a live API key." in browser.post("/ui/sign-in", {"key": "fsk_nope"}, status=401).text
    secret = create_key(runtime, "test", "bob", "admin")
    done = browser.post("/ui/sign-in", {"key": secret, "next": "/ui/flags?q=a"}, status=303)
    assert done.headers["Location"] == "/ui/flags?q=a"
    for path in PAGES:
        html = browser.get(path).text
        assert "Signed in with key" in html and "bob" in html, path
        assert secret not in html, path  # the secret never comes back


def test_next_never_leaves_the_ui(client: Any, runtime: Any) -> None:
    browser = UI(client, runtime)
    browser.get("/ui/sign-in")
    secret = create_key(runtime, "test", "bob", "admin")
    for evil in ("https://evil.example/ui/", "//evil.example/ui/", "/api/v1/flags", "javascript:x"):
        answer = browser.post("/ui/sign-in", {"key": secret, "next": evil}, status=303)
        assert answer.headers["Location"] == "/ui/", evil


def test_the_cookie_is_httponly_lax_scoped_to_the_ui_and_secure_over_https(client: Any, runtime: Any) -> None:
    secret = create_key(runtime, "test", "bob", "admin")
    page = client.get("/ui/sign-in")
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie
    assert secret not in cookie
    https = make_app(runtime.config["DATABASE_URL"]).test_client()
    secure = https.get("/ui/sign-in", base_url="https://localhost")
    assert "Secure" in secure.headers["Set-Cookie"]


def test_csrf_is_required_on_every_state_changing_request(ui: UI, api: Any) -> None:
    api("post", "/flags", boolean_flag("f1"), 201)
    for path, data in (("/ui/flags/f1/toggle", {"enabled": "0"}), ("/ui/flags/-/new", {"key": "f2"}),
                       ("/ui/sign-out", {}), ("/ui/keys", {"name": "k", "scope": "sdk"})):
        assert ui.post(path, data, csrf=False).status_code == 400, path
        assert ui.post(path, {**data, "csrf_token": "forged"}, csrf=False).status_code == 400, path
    refused = ui.post("/ui/flags/f1/toggle", {"enabled": "0"}, csrf=False, htmx=True)
    assert refused.status_code == 400 and "security token" in refused.text
    assert api("get", "/flags/f1")["enabled"] is True
    assert api("get", "/keys")[-1]["name"] != "k"
    # htmx sends the token as a header (hx-headers on <body>)
    ok = ui.client.post("/ui/flags/f1/toggle", data={"enabled": "0", "fragment": "row"},
                        headers={**HX, "X-CSRF-Token": ui.csrf})
    assert ok.status_code == 200 and api("get", "/flags/f1")["enabled"] is False


def test_the_body_carries_the_token_for_htmx(ui: UI) -> None:
    html = ui.get("/ui/flags").text
    assert f'hx-headers=\'{{"X-CSRF-Token": "{ui.csrf}"}}\'' in html


def test_security_headers_and_no_inline_script(ui: UI) -> None:
    for path in ("/ui/", "/ui/flags", "/ui/sign-in"):
        response = ui.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cache-Control"] == "no-store"
        html = response.text
        assert "<script>" not in html and " on" + "click=" not in html
        assert "https://" not in html  # no CDN: everything is served from here


def test_static_assets_are_vendored(client: Any) -> None:
    htmx = client.get("/static/vendor/htmx-2.0.11.min.js")
    assert htmx.status_code == 200 and b"htmx" in htmx.data[:2000]
    assert client.get("/static/ui/ui.css").status_code == 200
    assert client.get("/static/ui/ui.js").status_code == 200


def test_sign_out_and_revocation_end_the_session(ui: UI, runtime: Any) -> None:
    ui.post("/ui/sign-out", status=303)
    assert ui.get("/ui/flags", status=303).headers["Location"].startswith("/ui/sign-in")
    ui.sign_in("carol")
    ui.get("/ui/flags")
    revoke_key(runtime, "test", "carol")
    gone = ui.get("/ui/flags", status=303)
    assert "reason=revoked" in gone.headers["Location"]
    assert "was revoked" in ui.get(gone.headers["Location"]).text


def test_root_sends_browsers_to_the_ui_and_api_clients_to_the_docs(client: Any) -> None:
    assert client.get("/", headers={"Accept": "text/html,*/*"}).headers["Location"] == "/ui/"
    assert client.get("/", headers={"Accept": "application/json"}).headers["Location"] == "/api/docs"
    assert client.get("/api/docs").status_code == 200


def test_every_page_is_in_an_environment_with_its_colour(ui: UI, api: Any) -> None:
    api("post", "/environments", {"key": "staging", "name": "Staging", "colour": "#1a7f37"}, 201)
    page = ui.get("/ui/flags?env=staging").text
    assert "--env: #1a7f37" in page and "Flags in Staging" in page
    assert 'href="/ui/flags/-/new?env=staging"' in page  # links keep the environment
    assert "--env: #cf222e" in ui.get("/ui/flags").text  # production by default
    assert ui.get("/ui/flags?env=nowhere", status=404).text.count("nowhere") >= 1


def test_a_key_bound_to_an_environment_stays_in_it(client: Any, runtime: Any, api: Any) -> None:
    api("post", "/environments", {"key": "staging"}, 201)
    api("post", "/flags", boolean_flag("f1"), 201)
    browser = UI(client, runtime)
    browser.sign_in("stager", environment="staging")
    assert "Flags in staging" in browser.get("/ui/flags").text  # its own environment by default
    assert "bound to environment" in browser.get("/ui/flags?env=production", status=403).text
    refused = browser.post("/ui/keys?env=staging", {"name": "x", "scope": "sdk"}, status=403)
    assert "affects every environment" in refused.text


def test_auth_off_needs_no_sign_in(database_url: str) -> None:
    app = make_app(database_url, AUTH=False)
    client = app.test_client()
    page = client.get("/ui/flags")
    assert page.status_code == 200 and "anonymous" in page.text
    app.extensions["flagship"].db.dispose()
