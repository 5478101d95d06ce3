"""Replay the language-neutral conformance file: frozen bucket values and evaluation cases."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flagship import Snapshot
from flagship.flags.bucketing import bucket
from flagship.flags.operators import default_operators

FILE = Path(__file__).parent / "conformance" / "evaluation.json"
DOC = json.loads(FILE.read_text(encoding="utf-8"))
SNAPSHOT = Snapshot.from_dict(DOC["snapshot"])


def test_file_is_complete() -> None:
    cases = DOC["cases"]
    used_operators = {
        condition["operator"]
        for document in DOC["snapshot"]["flags"] + DOC["snapshot"]["segments"]
        for condition in document.get("conditions", []) + [
            c for rule in document.get("rules", []) for c in rule.get("conditions", [])]
        if "operator" in condition}
    assert len(DOC["bucketing"]) >= 50
    assert len(cases) >= 40
    assert used_operators == set(default_operators())
    assert {case["expected"]["reason"] for case in cases} == {
        "DISABLED", "TARGETING_MATCH", "SPLIT", "DEFAULT", "ERROR"}
    assert {case["expected"].get("error_code") for case in cases} >= {
        "FLAG_NOT_FOUND", "INVALID_CONTEXT"}


@pytest.mark.parametrize("vector", DOC["bucketing"], ids=lambda v: f"{v['salt']}:{v['key']}"[:40])
def test_bucket_vectors(vector: dict) -> None:
    assert bucket(vector["salt"], vector["key"]) == vector["bucket"]


@pytest.mark.parametrize("case", DOC["cases"], ids=lambda c: f"{c['flag']}: {c['description']}")
def test_cases(case: dict) -> None:
    result = SNAPSHOT.evaluate(case["flag"], case["context"])
    expected = case["expected"]
    assert (result.value, result.variant, result.reason) == (
        expected["value"], expected["variant"], expected["reason"])
    assert type(result.value) is type(expected["value"])  # 19 must not come back as 19.0
    assert result.error_code == expected.get("error_code")


def test_snapshot_document_round_trips() -> None:
    again = Snapshot.from_dict(SNAPSHOT.to_dict())
    assert again.to_dict() == SNAPSHOT.to_dict()
    assert again.revision == DOC["snapshot"]["revision"]
