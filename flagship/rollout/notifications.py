"""Notifications: the outbox dispatcher, webhooks (CRUD, signing, delivery log).

Producers write events into the outbox inside the transaction that caused them
(`Tx.emit`; every audit record becomes one too), so an event exists exactly when its change
committed. `dispatch` (a periodic job) offers each pending event to every `notify`
implementation, one by one (`flagship.plugins.call_notifiers`): when all succeed the event
is delivered; otherwise it stays pending with the names of the notifiers that failed and is
offered again, to those only, after an exponential backoff. Delivery is at least once; the
event id is the receivers' idempotency key.

The built-in `webhooks` notifier (`flagship.plugins.default_notifiers`) calls
`deliver_to_webhooks`: one signed POST per matching webhook, each attempt in the delivery
log; a webhook that answered 2xx for an event is never sent it again, so one failing
webhook makes only itself retry.
"""
from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError

from flagship.db import as_utc
from flagship.errors import ConflictError, FlagshipError, NotFoundError, ValidationError
from flagship.flags import store as flag_store
from flagship.plugins import call_notifiers
from flagship.rollout import notify_store as store
from flagship.rollout.notify_store import WebhookDeliveryRecord, WebhookRecord
from flagship.runtime import Runtime

log = logging.getLogger(__name__)

BACKOFF_BASE = 10.0  # seconds before the first retry; doubles per attempt
BACKOFF_CAP = 3600.0  # never wait longer than an hour between attempts
LEASE_SECONDS = 300.0  # a claimed event is another dispatcher's again after this (a crash)
MAX_ATTEMPTS = 30  # ~1 day of retries; then the event is given up (delivered_at + failed)
KEEP_DAYS = 7  # delivered events are pruned after this
KEEP_DELIVERY_LOG_DAYS = 30
WEBHOOK_TIMEOUT = 5.0
SECRET_PREFIX = "whsec_"
PATTERN = re.compile(r"^[A-Za-z0-9_.*-]{1,64}$")
_EDITABLE = ("name", "url", "event_types", "environment", "enabled", "secret")


class WebhookDeliveryError(FlagshipError):
    """Some webhooks did not accept an event; the dispatcher retries those later."""


def _iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat() if value else None


# -- webhooks ------------------------------------------------------------------------------------

def webhook_view(record: WebhookRecord, secret: bool = False) -> dict[str, Any]:
    """The API form of a webhook; the secret only when asked (the create response)."""
    view = {"id": record.id, "name": record.name, "url": record.url,
            "event_types": list(record.event_types), "environment": record.environment,
            "enabled": record.enabled, "version": record.version,
            "created_at": _iso(record.created_at), "created_by": record.created_by,
            "updated_at": _iso(record.updated_at), "updated_by": record.updated_by}
    if secret:
        view["secret"] = record.secret
    return view


def delivery_view(record: WebhookDeliveryRecord) -> dict[str, Any]:
    """The API form of one delivery attempt."""
    return {"id": record.id, "webhook_id": record.webhook_id, "event_id": record.event_id,
            "type": record.type, "attempt": record.attempt, "ok": record.ok,
            "status_code": record.status_code, "error": record.error,
            "duration_ms": record.duration_ms, "attempted_at": _iso(record.attempted_at)}


def check_url(url: Any) -> str:
    """An absolute http(s) URL with a host (422 naming `url` otherwise)."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise ValidationError("must be an http:// or https:// URL of at most 2048 characters", field="url")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValidationError(f"must not contain spaces or control characters, got {url!r}", field="url")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # both parse lazily: a bad bracket or port raises
    except ValueError as err:
        raise ValidationError(f"is not a valid URL ({err}), got {url!r}", field="url") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValidationError(f"must be an http:// or https:// URL with a host, got {url!r}", field="url")
    if parts.fragment:
        raise ValidationError("must not have a #fragment (it is never sent)", field="url")
    return url


def check_patterns(patterns: Any) -> list[str]:
    """Event-type patterns: exact types or `*` wildcards (`rollout.*`, `*`)."""
    if not isinstance(patterns, list) or not patterns or len(patterns) > 50:
        raise ValidationError("must be a list of 1 to 50 event types or patterns like 'rollout.*'",
                              field="event_types")
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not PATTERN.match(pattern):
            raise ValidationError(f"must be an event type or a pattern with '*' (letters, digits, "
                                  f"'.', '_', '-'), got {pattern!r}", field=f"event_types.{index}")
    return list(dict.fromkeys(patterns))


def matches(patterns: Sequence[str], environment: str | None, event: Mapping[str, Any]) -> bool:
    """Whether a webhook with these patterns and environment filter wants `event`."""
    if environment is not None and event.get("environment") != environment:
        return False
    kind = str(event.get("type", ""))
    return any(fnmatch.fnmatchcase(kind, pattern) for pattern in patterns)


def _check_secret(secret: Any) -> str:
    if not isinstance(secret, str) or not 16 <= len(secret) <= 256:
        raise ValidationError("must be 16 to 256 characters", field="secret")
    return secret


def check_webhook(session: Any, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The editable fields a webhook document gives, checked (ValidationError naming the field)."""
    out: dict[str, Any] = {}
    for name in doc:
        if name not in _EDITABLE:
            raise ValidationError(f"unknown field; allowed: {', '.join(_EDITABLE)}", field=name)
    if "name" in doc:
        if not isinstance(doc["name"], str) or not 1 <= len(doc["name"]) <= 128:
            raise ValidationError("must be 1 to 128 characters", field="name")
        out["name"] = doc["name"]
    if "url" in doc:
        out["url"] = check_url(doc["url"])
    if "event_types" in doc:
        out["event_types"] = check_patterns(doc["event_types"])
    if doc.get("environment") is not None:
        if flag_store.get_environment(session, doc["environment"]) is None:
            raise ValidationError(f"no environment {doc['environment']!r}", field="environment")
    if "environment" in doc:
        out["environment"] = doc["environment"]
    if "enabled" in doc:
        if not isinstance(doc["enabled"], bool):
            raise ValidationError("must be true or false", field="enabled")
        out["enabled"] = doc["enabled"]
    if doc.get("secret") is not None:
        out["secret"] = _check_secret(doc["secret"])
    return out


def create_webhook(runtime: Runtime, actor: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Store a webhook; the response carries its signing secret (generated unless given),
    the only time it is shown."""
    for required in ("name", "url", "event_types"):
        if required not in doc:
            raise ValidationError("required", field=required)
    try:
        with runtime.change(actor) as tx:
            values = check_webhook(tx.session, doc)
            if store.webhook_by_name(tx.session, values["name"]) is not None:
                raise ConflictError(f"a webhook named {values['name']!r} already exists",
                                    {"name": ["already exists"]})
            values.setdefault("secret", f"{SECRET_PREFIX}{secrets.token_urlsafe(32)}")
            record = WebhookRecord(**values, version=1, created_at=tx.now, created_by=actor,
                                   updated_at=tx.now, updated_by=actor)
            tx.session.add(record)
            tx.session.flush()
            tx.audit("webhook.create", "webhook", record.name, None, webhook_view(record))
            return webhook_view(record, secret=True)
    except IntegrityError:  # a concurrent create of the same name won
        raise ConflictError(f"a webhook named {doc.get('name')!r} already exists",
                            {"name": ["already exists"]}) from None


def _require_webhook(session: Any, webhook_id: int) -> WebhookRecord:
    record = store.get_webhook(session, webhook_id)
    if record is None:
        raise NotFoundError(f"webhook {webhook_id} not found")
    return record


def list_webhooks(runtime: Runtime) -> list[dict[str, Any]]:
    """Every webhook (never their secrets)."""
    with runtime.db.session() as session:
        return [webhook_view(r) for r in store.webhooks(session)]


def get_webhook(runtime: Runtime, webhook_id: int) -> dict[str, Any]:
    with runtime.db.session() as session:
        return webhook_view(_require_webhook(session, webhook_id))


def update_webhook(runtime: Runtime, actor: str, webhook_id: int, patch: Mapping[str, Any],
                   expected: int | None = None) -> dict[str, Any]:
    """Change some fields (a new `secret` replaces the old one and is not echoed back)."""
    with runtime.change(actor) as tx:
        record = _require_webhook(tx.session, webhook_id)
        if expected is not None and expected != record.version:
            raise ConflictError(f"webhook {webhook_id} is at version {record.version}, not {expected}",
                                {"version": [f"current version is {record.version}"]})
        values = check_webhook(tx.session, patch)
        if "name" in values and values["name"] != record.name:
            if store.webhook_by_name(tx.session, values["name"]) is not None:
                raise ConflictError(f"a webhook named {values['name']!r} already exists",
                                    {"name": ["already exists"]})
        before = webhook_view(record)
        for name, value in values.items():
            setattr(record, name, value)
        record.version += 1
        record.updated_at, record.updated_by = tx.now, actor
        tx.session.flush()
        after = webhook_view(record)
        tx.audit("webhook.update", "webhook", record.name, before,
                 {**after, "secret_rotated": "secret" in values})
        return after


def delete_webhook(runtime: Runtime, actor: str, webhook_id: int) -> None:
    """Delete a webhook and its delivery log; its pending events are not sent to it."""
    with runtime.change(actor) as tx:
        record = _require_webhook(tx.session, webhook_id)
        tx.audit("webhook.delete", "webhook", record.name, webhook_view(record), None)
        tx.session.execute(WebhookDeliveryRecord.__table__.delete()
                           .where(WebhookDeliveryRecord.webhook_id == webhook_id))
        tx.session.delete(record)


def list_deliveries(runtime: Runtime, webhook_id: int, page: int = 1,
                    per_page: int = 50) -> tuple[list[dict[str, Any]], int]:
    """A webhook's delivery attempts, newest first."""
    with runtime.db.session() as session:
        _require_webhook(session, webhook_id)
        rows, total = store.deliveries(session, webhook_id, (page - 1) * per_page, per_page)
        return [delivery_view(r) for r in rows], total


# -- delivery to webhooks (the built-in `webhooks` notifier) --------------------------------------

def sign(secret: str, body: bytes) -> str:
    """The `X-Flagship-Signature` header value: `sha256=<hex HMAC-SHA256 of the body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer (not delivered), not a hop: the body would be lost


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class PostResult:
    """What one POST got back."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> PostResult:
    """POST `body`; 2xx is delivered, anything else (other status, timeout, refused) is not."""
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    started = time.perf_counter()
    status, error = None, None
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status = response.status
            response.read(65536)
    except urllib.error.HTTPError as err:
        status, error = err.code, f"HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        error = f"{type(reason).__name__}: {reason}"
    elapsed = round((time.perf_counter() - started) * 1000.0, 2)
    ok = status is not None and 200 <= status < 300
    if not ok and error is None:
        error = f"HTTP {status}"
    return PostResult(ok, status, error, elapsed)


def event_body(event: Mapping[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed) for an event."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _targets(runtime: Runtime,
             event: Mapping[str, Any]) -> tuple[list[WebhookRecord], dict[int, tuple[int, bool]]]:
    at = event.get("at")
    happened = as_utc(datetime.fromisoformat(at)) if isinstance(at, str) else None
    with runtime.db.session() as session:
        hooks = [w for w in store.webhooks(session, enabled_only=True)
                 if matches(w.event_types, w.environment, event)
                 and (happened is None or as_utc(w.created_at) <= happened)]
        return hooks, store.delivery_state(session, str(event["id"]))


def deliver_to_webhooks(runtime: Runtime, event: Mapping[str, Any], timeout: float | None = None) -> int:
    """POST `event` to every enabled webhook that wants it and has not accepted it yet (only
    webhooks that existed when it happened); log each attempt. Returns the number delivered
    now; raises WebhookDeliveryError naming the webhooks that failed (retried later)."""
    hooks, state = _targets(runtime, event)
    body = event_body(event)
    timeout = timeout or WEBHOOK_TIMEOUT
    delivered, failures = 0, []
    for hook in hooks:
        attempts, done = state.get(hook.id or 0, (0, False))
        if done:
            continue
        headers = {"Content-Type": "application/json", "User-Agent": "flagship-webhooks/1",
                   "X-Flagship-Event": str(event.get("type", "")),
                   "X-Flagship-Delivery": str(event["id"]),
                   "X-Flagship-Signature": sign(hook.secret, body)}
        result = post(hook.url, body, headers, timeout)
        with runtime.db.write() as session:
            session.add(WebhookDeliveryRecord(
                webhook_id=hook.id, event_id=str(event["id"]), type=str(event.get("type", "")),
                attempt=attempts + 1, ok=result.ok, status_code=result.status_code,
                error=result.error, duration_ms=result.duration_ms, attempted_at=runtime.clock()))
        if result.ok:
            delivered += 1
        else:
            failures.append(f"webhook {hook.id} ({hook.name}): {result.error}")
    if failures:
        raise WebhookDeliveryError(f"{len(failures)} of {len(hooks)} webhooks failed: " + "; ".join(failures))
    return delivered


# -- the dispatcher ---------------------------------------------------------------------------------

def backoff(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: 10 s, 20 s, 40 s ... at most 1 h."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class _Claim:
    row_id: int
    attempts: int  # after this claim
    event: dict[str, Any]
    failed: dict[str, str]
    previous_due: datetime | None


def _claim(runtime: Runtime, now: datetime, limit: int) -> list[_Claim]:
    with runtime.db.write() as session:
        claims = []
        for row in store.due_events(session, now, limit):
            if store.claim_event(session, row.id, row.attempts, now + timedelta(seconds=LEASE_SECONDS)):
                event = {"id": row.event_id, "type": row.type, "at": as_utc(row.at).isoformat(),
                         "environment": row.environment, **(row.payload or {})}
                claims.append(_Claim(row.id, row.attempts + 1, event, dict(row.failed or {}),
                                     row.next_attempt_at))
        return claims


def _finish(runtime: Runtime, claim: _Claim, failures: dict[str, str], now: datetime,
            max_attempts: int) -> str:
    if not failures:
        values: dict[str, Any] = {"delivered_at": now, "failed": None, "next_attempt_at": None}
        outcome = "delivered"
    elif claim.attempts >= max_attempts:
        values, outcome = {"delivered_at": now, "failed": failures, "next_attempt_at": None}, "abandoned"
        log.error("giving up event %s (%s) after %d attempts: %s", claim.event["id"],
                  claim.event["type"], claim.attempts, failures)
    else:
        values = {"failed": failures, "next_attempt_at": now + timedelta(seconds=backoff(claim.attempts))}
        outcome = "failed"
    with runtime.db.write() as session:
        if not store.finish_event(session, claim.row_id, claim.attempts, values):
            return "stale"  # our lease ran out and another dispatcher took the event
    return outcome


def _release(runtime: Runtime, claim: _Claim) -> None:
    """Hand back a claimed event that this round had no time for (no attempt counted)."""
    with runtime.db.write() as session:
        store.finish_event(session, claim.row_id, claim.attempts,
                           {"attempts": claim.attempts - 1, "next_attempt_at": claim.previous_due})


def _prune(runtime: Runtime, now: datetime, keep_days: float) -> int:
    with runtime.db.write() as session:
        pruned = store.prune_events(session, now - timedelta(days=keep_days))
        store.prune_deliveries(session, now - timedelta(days=max(keep_days, KEEP_DELIVERY_LOG_DAYS)))
        return pruned


def dispatch(runtime: Runtime, now: datetime | None = None, limit: int = 200, budget: float = 30.0,
             keep_days: float = KEEP_DAYS, max_attempts: int = MAX_ATTEMPTS,
             prune: bool = True) -> dict[str, int]:
    """Deliver due outbox events to the notifiers (a periodic job; safe in several processes).

    Each event is claimed by compare-and-set on its attempt count, offered to every notifier
    (or, on a retry, only to those that failed), then marked delivered or rescheduled with
    backoff; events still failing after `max_attempts` are given up (kept, with their
    failures, until pruned). Work stops after `budget` seconds (unstarted claims are handed
    back). `prune` deletes events delivered more than `keep_days` ago (and delivery-log rows
    older than 30 days): a scan of the outbox, so a caller that dispatches every few seconds
    may prune less often. Returns counts by outcome."""
    now = now or runtime.clock()
    counts = {"claimed": 0, "delivered": 0, "failed": 0, "abandoned": 0, "stale": 0, "released": 0,
              "pruned": 0}
    started = time.monotonic()
    claims = _claim(runtime, now, limit)
    counts["claimed"] = len(claims)
    for index, claim in enumerate(claims):
        if time.monotonic() - started > budget:
            for rest in claims[index:]:
                _release(runtime, rest)
            counts["released"] = len(claims) - index
            break
        try:
            failures = call_notifiers(runtime.plugins, claim.event, only=list(claim.failed) or None,
                                      runtime=runtime)
            counts[_finish(runtime, claim, failures, now, max_attempts)] += 1
        except Exception:  # noqa: BLE001 - one bad row never stops the round (its lease expires)
            log.exception("delivering event %s failed", claim.event.get("id"))
    if prune:
        counts["pruned"] = _prune(runtime, now, keep_days)
    return counts


def pending_events(runtime: Runtime, limit: int = 1000) -> list[dict[str, Any]]:
    """Undelivered outbox events, oldest first: id, type, attempts, failed notifiers, next attempt."""
    with runtime.db.session() as session:
        return [{"event_id": r.event_id, "type": r.type, "attempts": r.attempts, "failed": r.failed,
                 "next_attempt_at": _iso(r.next_attempt_at)} for r in store.pending_events(session, limit)]
