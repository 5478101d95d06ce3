"""Prometheus metrics of a flagship process (what `GET /metrics` exposes).

The metric objects live here, outside the HTTP layer, so services and stores can count
what they do. Under `flagship serve` every gunicorn worker writes its values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode) and a scrape of any
worker adds them up; elsewhere (tests, the CLI) they are ordinary in-process metrics.
prometheus-client picks its mode when first imported, so `serve` sets the directory
before anything imports this module.

Label values are bounded: routes are URL rules (templates, not paths), statuses and
reasons are small sets, and flag keys are admitted as labels up to
FLAGSHIP_METRICS_MAX_FLAGS per process, after which they count as `other`.
"""
from __future__ import annotations

import functools
import threading
from typing import Iterable

from prometheus_client import Counter, Gauge, Histogram, values

from flagship import pid

if values.ValueClass is not values.MutexValue:
    # Multiprocess mode asks for the pid on every increment, to notice a fork; a request
    # made about eight getpid() system calls, a few per cent of a single event's CPU.
    # `flagship.pid` answers without one. No metric exists yet (they are all made below),
    # so every value uses this class: the same per-pid files as with the default one.
    values.ValueClass = values.MultiProcessValue(process_identifier=pid.current)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OTHER = "other"

REQUESTS = Counter("flagship_http_requests", "HTTP requests by route template, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("flagship_http_request_duration_seconds",
                    "Latency of the hot endpoints (evaluation, snapshot, assignment, events)",
                    ["route"], buckets=LATENCY_BUCKETS)
EVALUATIONS = Counter("flagship_evaluations", "Flag evaluations served, by flag and reason",
                      ["flag", "reason"])
EVENTS = Counter("flagship_events", "Events received, by outcome (accepted, duplicate, rejected)",
                 ["outcome"])
WRITER_BATCH = Histogram("flagship_writer_batch_size", "Writes merged into one group commit",
                         buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000))
WRITER_COMMIT = Histogram("flagship_writer_commit_seconds", "Duration of one group commit",
                          buckets=LATENCY_BUCKETS)
SNAPSHOT_REBUILDS = Counter("flagship_snapshot_rebuilds", "Compiled snapshots rebuilt, by environment",
                            ["environment"])
SNAPSHOT_REVISION = Gauge("flagship_snapshot_revision", "Store revision of the newest compiled snapshot",
                          multiprocess_mode="max")
AGGREGATION_LAG = Gauge("flagship_aggregation_lag_seconds",
                        "Age of the oldest event not yet aggregated, after the last aggregation round",
                        multiprocess_mode="livemax")
AGGREGATED_ROWS = Counter("flagship_aggregated_rows", "Events and exposures folded into the aggregates")
AGGREGATION_LAST_SUCCESS = Gauge("flagship_aggregation_last_success_timestamp_seconds",
                                 "When an aggregation round last succeeded (Unix time)",
                                 multiprocess_mode="max")
REDIS_DEGRADED = Gauge("flagship_redis_degraded",
                       "1 while Redis is unreachable and sticky assignments are served from SQL",
                       multiprocess_mode="livemax")
ROUND_SECONDS = Histogram("flagship_round_duration_seconds",
                          "Duration of one periodic round (rollouts, schedules, alerts, notifications)",
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
ROUND_FAILURES = Counter("flagship_round_part_failures",
                         "Parts of a periodic round that raised (the others still ran), by part",
                         ["part"])
ROLLOUT_EVALUATIONS = Counter("flagship_rollout_evaluations",
                              "Rollout evaluations by outcome: the decision (hold, advance, "
                              "complete, rollback, ...), skipped (slot already taken) or error",
                              ["outcome"])
SCHEDULED_CHANGES = Counter("flagship_scheduled_changes", "Scheduled flag changes run, by outcome",
                            ["outcome"])
ALERT_CHANGES = Counter("flagship_alert_changes", "Alerts opened or resolved (or rules that failed "
                        "to evaluate), by change", ["change"])
NOTIFICATIONS = Counter("flagship_notifications", "Outbox events handled, by outcome (delivered, "
                        "failed: retried later, abandoned, ...)", ["outcome"])
NOTIFIER_FAILURES = Counter("flagship_notifier_failures", "Notifier calls that raised, by notifier",
                            ["notifier"])


def count_round(report: dict[str, object], seconds: float) -> None:
    """Count what one periodic round did (`flagship.jobs.periodic_round`'s report)."""
    ROUND_SECONDS.observe(seconds)
    for part, value in report.items():
        if value == "error":
            ROUND_FAILURES.labels(part).inc()
    for outcome, n in _tally(report.get("rollouts")).items():
        ROLLOUT_EVALUATIONS.labels(outcome).inc(n)
    for outcome, n in _tally(report.get("notifications")).items():
        if outcome != "claimed" and n:
            NOTIFICATIONS.labels(outcome).inc(n)
    for item in _items(report.get("alerts")):
        ALERT_CHANGES.labels(str(item.get("change"))).inc()
    for item in _items(report.get("scheduled_changes")):
        SCHEDULED_CHANGES.labels(str(item.get("outcome") or item.get("status"))).inc()


def _items(value: object) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _tally(value: object) -> dict[str, int]:
    return {str(k): int(n) for k, n in value.items() if isinstance(n, int)} if isinstance(value, dict) else {}


class FlagLabels:
    """Flag keys admitted as label values: the first `limit` seen, then `other`."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> str:
        if key in self._admitted:
            return key
        with self._lock:
            if len(self._admitted) < self.limit:
                self._admitted.add(key)
                return key
        return OTHER


flag_labels = FlagLabels()


def configure(max_flags: int) -> None:
    """Apply FLAGSHIP_METRICS_MAX_FLAGS (once per process, before serving)."""
    flag_labels.limit = max_flags


def count_evaluations(results: Iterable[tuple[str, str]]) -> None:
    """Count `(flag key, reason)` pairs, one increment per distinct pair."""
    tally: dict[tuple[str, str], int] = {}
    for key, reason in results:
        pair = (flag_labels(key), reason)
        tally[pair] = tally.get(pair, 0) + 1
    for (flag, reason), n in tally.items():
        EVALUATIONS.labels(flag, reason).inc(n)


def count_events(accepted: int, duplicates: int, rejected: int) -> None:
    for outcome, n in (("accepted", accepted), ("duplicate", duplicates), ("rejected", rejected)):
        if n:
            _event_series(outcome).inc(n)


@functools.lru_cache(maxsize=None)
def _event_series(outcome: str) -> Counter:
    return EVENTS.labels(outcome)  # three outcomes; labels() locks and builds a key per call
