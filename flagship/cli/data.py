"""`flagship events import` and `flagship experiments export`: bulk data into and out of the store.

Registered onto the `flagship` group by `flagship.cli`; this module never imports it (no
cycle). Heavy imports (SQLAlchemy, numpy, sqlite-utils) stay inside the functions that
use them, so `flagship --help` and the other commands start as fast as before.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

import click


if TYPE_CHECKING:
    import sqlalchemy as sa
    import sqlite_utils

    from flagship.experiments.metrics import Metric
    from flagship.runtime import Runtime

CHUNK = 5_000  # events per ingest() call: one transaction each, half the API's batch limit
MAX_CHUNK = 10_000  # the API's default FLAGSHIP_MAX_EVENT_BATCH
EXPORT_BATCH = 5_000  # rows fetched from the store, and handed to sqlite-utils, at a time
EXAMPLES = 5  # rejected lines shown on stderr when they are not written to --rejects


class Refused(click.ClickException):
    """A request the user can fix and retry: exit status 2, like bad usage, without the usage text."""

    exit_code = 2


def _runtime() -> Runtime:
    """The runtime from FLAGSHIP_* settings, built as the other commands build it."""
    from flagship.cli import make_cli_runtime

    return make_cli_runtime()


# -- events import --------------------------------------------------------------------------------

class Rejects:
    """Rejected lines: counted, written to the --rejects file, the first few kept for the summary."""

    def __init__(self, out: IO[str] | None) -> None:
        self.out = out
        self.count = 0
        self.examples: list[str] = []

    def add(self, line: int, raw: bytes, errors: dict[str, Any]) -> None:
        self.count += 1
        if self.out is not None:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.out.write(json.dumps({"line": line, "errors": errors, "text": text}) + "\n")
        if len(self.examples) < EXAMPLES:
            field, messages = next(iter(errors.items()))
            self.examples.append(f"line {line}: {field}: {messages[0]}")


def _parse(raw: bytes) -> tuple[Any, dict[str, list[str]] | None]:
    """The line's JSON value, or the errors that reject it."""
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as exc:
        return None, {"json": [f"not valid JSON: {exc.msg} at column {exc.colno}"]}
    except (ValueError, RecursionError) as exc:  # not UTF-8, or nested too deeply
        return None, {"json": [f"not valid JSON: {exc or type(exc).__name__}"]}


class Importer:
    """Feeds parsed lines to `ingest()` in chunks and maps its rejections back to file lines."""

    def __init__(self, runtime: Runtime, rejects: Rejects, chunk: int = CHUNK) -> None:
        self.runtime = runtime
        self.rejects = rejects
        self.chunk = chunk
        self.accepted = 0
        self.duplicates = 0
        self.pending: list[tuple[int, bytes, Any]] = []  # (line number, raw line, parsed item)

    def feed(self, line: int, raw: bytes) -> None:
        """Take one 1-based file line; a full chunk is sent at once."""
        if not raw.strip():
            return  # blank lines (a trailing one, say) carry no event
        item, errors = _parse(raw)
        if errors:
            self.rejects.add(line, raw, errors)
            return
        self.pending.append((line, raw, item))
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        """Send what is pending; returns after it is committed."""
        from flagship.experiments.ingest import ingest

        if not self.pending:
            return
        result = ingest(self.runtime, [item for _, _, item in self.pending])
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        for rejection in result.rejected:
            line, raw, _ = self.pending[rejection["index"]]
            self.rejects.add(line, raw, rejection["errors"])
        self.pending = []


def _size(stream: IO[bytes]) -> int | None:
    """The byte size of a regular file; None for a pipe or a terminal."""
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # in-memory streams have no descriptor
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _progress(stream: IO[bytes], quiet: bool) -> Any:
    """A bar over the bytes read, on stderr; a pulsing byte count when the size is unknown."""
    size = _size(stream)
    # click wants an iterable or a length; this bar is advanced by hand, never iterated, and
    # a generator (unlike iter(())) has no length hint, which click would take for the size
    return click.progressbar(None if size is not None else (_ for _ in ()), length=size,
                             label="importing", show_pos=size is None, hidden=quiet,
                             file=sys.stderr)


def _summarise(importer: Importer, rejects_written: bool) -> None:
    rejects = importer.rejects
    if rejects.count and not rejects_written:
        for example in rejects.examples:
            click.echo(f"  {example}", err=True)
        if rejects.count > len(rejects.examples):
            click.echo(f"  ... {rejects.count - len(rejects.examples)} more; --rejects PATH "
                       "writes them all", err=True)
    click.echo(f"accepted {importer.accepted}, duplicates {importer.duplicates}, "
               f"rejected {rejects.count}", err=True)


@click.group()
def events() -> None:
    """Bulk event commands."""


@events.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--rejects", "rejects_file", type=click.File("w", encoding="utf-8", lazy=False),
              help="Write each rejected line as JSON: {line, errors, text}.")
@click.option("--batch-size", type=click.IntRange(1, MAX_CHUNK), default=CHUNK, show_default=True,
              help="Events per transaction.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (the summary is still printed).")
def events_import(file: IO[bytes], rejects_file: IO[str] | None, batch_size: int, quiet: bool) -> None:
    """Load JSON Lines events from FILE (- for stdin), validated as the API validates them.

    One event per line, as POST /api/v1/experiments/events takes it, sent in batches of
    --batch-size events. An event_id already stored counts as a duplicate, so re-running
    an import whose lines carry event_ids is safe. Line numbers in reports are 1-based
    file lines. Exit status: 0 when no line was rejected, 1 when some were.
    """
    runtime = _runtime()
    importer = Importer(runtime, Rejects(rejects_file), batch_size)
    try:
        with _progress(file, quiet) as bar:
            for number, raw in enumerate(file, start=1):
                importer.feed(number, raw)
                bar.update(len(raw))
            importer.flush()
    finally:
        runtime.db.dispose()
    _summarise(importer, rejects_file is not None)
    if importer.rejects.count:
        raise click.exceptions.Exit(1)


# -- experiments export ---------------------------------------------------------------------------

def _iso(value: datetime | None) -> str | None:
    """UTC ISO-8601 (SQLite hands datetimes back naive, PostgreSQL in the session's zone)."""
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).isoformat()


def _schema() -> dict[str, tuple[dict[str, type], Any, list[tuple[str, str, str]]]]:
    """Output tables: columns, primary key, foreign keys (for Datasette's links)."""
    from flagship.experiments.store.aggregates import COUNTERS

    counters: dict[str, type] = {c: int if c.endswith("_count") else float for c in COUNTERS}
    return {
        "experiment": ({"key": str, "name": str, "status": str, "flag": str, "layer": str,
                        "hypothesis": str, "started_at": str, "ended_at": str, "version": int,
                        "config": str, "exported_at": str}, "key", []),
        "metrics": ({"key": str, "name": str, "event": str, "kind": str, "denominator_event": str,
                     "direction": str, "winsorize_percentile": float, "description": str,
                     "version": int, "success": bool, "guardrail": bool, "guardrail_margin": float},
                    "key", []),
        "assignments": ({"unit": str, "variant": str, "assigned_at": str}, "unit", []),
        "events": ({"event_id": str, "unit": str, "event": str, "value": float, "timestamp": str,
                    "received_at": str, "properties": str}, "event_id",
                   [("unit", "assignments", "unit")]),
        "unit_metrics": ({"metric": str, "unit": str, "variant": str, "value": float,
                          "pre_value": float, **counters}, ("metric", "unit"),
                         [("metric", "metrics", "key"), ("unit", "assignments", "unit")]),
    }


INDEXES = {"assignments": [["variant"]], "events": [["unit"], ["event"]],
           "unit_metrics": [["unit"], ["metric", "variant"]]}


def _experiment(conn: sa.Connection, key: str) -> Any:
    """The experiment's row, or Refused."""
    import sqlalchemy as sa

    from flagship.experiments.store.config import ExperimentRecord

    table = ExperimentRecord.__table__
    row = conn.execute(sa.select(table).where(table.c.key == key)).first()
    if row is None:
        raise Refused(f"experiment {key!r} not found")
    return row


def _metrics(conn: sa.Connection, doc: dict[str, Any]) -> list[Metric]:
    """The experiment's success and guardrail metrics that exist, in the document's order."""
    from sqlalchemy.orm import Session

    from flagship.experiments.metrics import metrics_by_key

    keys = [*(doc.get("success_metrics") or []), *(g["metric"] for g in doc.get("guardrail_metrics") or [])]
    keys = list(dict.fromkeys(keys))
    with Session(bind=conn) as session:
        found = metrics_by_key(session, keys)
    return [found[k] for k in keys if k in found]


def _experiment_row(record: Any, now: datetime) -> dict[str, Any]:
    doc = record.document
    return {"key": record.key, "name": doc.get("name") or record.key, "status": record.status,
            "flag": record.flag_key, "layer": record.layer_key, "hypothesis": doc.get("hypothesis"),
            "started_at": _iso(record.started_at), "ended_at": _iso(record.ended_at),
            "version": record.version, "config": doc, "exported_at": _iso(now)}


def _metric_rows(metrics: list[Metric], doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    success = set(doc.get("success_metrics") or [])
    margins = {g["metric"]: g.get("margin", 0.0) for g in doc.get("guardrail_metrics") or []}
    for m in metrics:
        yield {"key": m.key, "name": m.name, "event": m.event, "kind": m.kind,
               "denominator_event": m.denominator_event, "direction": m.direction,
               "winsorize_percentile": m.winsorize_percentile, "description": m.description,
               "version": m.version, "success": m.key in success, "guardrail": m.key in margins,
               "guardrail_margin": margins.get(m.key)}


def _stream(conn: sa.Connection, query: Any) -> Any:
    """Rows in batches (a server-side cursor on PostgreSQL): no table is held in memory."""
    return conn.execute(query.execution_options(yield_per=EXPORT_BATCH))


def _assignments(conn: sa.Connection, key: str) -> Iterator[dict[str, Any]]:
    import sqlalchemy as sa

    from flagship.experiments.store.assignments import ExposureRecord

    x = ExposureRecord.__table__
    query = sa.select(x.c.unit, x.c.variant, x.c.assigned_at).where(x.c.experiment_key == key)
    for row in _stream(conn, query.order_by(x.c.unit)):
        yield {"unit": row.unit, "variant": row.variant, "assigned_at": _iso(row.assigned_at)}


def _events(conn: sa.Connection, key: str) -> Iterator[dict[str, Any]]:
    """Every event of the experiment's units, before and after exposure (the `aggregated` flag
    and the surrogate id are the store's bookkeeping, not data)."""
    import sqlalchemy as sa

    from flagship.experiments.ingest import EventRecord
    from flagship.experiments.store.assignments import ExposureRecord

    e, x = EventRecord.__table__, ExposureRecord.__table__
    query = (sa.select(e.c.event_id, e.c.unit, e.c.event, e.c.value, e.c.timestamp, e.c.received_at,
                       e.c.properties)
             .join(x, sa.and_(x.c.unit == e.c.unit, x.c.experiment_key == key)).order_by(e.c.id))
    for row in _stream(conn, query):
        yield {**row._mapping, "timestamp": _iso(row.timestamp), "received_at": _iso(row.received_at)}


def _unit_rows(conn: sa.Connection, key: str, metric: Metric) -> Iterator[dict[str, Any]]:
    """One row per assigned unit: zeros for units without events, as the analysis counts them."""
    import sqlalchemy as sa

    from flagship.experiments.store.aggregates import COUNTERS, UnitMetricRecord
    # the analysis' own per-kind formulas, so the file cannot drift from the results
    from flagship.experiments.analysis import value_columns
    from flagship.experiments.store.assignments import ExposureRecord

    x, t = ExposureRecord.__table__, UnitMetricRecord.__table__
    value, pre_value = value_columns(metric, t)
    zero = sa.func.coalesce
    joined = x.outerjoin(t, sa.and_(t.c.experiment_key == x.c.experiment_key,
                                    t.c.metric_key == metric.key, t.c.unit == x.c.unit))
    query = (sa.select(x.c.unit, x.c.variant, zero(value, 0.0).label("value"),
                       zero(pre_value, 0.0).label("pre_value"), *(zero(t.c[c], 0).label(c) for c in COUNTERS))
             .select_from(joined).where(x.c.experiment_key == key).order_by(x.c.unit))
    for row in _stream(conn, query):
        yield {"metric": metric.key, **row._mapping}


def _read_view(db: Any) -> Any:
    """One read transaction, so the tables agree with each other while ingestion goes on."""
    conn = db.engine.connect()
    if not db.is_sqlite:  # SQLite's read transaction is already a snapshot (WAL)
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def _fill(out: sqlite_utils.Database, conn: sa.Connection, key: str, now: datetime) -> None:
    record = _experiment(conn, key)
    metrics = _metrics(conn, record.document)
    for name, (columns, pk, foreign_keys) in _schema().items():
        out[name].create(columns, pk=pk, foreign_keys=foreign_keys)  # type: ignore[union-attr]
    out["experiment"].insert(_experiment_row(record, now))
    out["metrics"].insert_all(_metric_rows(metrics, record.document))
    out["assignments"].insert_all(_assignments(conn, key), batch_size=EXPORT_BATCH)
    out["events"].insert_all(_events(conn, key), batch_size=EXPORT_BATCH)
    for metric in metrics:
        out["unit_metrics"].insert_all(_unit_rows(conn, key, metric), batch_size=EXPORT_BATCH)
    for name, indexes in INDEXES.items():  # built after the load: faster than maintained during it
        for columns in indexes:
            out[name].create_index(columns)  # type: ignore[union-attr]


def export_experiment(runtime: Runtime, key: str, path: Path) -> dict[str, int]:
    """Write the experiment's data to a new SQLite file at `path`; return rows per table."""
    import sqlite_utils

    from flagship.experiments.store.aggregates import catch_up

    with runtime.db.engine.connect() as conn:
        _experiment(conn, key)  # fail fast, before a possibly long catch-up
    catch_up(runtime.db)
    # built beside the target and renamed into place: a failed export never leaves a
    # half-written file, and --overwrite keeps the old file until the new one is complete
    scratch = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        out = sqlite_utils.Database(scratch, recreate=True)
        try:
            with _read_view(runtime.db) as conn, conn.begin(), out.atomic():
                _fill(out, conn, key, runtime.clock())
            counts = {name: out[name].count for name in ("assignments", "events", "unit_metrics", "metrics")}
        finally:
            out.close()
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return counts


@click.group()
def experiments() -> None:
    """Experiment data commands."""


@experiments.command("export")
@click.argument("key")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def experiments_export(key: str, out: Path, overwrite: bool) -> None:
    """Write experiment KEY's data to OUT, a standalone SQLite file (Datasette, pandas, sqlite3).

    Tables: experiment (one row, config as JSON), metrics (its definitions), assignments
    (unit, variant, assigned_at), events (every event of the assigned units) and
    unit_metrics (one row per assigned unit and metric: value, pre_value and the raw
    counters; units without events get zeros, as the analysis counts them). Per-unit
    aggregates are brought up to date first. Exit status 2 when KEY is unknown or OUT
    exists without --overwrite.
    """
    if out.exists() and not overwrite:
        raise Refused(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise Refused(f"{out.parent} is not a directory")
    runtime = _runtime()
    try:
        counts = export_experiment(runtime, key, out)
    finally:
        runtime.db.dispose()
    click.echo(f"exported {key} to {out}: {counts['assignments']} assignments, {counts['events']} "
               f"events, {counts['unit_metrics']} unit_metrics rows ({counts['metrics']} metrics)",
               err=True)
