"""Sticky assignments in the SDK: a bounded in-memory store, filled from the server on demand.

The contract (also in the client's docstring):

1. A unit assigned in this process keeps its variant for as long as this process
   remembers the unit (`sticky_capacity` units, least recently used forgotten first),
   and its first assignment is sent to the server as a `$exposure` event, which the
   server stores as the unit's sticky assignment.
2. The first time this process evaluates an active experiment's flag for a unit it
   does not remember, it asks the server for the unit's assignments
   (`GET /api/v1/experiments/user/{unit}`, one round trip) and honours them, so a
   returning unit keeps the variant the server (or another SDK process) gave it, even
   after the experiment's traffic or weights changed.
3. When the client cannot reach the server (status not "ready"), or `sticky_lookup` is
   off, the unit is placed by local hashing, which reproduces the server's assignment
   unless the experiment's traffic or weights changed after the unit's first
   assignment. An exposure queued in another process but not yet delivered is not
   visible to the lookup either (at most `flush_interval` seconds).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from flagship.experiments.assignment import Assignment
from flagship.sdk.transport import Transport, TransportError

USER_PATH = "/api/v1/experiments/user/"


class LruAssignments:
    """An `AssignmentStore` in memory that remembers at most `capacity` units."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._data: OrderedDict[str, dict[str, Assignment]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, unit: str) -> dict[str, str] | None:
        """The unit's variants by experiment, or None when this process does not remember it."""
        with self._lock:
            found = self._data.get(unit)
            if found is None:
                return None
            self._data.move_to_end(unit)
            return {key: a.variant for key, a in found.items()}

    def remember(self, unit: str, assignments: dict[str, Assignment]) -> dict[str, str]:
        """Store assignments learnt from the server (local ones made meanwhile win)."""
        with self._lock:
            mine = self._data.setdefault(unit, {})
            for key, assignment in assignments.items():
                mine.setdefault(key, assignment)
            self._touch(unit)
            return {key: a.variant for key, a in mine.items()}

    def for_unit(self, unit: str) -> dict[str, Assignment]:
        """Every assignment of `unit` this process remembers, by experiment key."""
        with self._lock:
            return dict(self._data.get(unit, {}))

    def assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        """Keep `assignment` unless the unit has one in that experiment; (in force, created)."""
        with self._lock:
            mine = self._data.setdefault(assignment.unit, {})
            existing = mine.get(assignment.experiment)
            if existing is None:
                mine[assignment.experiment] = assignment
            self._touch(assignment.unit)
            return (existing, False) if existing is not None else (assignment, True)

    def _touch(self, unit: str) -> None:
        self._data.move_to_end(unit)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def after_fork(self) -> None:
        """A fresh lock in a forked child (the data is still valid there)."""
        self._lock = threading.Lock()


def fetch_assignments(transport: Transport, unit: str, timeout: float) -> dict[str, Assignment] | None:
    """The unit's assignments held by the server, or None when it could not say."""
    try:
        response = transport.request("GET", USER_PATH + quote(unit, safe=""), timeout=timeout)
    except TransportError:
        return None
    if response.status == 404:
        return {}  # e.g. a unit containing "/" that the route cannot name: nothing known
    if response.status != 200:
        return None
    try:
        return {a["experiment"]: _assignment(a, unit) for a in response.json()["assignments"]}
    except (ValueError, KeyError, TypeError):
        return None


def _assignment(doc: dict[str, Any], unit: str) -> Assignment:
    try:
        assigned = datetime.fromisoformat(doc.get("assigned_at") or "")
    except ValueError:
        assigned = datetime.now(timezone.utc)
    return Assignment(str(doc["experiment"]), unit, str(doc["variant"]), str(doc.get("layer", "")),
                      assigned)
