"""Multiple-comparison adjustments against statsmodels' multipletests."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from flagship.errors import ValidationError
from flagship.experiments.stats import adjust_p_values

METHODS = {"bonferroni": "bonferroni", "holm": "holm", "bh": "fdr_bh", "by": "fdr_by"}


def _p_values(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 40))
    p = np.concatenate([rng.uniform(0, 1, m), rng.uniform(0, 0.01, int(rng.integers(0, 5)))])
    if seed % 4 == 0:  # ties and the ends of the range
        p[: min(3, p.size)] = p[0]
        p = np.append(p, [0.0, 1.0])
    return rng.permutation(p)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("seed", range(36))
def test_matches_multipletests(seed: int, method: str) -> None:
    p = _p_values(seed)
    expected = multipletests(p, method=METHODS[method])[1]
    np.testing.assert_allclose(adjust_p_values(p.tolist(), method), expected, rtol=1e-6,
                               atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.sampled_from(sorted(METHODS)))
def test_adjusted_values_are_valid_and_order_preserving(p: list[float], method: str) -> None:
    adj = np.array(adjust_p_values(p, method))
    raw = np.array(p)
    assert ((adj >= raw - 1e-15) & (adj <= 1)).all()
    order = np.argsort(raw, kind="stable")
    assert (np.diff(adj[order]) >= -1e-15).all()


def test_empty_and_bad_input() -> None:
    assert adjust_p_values([], "holm") == ()
    with pytest.raises(ValidationError):
        adjust_p_values([0.2, 1.2], "bh")
    with pytest.raises(ValidationError):
        adjust_p_values([0.2], "fdr_bh")
