"""The UI blueprint and what every view shares: the environment it is in, rendering a page
or its fragment, form errors, and the security headers of every UI response."""
from __future__ import annotations

import functools
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable

from flask import (Blueprint, Flask, abort, current_app, g, render_template, request, session,
                   url_for)
from htmx_flask import make_response as hx_response

from flagship import environments as environment_service
from flagship.api import MAX_PAGE
from flagship.errors import (AuthenticationError, ConflictError, FlagshipError, NotFoundError,
                             PermissionDeniedError, ValidationError)
from flagship.experiments import report
from flagship.runtime import Runtime

bp = Blueprint("ui", __name__, url_prefix="/ui")

HTMX_VERSION = "2.0.11"
# Scripts only from our own origin (no inline JS, no eval); styles may be inline because
# environment colours and the shared SVG charts set a few style attributes.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-store"}


def runtime() -> Runtime:
    """The app's runtime (services take it as their first argument)."""
    return current_app.extensions["flagship"]


def actor() -> str:
    """Who acts: `ui:<key name>`, so every change made here is attributed in the audit log."""
    return g.actor


# -- environments -------------------------------------------------------------------------

def environments() -> list[dict[str, Any]]:
    """Every environment (read once per request)."""
    if "environments" not in g:
        g.environments = environment_service.list_environments(runtime())
    return g.environments


def env() -> str:
    """The key of the environment this request is in."""
    return g.env["key"]


def resolve_environment() -> None:
    """Pick the request's environment: `?env=`, else the key's own, else the default; a key
    bound to one environment may not look at another."""
    bound = g.get("key_environment")
    wanted = request.args.get("env") or bound or runtime().config["DEFAULT_ENVIRONMENT"]
    if bound is not None and wanted != bound:
        abort(403, f"your API key is bound to environment {bound!r}; it cannot use {wanted!r}")
    found = next((e for e in environments() if e["key"] == wanted), None)
    if found is None:
        abort(404, f"there is no environment {wanted!r}")
    g.env = found


def require_unbound(what: str) -> None:
    """Changes that reach every environment need a key bound to none (as in the API)."""
    bound = g.get("key_environment")
    if bound is not None:
        raise PermissionDeniedError(f"{what} affects every environment: your key is bound to "
                                    f"{bound!r}")


def link(endpoint: str, **values: Any) -> str:
    """A URL in the current environment (`?env=` on every link keeps pages linkable)."""
    if "env" not in values and "env" in g:
        values["env"] = g.env["key"]
    kept = tuple(sorted((k, v) for k, v in values.items() if v is not None and v != ""))
    try:
        return _built(request.script_root, endpoint, kept)
    except TypeError:  # an unhashable value: build it the slow way
        return url_for(endpoint, **dict(kept))


@functools.lru_cache(maxsize=8192)
def _built(script_root: str, endpoint: str, values: tuple[tuple[str, Any], ...]) -> str:
    # url_for costs ~0.1 ms; a list page has hundreds of links, most of them repeated
    return url_for(endpoint, **dict(values))


# -- rendering ----------------------------------------------------------------------------

def page_arg() -> int:
    """`?page=` of a list, 1 to the API's MAX_PAGE (a larger one overflowed SQLite's OFFSET:
    a 500)."""
    return min(max(1, request.args.get("page", 1, type=int) or 1), MAX_PAGE)


def wants_fragment() -> bool:
    """An htmx request for part of a page (not a boosted navigation or a history restore)."""
    hx = getattr(request, "htmx", None)
    return bool(hx) and not hx.boosted and not hx.history_restore_request


def render(template: str, fragment: str | None = None, /, status: int = 200, **context: Any) -> Any:
    """The page, or its fragment for an htmx request; both from the same context."""
    name = fragment if fragment is not None and wants_fragment() else template
    return render_template(name, **context), status


def redirect_to(url: str) -> Any:
    """After a successful POST: a 303 for a browser form, HX-Redirect for htmx."""
    if wants_fragment():
        return hx_response("", redirect=url)
    return current_app.redirect(url, 303)


def flash_message(text: str) -> None:
    """A one-line confirmation shown on the next page (role=status)."""
    from flask import flash

    flash(text)


@dataclass
class Errors:
    """What went wrong with a submitted form: a message and messages per field path.

    Field paths are the API's (`rules.0.conditions.1.values`) and the form's input names
    are the same paths, so every message lands next to the input that caused it.
    """

    message: str = ""
    fields: dict[str, list[str]] = field(default_factory=dict)
    stale: dict[str, Any] | None = None  # the current object when a version was stale
    status: int = 422  # the HTTP status the API gives the same error

    def __bool__(self) -> bool:
        return bool(self.message or self.fields)

    @property
    def http_status(self) -> int:
        """200 when nothing went wrong, 409 for a stale version, else the error's status."""
        if not self:
            return 200
        return 409 if self.stale else self.status

    def at(self, path: str) -> list[str]:
        """Messages about `path` or anything below it."""
        prefix = path + "."
        return [m for p, msgs in self.fields.items() if p == path or p.startswith(prefix)
                for m in msgs]

    def add(self, path: str, message: str) -> None:
        self.fields.setdefault(path, []).append(message)
        self.message = self.message or "Some fields need attention."

    def fold(self, path: str) -> Errors:
        """Move messages about paths below `path` onto `path`, each naming its full path:
        one textarea holds a whole document (a policy as JSON, a list of event types), so
        `policy.steps.0.percent: must be above 0` is shown next to it."""
        for below in [p for p in self.fields if p.startswith(path + ".")]:
            for message in self.fields.pop(below):
                self.fields.setdefault(path, []).append(f"{below}: {message}")
        return self


def errors_from(error: FlagshipError) -> Errors:
    """Errors of a service exception, keyed by the field paths it names."""
    fields: dict[str, list[str]] = {}
    for path, messages in _flatten(error.errors):
        fields.setdefault(path, []).extend(str(m) for m in messages)
    if isinstance(error, ValidationError):
        message = error.errors and "Some fields need attention." or error.message
    else:
        message = error.message
    return Errors(message=message, fields=fields, status=status_of(error))


def _flatten(errors: Any, path: str = "") -> Iterable[tuple[str, list[Any]]]:
    if isinstance(errors, dict):
        for key, value in errors.items():
            yield from _flatten(value, f"{path}.{key}" if path else str(key))
    elif isinstance(errors, list):
        yield path, errors
    else:
        yield path, [errors]


def is_stale(error: FlagshipError) -> bool:
    """A 409 because the object changed since the form was loaded."""
    return isinstance(error, ConflictError) and ("version" in error.errors
                                                  or "changed by someone else" in error.message)


STATUS = {ValidationError: 422, NotFoundError: 404, ConflictError: 409,
          AuthenticationError: 401, PermissionDeniedError: 403}


def status_of(error: FlagshipError) -> int:
    """The HTTP status the API gives the same error."""
    return next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)


# -- headers and template helpers ---------------------------------------------------------

@bp.after_request
def _security_headers(response: Any) -> Any:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def install_filters(app: Flask) -> None:
    """Number formats shared with the HTML report (one escaping, one way to print a p-value)."""
    app.jinja_env.filters.update(num=report._num, signed=report._signed, pct=report._pct,
                                 pval=report._pval, when=report._when, jsonish=format_value,
                                 jsontext=json_text, duration=duration_text)
    app.jinja_env.globals.update(link=link, fid=field_id, htmx_version=HTMX_VERSION,
                                 csrf_token=csrf_token)


def csrf_token() -> str:
    """This session's CSRF token (made on first use); forms and htmx send it back."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def field_id(path: str) -> str:
    """The id of the input whose name is `path` (dots are awkward in CSS selectors)."""
    return "f-" + path.replace(".", "-")


def json_text(value: Any) -> str:
    """JSON as plain text (autoescaped where it is shown, unlike Flask's `tojson`)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def duration_text(seconds: Any) -> str:
    """Seconds as a policy writes them: `5400` -> `1h30m`, `0.5` -> `0.5s`."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "—"
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    whole, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def format_value(value: Any) -> str:
    """A JSON value as one would type it in a form (see `forms.parse_value`)."""
    from flagship.ui.forms import parse_value

    if isinstance(value, str):
        return value if parse_value(value) == value else json.dumps(value)
    return json.dumps(value)
