"""HTTP endpoints of the rollout domain: rollouts and templates, alerts, webhooks, schedules."""
from __future__ import annotations

from flagship.rollout.api import alerts, rollouts, schedules, webhooks

BLUEPRINTS = [rollouts.blp, alerts.blp, webhooks.blp, schedules.blp]
