"""Deterministic bucketing: a unit key and a salt map to one of 10,000 buckets.

Changing anything here reshuffles every user of every rollout, so the golden vectors in
``tests/test_bucketing.py`` and ``tests/conformance/evaluation.json`` pin it down.
"""
from __future__ import annotations

import math
from typing import Any

import mmh3

BUCKETS = 10000


def bucket(salt: str, unit_key: str) -> int:
    """Return the bucket (0..9999) of `unit_key` under `salt`: murmur3 x86_32 of UTF-8 "salt:key"."""
    return mmh3.hash(f"{salt}:{unit_key}", 0, signed=False) % BUCKETS


def threshold(percentage: float) -> int:
    """Return the number of buckets (out of 10,000) that a percentage covers."""
    return round(percentage * 100)


def in_rollout(bucket: int, percentage: float) -> bool:
    """Return whether a bucket falls inside a rollout of `percentage` (0..100) percent."""
    # Buckets below the threshold are in, so raising the percentage only ever adds units.
    return bucket < round(percentage * 100)


def check_percentage(value: Any) -> float:
    """Validate a rollout percentage (a number 0..100 with at most 2 decimals) and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"percentage must be a number between 0 and 100, got {value!r}")
    if not 0 <= value <= 100:
        raise ValueError(f"percentage must be between 0 and 100, got {value!r}")
    # 10,000 buckets give 0.01 % steps; a finer value would be silently rounded.
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ValueError(f"percentage {value!r} has more than 2 decimals; "
                         "the rollout resolution is 0.01")
    return value
