"""Sticky assignment records and the store interface (pure: the SDK uses it too).

Server stores (SQL, Redis) are in `flagship/experiments/store/assignments.py`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Assignment:
    """A unit's persisted place in an experiment."""

    experiment: str
    unit: str
    variant: str
    layer: str
    assigned_at: datetime
    epoch: int = 1  # the experiment's weight epoch when the unit was assigned

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "unit": self.unit, "variant": self.variant,
                "layer": self.layer, "assigned_at": self.assigned_at.isoformat()}


class AssignmentStore(Protocol):
    """Where sticky assignments live."""

    def for_unit(self, unit: str) -> dict[str, Assignment]:
        """Every assignment of `unit`, by experiment key."""

    def assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        """Store `assignment` unless the unit already has one in that experiment.

        Returns the assignment in force and whether this call created it.
        """


class MemoryAssignments:
    """In-process store (SDK clients and tests)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Assignment]] = {}
        self._lock = threading.Lock()

    def for_unit(self, unit: str) -> dict[str, Assignment]:
        return dict(self._data.get(unit, {}))

    def assign(self, assignment: Assignment) -> tuple[Assignment, bool]:
        with self._lock:
            mine = self._data.setdefault(assignment.unit, {})
            existing = mine.get(assignment.experiment)
            if existing is not None:
                return existing, False
            mine[assignment.experiment] = assignment
            return assignment, True


