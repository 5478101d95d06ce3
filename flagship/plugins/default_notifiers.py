"""The built-in notifiers as plugins: `log` (one log line per event) and `webhooks` (signed
POSTs to the configured webhooks, implemented in `flagship.rollout.notifications`).

They are two plugin objects, registered under their own names, so the dispatcher retries
each on its own: a webhook that is down never makes the log line repeat.
"""
from __future__ import annotations

import logging
from typing import Any

from flagship.hookspecs import hookimpl

logger = logging.getLogger("flagship.notify")


class LogNotifier:
    """Logs one line per event on the `flagship.notify` logger."""

    @hookimpl
    def notify(self, event: dict[str, Any]) -> None:
        logger.info("event %s %s environment=%s actor=%s", event.get("type"), event.get("id"),
                 event.get("environment"), event.get("actor"))

    def __repr__(self) -> str:
        return "flagship.plugins.default_notifiers:log"


class WebhookNotifier:
    """POSTs each event to the enabled webhooks whose patterns and environment match it."""

    @hookimpl
    def notify(self, event: dict[str, Any], runtime: Any) -> None:
        if runtime is None:  # no database to find webhooks in (a bare plugin-manager call)
            return
        from flagship.rollout.notifications import deliver_to_webhooks

        deliver_to_webhooks(runtime, event)

    def __repr__(self) -> str:
        return "flagship.plugins.default_notifiers:webhooks"


log = LogNotifier()
webhooks = WebhookNotifier()
