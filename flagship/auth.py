"""API keys: creation, hashed storage, verification and revocation."""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Any

from flagship import store
from flagship.db import as_utc
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.runtime import Runtime
from flagship.store import ApiKeyRecord

SCOPES = ("admin", "sdk")
KEY_PREFIX = "fsk"
KEY_CACHE_SECONDS = 1.0
Found = tuple[str, str, "str | None"]  # name, scope, environment (None: every environment)


class KeyCache:
    """Verified keys, remembered for one second per process.

    A key lookup was a third of the cost of a single-event request. Revoking in this
    process clears the cache at once; another process's revocation takes effect within
    `KEY_CACHE_SECONDS`.
    """

    def __init__(self, ttl: float = KEY_CACHE_SECONDS, limit: int = 10_000) -> None:
        self.ttl, self.limit = ttl, limit
        self._hits: dict[str, tuple[float, Found]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Found | None:
        hit = self._hits.get(digest)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, digest: str, found: Found) -> None:
        with self._lock:
            if len(self._hits) > self.limit:  # bounded: many distinct keys just means more lookups
                self._hits.clear()
            self._hits[digest] = (time.monotonic() + self.ttl, found)

    def clear(self) -> None:
        with self._lock:
            self._hits.clear()


def hash_key(secret: str) -> str:
    """Keys are 192-bit random tokens, so a plain SHA-256 is a safe, fast lookup hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_to_dict(record: ApiKeyRecord) -> dict[str, Any]:
    """Public view of a key (never the secret)."""
    return {"name": record.name, "scope": record.scope, "environment": record.environment,
            "prefix": record.prefix,
            "created_at": as_utc(record.created_at).isoformat(), "created_by": record.created_by,
            "revoked_at": as_utc(record.revoked_at).isoformat() if record.revoked_at else None}


def create_key(runtime: Runtime, actor: str, name: str, scope: str,
               secret: str | None = None, environment: str | None = None) -> str:
    """Store a new key and return its secret (shown once, never again).

    An SDK key is bound to one environment (the default one unless given); an admin key
    works in every environment unless bound to one.
    """
    from flagship.flags import store as flag_store

    if scope not in SCOPES:
        raise ValidationError(f"must be one of {', '.join(SCOPES)}", field="scope")
    if not name or len(name) > 128:
        raise ValidationError("must be 1 to 128 characters", field="name")
    if scope == "sdk" and environment is None:
        environment = runtime.config["DEFAULT_ENVIRONMENT"]
    secret = secret or f"{KEY_PREFIX}_{scope}_{secrets.token_urlsafe(24)}"
    with runtime.change(actor) as tx:
        if environment is not None and flag_store.get_environment(tx.session, environment) is None:
            raise ValidationError(f"no environment {environment!r}", field="environment")
        if store.get_key(tx.session, name) is not None:
            raise ConflictError(f"an API key named {name!r} already exists")
        record = ApiKeyRecord(name=name, scope=scope, prefix=secret[:12], key_hash=hash_key(secret),
                              created_at=tx.now, created_by=actor, environment=environment)
        tx.session.add(record)
        tx.session.flush()
        tx.audit("api_key.create", "api_key", name, None, key_to_dict(record), environment=environment)
    return secret


def get_key(runtime: Runtime, name: str) -> dict[str, Any]:
    """One key's public view, or NotFoundError."""
    with runtime.db.session() as session:
        record = store.get_key(session, name)
        if record is None:
            raise NotFoundError(f"no API key named {name!r}")
        return key_to_dict(record)


def list_keys(runtime: Runtime) -> list[dict[str, Any]]:
    """Every key, revoked ones included, oldest first."""
    with runtime.db.session() as session:
        return [key_to_dict(row) for row in store.all_keys(session)]


def revoke_key(runtime: Runtime, actor: str, name: str) -> dict[str, Any]:
    """Revoke a key by name; it stops working at once.

    The last live admin key that works in every environment (the kind that manages keys)
    cannot be revoked: that would lock everyone out (create another one first)."""
    with runtime.change(actor) as tx:
        record = store.get_key(tx.session, name)
        if record is None:
            raise NotFoundError(f"no API key named {name!r}")
        before = key_to_dict(record)
        if (record.revoked_at is None and record.scope == "admin" and record.environment is None
                and store.count_live_keys(tx.session, "admin", unbound=True) <= 1):
            raise ConflictError(f"{name!r} is the last admin key that works in every environment; "
                                "revoking it would lock everyone out: create another admin key "
                                "first", {"name": ["last unrestricted admin key"]})
        if record.revoked_at is None:
            record.revoked_at = tx.now
            tx.audit("api_key.revoke", "api_key", name, before, key_to_dict(record))
        runtime.keys.clear()
        return key_to_dict(record)


def verify_key(runtime: Runtime, secret: str) -> Found | None:
    """(name, scope, environment) of the live key with this secret, or None (cached)."""
    digest = hash_key(secret)
    found = runtime.keys.get(digest)
    if found is not None:
        return found
    with runtime.db.engine.connect() as conn:
        found = store.live_key(conn, digest)
    if found is not None:
        runtime.keys.put(digest, found)
    return found


def count_live_keys(runtime: Runtime, scope: str | None = None) -> int:
    """How many unrevoked keys exist (optionally of one scope)."""
    with runtime.db.session() as session:
        return store.count_live_keys(session, scope)
