"""Bucket allocation inside a layer: pure functions over half-open ranges of buckets.

A layer has 10,000 buckets. Each active experiment owns a set of disjoint
``(start, end)`` ranges; what no experiment owns is the layer's free share.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from flagship.errors import ConflictError
from flagship.flags.bucketing import BUCKETS

Range = tuple[int, int]


def size(ranges: Iterable[Sequence[int]]) -> int:
    """Number of buckets in `ranges`."""
    return sum(end - start for start, end in ranges)


def normalise(ranges: Iterable[Sequence[int]]) -> list[Range]:
    """Sorted, merged, non-empty ranges."""
    merged: list[Range] = []
    for start, end in sorted((int(s), int(e)) for s, e in ranges if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def free_ranges(taken: Iterable[Iterable[Sequence[int]]]) -> list[Range]:
    """The complement of every experiment's ranges in [0, BUCKETS)."""
    used = normalise(r for ranges in taken for r in ranges)
    free, cursor = [], 0
    for start, end in used:
        if start > cursor:
            free.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < BUCKETS:
        free.append((cursor, BUCKETS))
    return free


def buckets_for(percentage: float) -> int:
    """Buckets that `percentage` of a layer means (0.01 % resolution)."""
    return int(round(percentage * 100))


def claim(free: Sequence[Range], count: int) -> list[Range]:
    """Take `count` buckets from the lowest free ranges (ConflictError if too few)."""
    available = size(free)
    if count > available:
        raise ConflictError(
            f"the layer has {available / 100:.2f}% free, {count / 100:.2f}% requested",
            {"traffic_percentage": [f"only {available / 100:.2f}% of the layer is free"]})
    taken: list[Range] = []
    for start, end in free:
        if count <= 0:
            break
        take = min(count, end - start)
        taken.append((start, start + take))
        count -= take
    return normalise(taken)


def shrink(ranges: Sequence[Range], count: int) -> list[Range]:
    """Keep the first `count` buckets of `ranges`, giving back the highest ones."""
    kept: list[Range] = []
    for start, end in normalise(ranges):
        if count <= 0:
            break
        take = min(count, end - start)
        kept.append((start, start + take))
        count -= take
    return kept


def resize(ranges: Sequence[Range], others: Iterable[Iterable[Sequence[int]]],
           count: int) -> list[Range]:
    """Grow (from the layer's free buckets) or shrink `ranges` to exactly `count` buckets."""
    current = size(ranges)
    if count <= current:
        return shrink(ranges, count)
    extra = claim(free_ranges([*others, ranges]), count - current)
    return normalise([*ranges, *extra])
