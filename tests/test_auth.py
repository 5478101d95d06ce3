"""API keys: scopes, 401/403, hashed storage, revocation."""
from __future__ import annotations

import sqlalchemy as sa

from flagship.auth import create_key, hash_key
from flagship.store import ApiKeyRecord


def test_missing_and_bad_keys_are_401(client):
    response = client.get("/api/v1/flags")
    assert response.status_code == 401 and response.json["code"] == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert client.get("/api/v1/flags", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/v1/flags", headers={"Authorization": "Basic abc"}).status_code == 401


def test_sdk_key_reads_snapshot_and_evaluates_but_cannot_administer(client, sdk):
    assert client.get("/api/v1/sdk/snapshot", headers=sdk).status_code == 200
    assert client.post("/api/v1/evaluate", json={"context": {}}, headers=sdk).status_code == 200
    forbidden = client.post("/api/v1/flags", json={}, headers=sdk)
    assert forbidden.status_code == 403 and "admin" in forbidden.json["message"]
    assert client.get("/api/v1/audit", headers=sdk).status_code == 403


def test_keys_are_stored_hashed_and_revocable(client, runtime, admin):
    secret = create_key(runtime, "test", "svc", "sdk")
    with runtime.db.session() as session:
        stored = session.execute(sa.select(ApiKeyRecord).where(ApiKeyRecord.name == "svc")).scalar_one()
        assert stored.key_hash == hash_key(secret) and secret not in stored.key_hash
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/sdk/snapshot", headers=headers).status_code == 200
    listed = client.get("/api/v1/keys", headers=admin).json
    assert {k["name"] for k in listed} == {"test-admin", "svc"}
    assert all("key" not in k for k in listed)
    assert client.delete("/api/v1/keys/svc", headers=admin).json["revoked_at"]
    assert client.get("/api/v1/sdk/snapshot", headers=headers).status_code == 401
    assert client.delete("/api/v1/keys/nope", headers=admin).status_code == 404


def test_key_api_create_returns_secret_once(client, admin):
    created = client.post("/api/v1/keys", json={"name": "ci", "scope": "sdk"}, headers=admin)
    assert created.status_code == 201 and created.json["key"].startswith("fsk_sdk_")
    assert client.post("/api/v1/keys", json={"name": "ci", "scope": "sdk"}, headers=admin).status_code == 409
    assert client.post("/api/v1/keys", json={"name": "x", "scope": "root"}, headers=admin).status_code == 422
    actions = [e["action"] for e in client.get("/api/v1/audit?target_type=api_key", headers=admin).json["items"]]
    assert actions[0] == "api_key.create"


def test_a_key_whose_name_holds_a_slash_can_be_revoked(client, runtime, admin):
    """`slash/name` was accepted, but /keys/slash/name matched no route: never revocable."""
    secret = create_key(runtime, "test", "team/svc", "sdk")
    assert client.delete("/api/v1/keys/team/svc", headers=admin).json["revoked_at"]
    assert client.get("/api/v1/sdk/snapshot", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
