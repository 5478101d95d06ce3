"""The compiled snapshot cache: one revision of the store, compiled once per process."""
from __future__ import annotations

import gc
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from flagship.db import Database, MetaRecord
from flagship.experiments.store import config as experiment_store
from flagship.flags import store as flag_store
from flagship.flags.snapshot import Snapshot


@dataclass(frozen=True)
class CompiledSnapshot:
    """One revision of the store: evaluator, serialized body and its strong ETag."""

    revision: int
    snapshot: Snapshot
    body: bytes
    etag: str


class SnapshotCache:
    """Serves the compiled snapshot; one primary-key read per call checks freshness.

    The revision lives in the database, so a change made by another server process
    (or a CLI command) is seen on the very next request, with no message bus.
    """

    def __init__(self, db: Database, operators: dict[str, Any], settle_gc: bool = False) -> None:
        self._db = db
        self._operators = operators
        self._settle_gc = settle_gc
        self._lock = threading.Lock()
        self._current: CompiledSnapshot | None = None

    def get(self) -> CompiledSnapshot:
        """The snapshot at the store's current revision."""
        revision = self._db.read_snapshot_revision()
        current = self._current
        if current is not None and current.revision == revision:
            return current
        with self._lock:
            current = self._current
            if current is None or current.revision != revision:
                current = self._current = self._build()
                if self._settle_gc:
                    _settle_gc()
            return current

    def _build(self) -> CompiledSnapshot:
        with self._db.session() as session:
            revision = session.execute(
                sa.select(MetaRecord.snapshot_revision).where(MetaRecord.id == 1)).scalar() or 0
            flags, segments = flag_store.all_documents(session)
            layers, experiments = experiment_store.snapshot_documents(session)
        doc = {"revision": int(revision), "flags": flags, "segments": segments,
               "layers": layers, "experiments": experiments}
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
        return CompiledSnapshot(int(revision), Snapshot.from_dict(doc, self._operators), body, etag)


def _settle_gc() -> None:
    """Keep the cyclic GC from rescanning the compiled snapshot on every full collection.

    A snapshot of thousands of flags is hundreds of thousands of long-lived objects; a
    full collection walking them stalls every request for tens of milliseconds (it was
    the whole p99 of /evaluate). After a rebuild: unfreeze, collect (the old snapshot and
    any cycles go), and freeze what is left, so it is no longer scanned.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
