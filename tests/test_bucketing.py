"""Bucketing: golden vectors (a change reshuffles every user), uniformity, monotonic rollouts."""
from __future__ import annotations

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chi2_contingency, chisquare

from flagship.flags.bucketing import BUCKETS, bucket, check_percentage, in_rollout, threshold

# Frozen when bucketing was first written; never regenerate these from the code.
GOLDEN = [
    ("new-checkout", "user-1", 631),
    ("new-checkout", "user-2", 789),
    ("new-checkout", "42", 9673),
    ("pricing", "alice@example.com", 5099),
    ("pricing", "", 7992),
    ("layer-home", "用户-7", 5732),
    ("flag.with.dots", "🚀", 6895),
    ("", "", 7430),
    ("s", "a:b", 7964),
]


@pytest.mark.parametrize(("salt", "key", "expected"), GOLDEN)
def test_golden_vectors(salt: str, key: str, expected: int) -> None:
    assert bucket(salt, key) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("", 0), ("test", 0xBA6BD213), ("Hello, world!", 0xC0363E43),
    ("The quick brown fox jumps over the lazy dog", 0x2E4FF723),
])
def test_hash_is_murmur3_x86_32_of_utf8(text: str, expected: int) -> None:
    # Published reference values: other SDKs must reproduce exactly this function.
    assert mmh3.hash(text, 0, signed=False) == expected
    assert mmh3.hash(text.encode("utf-8"), 0, signed=False) == expected


def test_salt_and_key_are_joined_with_a_colon() -> None:
    assert bucket("s", "a:b") == bucket("s:a", "b")
    assert bucket("flag", "user") == mmh3.hash("flag:user", 0, signed=False) % BUCKETS


def test_buckets_are_uniform() -> None:
    cells = [0] * 100
    for i in range(100_000):
        cells[bucket("uniformity", f"user-{i}") // 100] += 1
    # The keys are fixed, so this p-value is a constant (about 0.97), not a coin flip.
    assert chisquare(cells).pvalue > 0.01


def test_different_salts_hash_independently() -> None:
    table = [[0, 0], [0, 0]]
    for i in range(20_000):
        key = f"user-{i}"
        table[bucket("layer-a", key) < 5000][bucket("layer-b", key) < 5000] += 1
    assert chi2_contingency(table).pvalue > 0.01


@given(salt=st.text(max_size=20), key=st.text(max_size=40),
       p1=st.integers(0, 10_000), p2=st.integers(0, 10_000))
def test_raising_a_percentage_never_removes_a_unit(salt: str, key: str, p1: int, p2: int) -> None:
    low, high = sorted((p1 / 100, p2 / 100))
    unit_bucket = bucket(salt, key)
    assert 0 <= unit_bucket < BUCKETS
    if in_rollout(unit_bucket, low):
        assert in_rollout(unit_bucket, high)


def test_rollout_edges() -> None:
    assert not in_rollout(0, 0)
    assert in_rollout(9999, 100)
    assert in_rollout(0, 0.01) and not in_rollout(1, 0.01)
    assert in_rollout(3332, 33.33) and not in_rollout(3333, 33.33)
    assert threshold(33.33) == 3333


@pytest.mark.parametrize("value", [0, 0.01, 12.5, 33.33, 99.99, 100])
def test_valid_percentages(value: float) -> None:
    assert check_percentage(value) == value


@pytest.mark.parametrize(("value", "message"), [
    (33.333, "more than 2 decimals"), (0.001, "more than 2 decimals"),
    (-1, "between 0 and 100"), (100.01, "between 0 and 100"),
    (True, "must be a number"), ("50", "must be a number"), (float("nan"), "must be a number"),
])
def test_invalid_percentages(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_percentage(value)
