"""schemathesis over the whole OpenAPI document: no 5xx, and every status and body as documented.

A fixed seed and a few examples per operation keep it under a minute; it runs on SQLite
(the PostgreSQL-specific 500s have their own regression tests in test_hardening.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.conftest import boolean_flag, make_app

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def conformance_app(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Any]:
    """One app for the whole run, with an object of each kind for the fuzzer to hit."""
    path = tmp_path_factory.mktemp("conformance") / "flagship.db"
    shutil.copy(sqlite_template, path)
    app = make_app(f"sqlite:///{path}")
    from flagship.auth import create_key

    secret = create_key(app.extensions["flagship"], "test", "conformance", "admin")
    app.config["CONFORMANCE_HEADERS"] = {"Authorization": f"Bearer {secret}"}
    client = app.test_client()
    headers = app.config["CONFORMANCE_HEADERS"]
    client.post("/api/v1/flags", json=boolean_flag("string"), headers=headers)
    client.post("/api/v1/layers", json={"key": "string"}, headers=headers)
    client.post("/api/v1/metrics", json={"key": "string", "event": "e", "kind": "count"}, headers=headers)
    yield app
    app.extensions["flagship"].db.dispose()


def _operations(app: Any) -> list[Any]:
    loaded = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    return [op for op in (result.ok() for result in loaded.get_all_operations()) if not _is_stream(op)]


def _is_stream(operation: Any) -> bool:
    # Server-sent event streams stay open for seconds per example: their own tests
    # (tests/test_stream*.py) cover them.
    return any("text/event-stream" in (response.get("content") or {})
               for response in operation.definition.raw.get("responses", {}).values())


def test_every_operation_answers_as_documented(conformance_app: Any) -> None:
    headers = conformance_app.config["CONFORMANCE_HEADERS"]
    operations = _operations(conformance_app)
    assert len(operations) > 60
    failures = []
    for operation in operations:
        @settings(max_examples=3, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            check()
        except BaseException as error:  # noqa: BLE001 - collected: one report for every operation
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            failures.append(f"{operation.label}: {str(error)[:1500]}")
    assert not failures, "\n\n".join(failures)
