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

from flagship.errors import FlagshipError

if TYPE_CHECKING:
    from flagship.runtime import Runtime

CHUNK = 5_000  # events per ingest() call: one transaction each, half the API's batch limit
MAX_CHUNK = 10_000  # the API's default FLAGSHIP_MAX_EVENT_BATCH
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
    from flagship.experiments.export import export_experiment

    runtime = _runtime()
    try:
        counts = export_experiment(runtime, key, out)
    except FlagshipError as exc:
        raise Refused(exc.message) from None
    finally:
        runtime.db.dispose()
    click.echo(f"exported {key} to {out}: {counts['assignments']} assignments, {counts['events']} "
               f"events, {counts['unit_metrics']} unit_metrics rows ({counts['metrics']} metrics)",
               err=True)
