"""HTTP endpoints of the experiments domain: one blueprint per area."""
from __future__ import annotations

from flagship.experiments.api import calculator, events, experiments, metrics, reports

BLUEPRINTS = (experiments.blp, events.blp, metrics.blp, reports.blp, calculator.blp)
