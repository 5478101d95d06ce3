"""HTTP endpoints of the experiments domain: one blueprint per area."""
from __future__ import annotations

from flagship.experiments.api import calculator, events, experiments, metrics, results

BLUEPRINTS = (experiments.blp, events.blp, metrics.blp, results.blp, calculator.blp)
