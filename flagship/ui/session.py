"""Signing in with an admin API key, the session cookie, CSRF, and the UI's error pages.

The session (a cookie signed with FLAGSHIP_SECRET_KEY) holds the key's *name*, never the
secret; every request looks the key up again, so revoking it ends the session at once.
Names are unique and never reused, so the name identifies the key for good.
"""
from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, abort, g, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from htmx_flask import make_response as hx_response
from werkzeug.exceptions import HTTPException

from flagship import auth
from flagship.errors import FlagshipError, NotFoundError
from flagship.ui.base import (bp, csrf_token, environments, redirect_to, render,
                              resolve_environment, runtime, status_of)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OPEN_ENDPOINTS = ("ui.sign_in",)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


class UISessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, marked Secure whenever the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def init_session(app: Flask) -> None:
    app.session_interface = UISessionInterface()
    app.config.update(SESSION_COOKIE_NAME="flagship_ui", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/ui",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=12))


@bp.context_processor
def _template_context() -> dict[str, Any]:
    return {"signed_in_as": g.get("key_name"),
            "current_env": g.get("env"), "environments": environments() if "env" in g else []}


@bp.before_request
def _guard() -> Any:
    _check_csrf()
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if not runtime().config["AUTH"]:
        g.key_name, g.key_environment, g.actor = "anonymous", None, "ui:anonymous"
    elif not _load_key():
        return _to_sign_in()
    resolve_environment()
    return None


def _check_csrf() -> None:
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form's security token is missing or out of date: reload the page and "
                   "try again")


def _load_key() -> bool:
    """Re-verify the signed-in key (revoked or deleted keys end the session)."""
    name = session.get("key_name")
    if not name:
        return False
    try:
        key = auth.get_key(runtime(), name)
    except NotFoundError:
        key = None
    if key is None or key["revoked_at"] is not None or key["scope"] != "admin":
        session.pop("key_name", None)
        g.signed_out_reason = "revoked"
        return False
    g.key_name, g.key_environment, g.actor = name, key["environment"], f"ui:{name}"
    return True


def _to_sign_in() -> Any:
    reason = "revoked" if g.get("signed_out_reason") else None
    target = url_for("ui.sign_in", reason=reason,
                     next=request.full_path.rstrip("?") if request.method == "GET" else None)
    if request.headers.get("HX-Request"):
        return hx_response("", 401, redirect=target)
    return redirect_to(target)


def _safe_next(value: str | None) -> str:
    """Only a path inside the UI (no open redirect to another site)."""
    if not value:
        return url_for("ui.home")
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/"):
        return url_for("ui.home")
    return value.rstrip("?")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """Sign in with an admin API key (the secret is checked, then forgotten)."""
    error = None
    if request.method == "POST":
        secret = (request.form.get("key") or "").strip()
        found = auth.verify_key(runtime(), secret) if secret else None
        if found is None:
            error = "That is not a live API key."
        elif found[1] != "admin":
            error = f"{found[0]!r} is an {found[1]} key: the UI needs an admin key."
        else:
            session.clear()
            session.permanent = True
            session["key_name"] = found[0]
            csrf_token()
            return redirect_to(_safe_next(request.form.get("next")))
    reason = request.args.get("reason")
    return render("ui/sign_in.html", error=error, next=request.values.get("next", ""),
                  reason=reason, status=401 if error else 200)


@bp.route("/sign-out", methods=["POST"])
def sign_out() -> Any:
    """Forget the session (the key itself stays valid: revoke it under API keys)."""
    session.clear()
    return redirect_to(url_for("ui.sign_in", reason="signed-out"))


@bp.errorhandler(FlagshipError)
def _service_error(error: FlagshipError) -> Any:
    return render("ui/error.html", "ui/_error.html", status=status_of(error),
                  title="Not possible", message=error.message)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Any:
    return render("ui/error.html", "ui/_error.html", status=error.code or 500,
                  title=error.name, message=error.description)
