"""API keys: creation, hashed storage, verification and revocation."""
from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

from flagship.db import as_utc
from flagship.errors import ConflictError, NotFoundError, ValidationError
from flagship.runtime import Runtime

SCOPES = ("admin", "sdk")
KEY_PREFIX = "fsk"


class ApiKeyRecord(SQLModel, table=True):
    """An API key; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(sa.String(128), unique=True, nullable=False))
    scope: str
    prefix: str  # first characters of the key, to recognise it in listings
    key_hash: str = Field(sa_column=Column(sa.String(64), unique=True, nullable=False))
    created_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    created_by: str
    revoked_at: Optional[datetime] = Field(default=None, sa_column=Column(sa.DateTime(timezone=True)))


def hash_key(secret: str) -> str:
    """Keys are 192-bit random tokens, so a plain SHA-256 is a safe, fast lookup hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_to_dict(record: ApiKeyRecord) -> dict[str, Any]:
    """Public view of a key (never the secret)."""
    return {"name": record.name, "scope": record.scope, "prefix": record.prefix,
            "created_at": as_utc(record.created_at).isoformat(), "created_by": record.created_by,
            "revoked_at": as_utc(record.revoked_at).isoformat() if record.revoked_at else None}


def create_key(runtime: Runtime, actor: str, name: str, scope: str,
               secret: str | None = None) -> str:
    """Store a new key and return its secret (shown once, never again)."""
    if scope not in SCOPES:
        raise ValidationError(f"must be one of {', '.join(SCOPES)}", field="scope")
    if not name or len(name) > 128:
        raise ValidationError("must be 1 to 128 characters", field="name")
    secret = secret or f"{KEY_PREFIX}_{scope}_{secrets.token_urlsafe(24)}"
    with runtime.change(actor) as tx:
        exists = tx.session.execute(
            sa.select(ApiKeyRecord.id).where(ApiKeyRecord.name == name)).first()
        if exists:
            raise ConflictError(f"an API key named {name!r} already exists")
        record = ApiKeyRecord(name=name, scope=scope, prefix=secret[:12], key_hash=hash_key(secret),
                              created_at=tx.now, created_by=actor)
        tx.session.add(record)
        tx.session.flush()
        tx.audit("api_key.create", "api_key", name, None, key_to_dict(record))
    return secret


def list_keys(runtime: Runtime) -> list[dict[str, Any]]:
    """Every key, revoked ones included, oldest first."""
    with runtime.db.session() as session:
        rows = session.execute(sa.select(ApiKeyRecord).order_by(ApiKeyRecord.id)).scalars().all()
        return [key_to_dict(row) for row in rows]


def revoke_key(runtime: Runtime, actor: str, name: str) -> dict[str, Any]:
    """Revoke a key by name; it stops working at once."""
    with runtime.change(actor) as tx:
        record = tx.session.execute(
            sa.select(ApiKeyRecord).where(ApiKeyRecord.name == name)).scalar_one_or_none()
        if record is None:
            raise NotFoundError(f"no API key named {name!r}")
        before = key_to_dict(record)
        if record.revoked_at is None:
            record.revoked_at = tx.now
            tx.audit("api_key.revoke", "api_key", name, before, key_to_dict(record))
        runtime.caches.pop("api_keys", None)
        return key_to_dict(record)


KEY_CACHE_SECONDS = 1.0


def verify_key(runtime: Runtime, secret: str) -> tuple[str, str] | None:
    """(name, scope) of the live key with this secret, or None.

    A successful lookup is cached for one second per process: it was a third of the
    cost of a single-event request. Revoking in this process clears the cache at once;
    another process's revocation takes effect within the second.
    """
    digest = hash_key(secret)
    cache: dict[str, tuple[float, tuple[str, str]]] = runtime.caches.setdefault("api_keys", {})
    hit = cache.get(digest)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1]
    found = _lookup(runtime, digest)
    if found is not None:
        if len(cache) > 10_000:  # bounded: many distinct keys just means more lookups
            cache.clear()
        cache[digest] = (now + KEY_CACHE_SECONDS, found)
    return found


def _lookup(runtime: Runtime, digest: str) -> tuple[str, str] | None:
    with runtime.db.engine.connect() as conn:
        row = conn.execute(
            sa.select(ApiKeyRecord.name, ApiKeyRecord.scope)
            .where(ApiKeyRecord.key_hash == digest, ApiKeyRecord.revoked_at.is_(None))
        ).first()
    return (row[0], row[1]) if row else None


def count_live_keys(runtime: Runtime, scope: str | None = None) -> int:
    """How many unrevoked keys exist (optionally of one scope)."""
    query = sa.select(sa.func.count(ApiKeyRecord.id)).where(ApiKeyRecord.revoked_at.is_(None))
    if scope:
        query = query.where(ApiKeyRecord.scope == scope)
    with runtime.db.session() as session:
        return int(session.execute(query).scalar_one())
