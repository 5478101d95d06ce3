"""flagship: feature flags, experiments and progressive delivery.

Importing this package stays cheap and pure: only the evaluation core is exposed here,
so the SDK and benchmarks never pull in Flask, SQL or Redis.
"""
from flagship.flags.snapshot import Snapshot, Evaluation

__all__ = ["Snapshot", "Evaluation"]
__version__ = "0.1.0"
