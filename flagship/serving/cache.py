"""The compiled snapshot cache: one revision of the store, compiled once per process."""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from flagship import telemetry
from flagship.db import Database, MetaRecord
from flagship.errors import NotFoundError, ValidationError
from flagship.experiments.store import config as experiment_store
from flagship.flags import store as flag_store
from flagship.flags.operators import with_placeholders
from flagship.flags.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompiledSnapshot:
    """One revision of the store: evaluator, serialized body and its strong ETag."""

    revision: int
    snapshot: Snapshot
    body: bytes
    etag: str


class SnapshotCache:
    """Serves each environment's compiled snapshot, rebuilt when the store revision moves.

    The revision lives in the database, so a change made by another server process (or a
    CLI command) is seen with no message bus: on the next request, or in a serving
    process within `Database.revision_check` seconds (see `Database.snapshot_revision`).
    The revision counts changes in every environment; an environment's ETag covers only its
    own content, so a change elsewhere rebuilds it without changing its ETag.
    """

    def __init__(self, db: Database, operators: dict[str, Any], settle_gc: bool = False) -> None:
        self._db = db
        self._operators = operators
        self._settle_gc = settle_gc
        self._lock = threading.Lock()
        self._current: dict[str, CompiledSnapshot] = {}
        self._warned: set[str] = set()  # operators reported missing (once per process)

    def get(self, environment: str = "production", at_least: int = 0) -> CompiledSnapshot:
        """`environment`'s snapshot at the store's current revision (NotFoundError if unknown);
        `at_least`: a revision the caller knows was committed, so not one older than that."""
        revision = self._db.snapshot_revision(at_least)
        current = self._current.get(environment)
        if current is not None and current.revision == revision:
            return current
        with self._lock:
            current = self._current.get(environment)
            if current is None or current.revision != revision:
                current = self._current[environment] = self._build(environment)
                if self._settle_gc:
                    _settle_gc()
            return current

    def _build(self, environment: str) -> CompiledSnapshot:
        with self._db.session() as session:
            if flag_store.get_environment(session, environment) is None:
                raise NotFoundError(f"environment {environment!r} not found")
            revision = session.execute(
                sa.select(MetaRecord.snapshot_revision).where(MetaRecord.id == 1)).scalar() or 0
            flags, segments = flag_store.all_documents(session, environment)
            layers, experiments = experiment_store.snapshot_documents(session, environment)
        content = {"environment": environment, "flags": flags, "segments": segments,
                   "layers": layers, "experiments": experiments}
        tag = hashlib.sha256(json.dumps(content, separators=(",", ":"), sort_keys=True).encode())
        doc = {"revision": int(revision), **content}
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        etag = '"' + tag.hexdigest()[:40] + '"'
        telemetry.SNAPSHOT_REBUILDS.labels(environment).inc()
        telemetry.SNAPSHOT_REVISION.set(int(revision))
        return CompiledSnapshot(int(revision), self._compile(environment, doc), body, etag)

    def _compile(self, environment: str, doc: dict[str, Any]) -> Snapshot:
        try:
            return Snapshot.from_dict(doc, self._operators)
        except ValidationError:
            # a stored flag may use a plugin's operator that this process has not loaded
            # (written by a process that had it): stand in for it, as the SDK does
            operators, missing = with_placeholders(doc, self._operators)
            if not missing:
                raise
        for name in missing:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("flags in environment %r use operator %r, which no loaded plugin "
                            "provides: they answer ERROR where a condition needs it; load the "
                            "plugin (FLAGSHIP_PLUGINS or its entry point)", environment, name)
        return Snapshot.from_dict(doc, operators)


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
