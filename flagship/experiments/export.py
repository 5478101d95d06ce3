"""Export one experiment's data to a standalone SQLite file (Datasette, pandas, sqlite3)."""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from flagship.experiments.model import Experiment, Metric, metric_to_dict
from flagship.experiments.service import load
from flagship.experiments.store import config, reads
from flagship.experiments.store.sums import COUNTERS
from flagship.experiments.store.tables import ExperimentRecord
from flagship.runtime import Runtime

BATCH = 5_000  # rows fetched from the store, and handed to sqlite-utils, at a time
INDEXES = {"assignments": [["variant"]], "events": [["unit"], ["event"]],
           "unit_metrics": [["unit"], ["metric", "variant"]]}


def schema() -> dict[str, tuple[dict[str, type], Any, list[tuple[str, str, str]]]]:
    """Output tables: columns, primary key, foreign keys (for Datasette's links)."""
    counters: dict[str, type] = {c: int if c.endswith("_count") else float for c in COUNTERS}
    return {
        "experiment": ({"key": str, "name": str, "status": str, "flag": str, "layer": str,
                        "hypothesis": str, "started_at": str, "ended_at": str, "version": int,
                        "config": str, "weight_epochs": str, "exported_at": str}, "key", []),
        "metrics": ({"key": str, "name": str, "event": str, "kind": str, "denominator_event": str,
                     "direction": str, "winsorize_percentile": float, "description": str,
                     "success": bool, "guardrail": bool, "guardrail_margin": float}, "key", []),
        "assignments": ({"unit": str, "variant": str, "epoch": int, "assigned_at": str}, "unit", []),
        "events": ({"event_id": str, "unit": str, "event": str, "value": float, "timestamp": str,
                    "received_at": str, "properties": str}, "event_id",
                   [("unit", "assignments", "unit")]),
        "unit_metrics": ({"metric": str, "unit": str, "variant": str, "value": float,
                          "pre_value": float, **counters}, ("metric", "unit"),
                         [("metric", "metrics", "key"), ("unit", "assignments", "unit")]),
    }


def _experiment_row(experiment: Experiment, record: ExperimentRecord, now: datetime) -> dict[str, Any]:
    return {"key": record.key, "name": experiment.name, "status": record.status, "flag": record.flag_key,
            "layer": record.layer_key, "hypothesis": experiment.hypothesis,
            "started_at": reads._iso(record.started_at), "ended_at": reads._iso(record.ended_at),
            "version": record.version, "config": json.dumps(record.document),
            "weight_epochs": json.dumps(record.epochs or []), "exported_at": reads._iso(now)}


def _metric_rows(metrics: list[Metric], experiment: Experiment) -> Iterator[dict[str, Any]]:
    margins = experiment.guardrail_margins
    for m in metrics:
        yield {**metric_to_dict(m), "success": m.key in experiment.success_metrics,
               "guardrail": m.key in margins, "guardrail_margin": margins.get(m.key)}


def _read_view(runtime: Runtime) -> Any:
    """One read transaction, so the tables agree with each other while ingestion goes on."""
    conn = runtime.db.engine.connect()
    if not runtime.db.is_sqlite:  # SQLite's read transaction is already a snapshot (WAL)
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def _fill(out: Any, conn: Any, experiment: Experiment, record: ExperimentRecord, now: datetime) -> None:
    found = config.metrics_by_key(conn, experiment.metric_keys)
    metrics = [found[k] for k in experiment.metric_keys if k in found]
    for name, (columns, pk, foreign_keys) in schema().items():
        out[name].create(columns, pk=pk, foreign_keys=foreign_keys)
    out["experiment"].insert(_experiment_row(experiment, record, now))
    out["metrics"].insert_all(_metric_rows(metrics, experiment))
    out["assignments"].insert_all(reads.export_assignments(conn, record.key, BATCH), batch_size=BATCH)
    out["events"].insert_all(reads.export_events(conn, record.key, BATCH), batch_size=BATCH)
    for metric in metrics:
        out["unit_metrics"].insert_all(reads.export_unit_rows(conn, record.key, metric, BATCH),
                                       batch_size=BATCH)
    for name, indexes in INDEXES.items():  # built after the load: faster than maintained during it
        for columns in indexes:
            out[name].create_index(columns)


def export_experiment(runtime: Runtime, key: str, path: Path) -> dict[str, int]:
    """Write the experiment's data to a new SQLite file at `path`; return rows per table.

    Per-unit aggregates are brought up to date first (this is a command, not a read).
    """
    import sqlite_utils

    from flagship.experiments.store.aggregates import catch_up

    experiment, record = load(runtime, key)  # NotFoundError first, before a possibly long catch-up
    catch_up(runtime.db, late_after=float(runtime.config["EVENT_LATE_SECONDS"]))
    # built beside the target and renamed into place: a failed export never leaves a
    # half-written file, and --overwrite keeps the old file until the new one is complete
    scratch = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        out = sqlite_utils.Database(scratch, recreate=True)
        try:
            with _read_view(runtime) as conn, conn.begin(), out.atomic():
                _fill(out, conn, experiment, record, runtime.clock())
            counts = {name: out[name].count for name in ("assignments", "events", "unit_metrics", "metrics")}
        finally:
            out.close()
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return counts
