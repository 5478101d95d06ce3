"""The analysis of an experiment as pure functions: per-variant statistics, comparisons,
sequential looks, the sample-ratio verdict and the decision (no SQL, no Flask)."""
