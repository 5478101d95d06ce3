"""In-process periodic work for the embedded default (no worker service needed)."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `task` every `interval` seconds on a daemon thread until stopped.

    A failing run is logged and the next one happens on schedule: background upkeep must
    never take the server down.
    """

    def __init__(self, name: str, interval: float, task: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.task = task
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> None:
        try:
            self.task()
        except Exception:  # noqa: BLE001 - logged; the next tick retries
            log.exception("background task %s failed", self.name)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()
