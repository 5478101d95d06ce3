"""Multiple-comparison adjustment of p-values (family-wise error and false discovery rate)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from flagship.errors import ValidationError

AdjustMethod = Literal["bonferroni", "holm", "bh", "by"]
ADJUST_METHODS: tuple[str, ...] = ("bonferroni", "holm", "bh", "by")


def adjust_p_values(p_values: Sequence[float] | np.ndarray,
                    method: AdjustMethod) -> tuple[float, ...]:
    """Adjusted p-values in input order: Bonferroni, Holm, Benjamini-Hochberg or -Yekutieli."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValidationError("must be a flat list of p-values", field="p_values")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValidationError("every p-value must be in [0, 1]", field="p_values")
    if method not in ADJUST_METHODS:
        raise ValidationError(f"must be one of {', '.join(ADJUST_METHODS)}", field="method")
    m = p.size
    if m == 0:
        return ()
    if method == "bonferroni":
        return tuple(float(v) for v in np.minimum(p * m, 1.0))
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        # Step-down: the i-th smallest is tested at alpha / (m - i); a later rank can never be
        # more significant than an earlier one, hence the running maximum.
        adj = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        # Step-up: p_(i) * m / i, made monotone from the largest rank down.
        factor = m / np.arange(1, m + 1)
        if method == "by":
            # Yekutieli's harmonic factor keeps FDR control under arbitrary dependence.
            factor = factor * np.sum(1.0 / np.arange(1, m + 1))
        adj = np.minimum.accumulate((ranked * factor)[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return tuple(float(v) for v in out)
