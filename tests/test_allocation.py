"""Layer bucket allocation."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flagship.errors import ConflictError
from flagship.experiments.allocation import (buckets_for, claim, free_ranges, normalise, resize,
                                             shrink, size)


def test_claim_free_and_conflict():
    a = claim(free_ranges([]), buckets_for(40))
    assert a == [(0, 4000)]
    b = claim(free_ranges([a]), buckets_for(30))
    assert b == [(4000, 7000)] and free_ranges([a, b]) == [(7000, 10000)]
    with pytest.raises(ConflictError, match="30.00% free"):
        claim(free_ranges([a, b]), buckets_for(31))


def test_fragmented_layer_claims_across_gaps():
    a, b, c = [(0, 2000)], [(2000, 5000)], [(5000, 6000)]
    freed = free_ranges([a, c])  # b completed: its buckets return
    assert freed == [(2000, 5000), (6000, 10000)]
    assert claim(freed, 5000) == [(2000, 5000), (6000, 8000)]
    assert size(b) == 3000


def test_resize_shrinks_from_the_top_and_grows_from_free():
    ranges = [(0, 1000), (3000, 4000)]
    assert shrink(ranges, 1500) == [(0, 1000), (3000, 3500)]
    grown = resize(ranges, [[(1000, 3000)]], 2500)
    assert size(grown) == 2500 and grown == [(0, 1000), (3000, 4500)]


@given(st.lists(st.tuples(st.integers(0, 10000), st.integers(0, 10000)), max_size=8))
def test_free_is_the_complement(raw):
    ranges = normalise((min(a, b), max(a, b)) for a, b in raw)
    assert size(ranges) + size(free_ranges([ranges])) == 10000
