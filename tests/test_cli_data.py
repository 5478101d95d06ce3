"""`flagship events import` and `flagship experiments export`, on both backends."""
from __future__ import annotations

import json
import random
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from flagship.cli import main
from flagship.experiments import results
from flagship.experiments.ingest import ingest
from flagship.experiments.store import reads
from flagship.experiments.store.config import metrics_by_key
from tests.test_aggregate import METRICS, T0, expected, generate, send, setup  # noqa: F401 (fixture)



@pytest.fixture
def cli(runner):
    return runner


def import_file(now: datetime) -> tuple[list[bytes], dict[int, str], set[str], int]:
    """Shuffled lines; rejected line number -> the field blamed; the valid event ids; repeats."""
    ts = (now - timedelta(minutes=10)).isoformat()
    valid = [{"event_id": f"e{i}", "unit": f"u{i % 7}", "event": "purchase", "value": i,
              "timestamp": ts, "properties": {"i": i}} for i in range(40)]
    repeats = [valid[3], valid[3], valid[17]]
    bad = {
        "unit": {"event_id": "b1", "event": "click", "timestamp": ts},
        "value": {"event_id": "b2", "unit": "u1", "event": "click", "value": "lots"},
        "timestamp": {"event_id": "b3", "unit": "u1", "event": "click",
                      "timestamp": (now - timedelta(days=90)).isoformat()},
        "colour": {"event_id": "b4", "unit": "u1", "event": "click", "colour": "red"},
        "experiment": {"event_id": "b5", "unit": "u1", "event": "$exposure", "experiment": "nope",
                       "variant": "a"},
        "_schema": [1, 2],
    }
    lines = [(json.dumps(item).encode(), None) for item in valid + repeats]
    lines += [(json.dumps(item).encode(), field) for field, item in bad.items()]
    lines += [(b'{"unit": "u1", "event": ', "json"), (b'{"unit": "\xff"}', "json"), (b"  ", None)]
    random.Random(4).shuffle(lines)
    rejected = {number: field for number, (_, field) in enumerate(lines, 1) if field}
    return [raw + b"\n" for raw, _ in lines], rejected, {e["event_id"] for e in valid}, len(repeats)


def stored_ids(database_url: str) -> set[str]:
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT event_id FROM events")).scalars())
    engine.dispose()
    return ids


def test_import_validates_each_line_reports_file_lines_and_is_idempotent(cli, database_url, tmp_path):
    lines, rejected, valid_ids, repeats = import_file(datetime.now(timezone.utc))
    path, rejects = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl"
    path.write_bytes(b"".join(lines))

    first = cli("events", "import", str(path), "--rejects", str(rejects), "--batch-size", "8")
    assert first.exit_code == 1
    assert f"accepted {len(valid_ids)}, duplicates {repeats}, rejected {len(rejected)}" in first.stderr
    assert stored_ids(database_url) == valid_ids
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert {r["line"]: next(iter(r["errors"])) for r in written} == rejected
    for r in written:
        assert r["text"] == lines[r["line"] - 1].decode("utf-8", "replace").rstrip("\n")

    again = cli("events", "import", str(path), "--quiet")
    assert again.exit_code == 1
    assert f"accepted 0, duplicates {len(valid_ids) + repeats}, rejected {len(rejected)}" in again.stderr
    assert "line " in again.stderr and "--rejects PATH writes them all" in again.stderr

    good = b"".join(line for number, line in enumerate(lines, 1) if number not in rejected)
    clean = cli("events", "import", "-", "--rejects", str(rejects), input=good)
    assert clean.exit_code == 0, clean.output
    assert f"accepted 0, duplicates {len(valid_ids) + repeats}, rejected 0" in clean.stderr
    assert rejects.read_text() == ""  # the stale report of the first run is gone
    assert stored_ids(database_url) == valid_ids


def unit_values_in(path, metric: str) -> dict[str, tuple[str, float, float]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT unit, variant, value, pre_value FROM unit_metrics WHERE metric = ?",
                          (metric,)).fetchall()
    return {unit: (variant, value, pre) for unit, variant, value, pre in rows}


def test_export_writes_a_standalone_file_that_matches_the_analysis(setup, cli, tmp_path):
    exposures, sent = generate(seed=5, units=120)
    send(setup, exposures, sent)
    late = {"event_id": "late", "unit": next(iter(exposures)), "event": "purchase", "value": 9.0,
            "timestamp": (T0 + timedelta(days=1)).isoformat()}
    ingest(setup, [late], now=T0 + timedelta(days=3))  # not aggregated: the export catches up
    sent.append(late)
    out = tmp_path / "exp.db"

    result = cli("experiments", "export", "exp", str(out))
    assert result.exit_code == 0, result.output
    with sqlite3.connect(out) as db:
        key, status, flag, config = db.execute("SELECT key, status, flag, config FROM experiment").fetchone()
        assert (key, status, flag) == ("exp", "running", "f")
        assert json.loads(config)["success_metrics"] == [m["key"] for m in METRICS[:4]]
        assert dict(db.execute("SELECT unit, variant FROM assignments")) == {
            u: v for u, (v, _) in exposures.items()}
        mine = [e for e in sent if e["unit"] in exposures]
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == len(mine) + len(exposures)
        assert db.execute("SELECT key FROM metrics WHERE guardrail").fetchall() == [("rev-per-visit",), ("revenue-w",)]
        assert db.execute("SELECT count(*) FROM unit_metrics").fetchone()[0] == len(exposures) * len(METRICS)
        assert "idx_events_unit" in {row[1] for row in db.execute("PRAGMA index_list('events')")}
        per_variant = dict((v, (n, s)) for v, n, s in db.execute(
            "SELECT variant, count(*), sum(value) FROM unit_metrics WHERE metric = 'revenue' GROUP BY variant"))

    with setup.db.engine.connect() as conn:
        for spec in METRICS:
            metric = metrics_by_key(conn, [spec["key"]])[spec["key"]]
            got = unit_values_in(out, spec["key"])
            assert set(got) == set(exposures)
            stored = reads.unit_values(conn, "exp", metric)
            by_hand = expected(exposures, sent, spec)
            for unit, (variant, value, pre) in got.items():
                want = stored.get(unit, (variant, 0.0, 0.0, 0.0))  # units without events count as zeros
                assert variant == want[0]
                hand_value = by_hand[unit][1]
                if spec["kind"] == "mean":  # the file holds the unit's average event value
                    hand_value = hand_value / by_hand[unit][3] if by_hand[unit][3] else 0.0
                else:
                    assert (value, pre) == (pytest.approx(want[1]), pytest.approx(want[2]))
                    assert pre == pytest.approx(by_hand[unit][2])
                assert value == pytest.approx(hand_value)
    for variant, stats in results.read(setup, "exp").stats["revenue"].items():
        assert per_variant[variant] == (stats.n, pytest.approx(stats.sum))


def test_export_refuses_to_clobber_and_unknown_experiments(setup, cli, tmp_path):
    out = tmp_path / "exp.db"
    out.write_bytes(b"keep me")
    refused = cli("experiments", "export", "exp", str(out))
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    assert out.read_bytes() == b"keep me"

    assert cli("experiments", "export", "exp", str(out), "--overwrite").exit_code == 0
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT count(*) FROM experiment").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM assignments").fetchone()[0] == 0

    missing = cli("experiments", "export", "nope", str(tmp_path / "nope.db"))
    assert missing.exit_code == 2 and "experiment 'nope' not found" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    assert not list(tmp_path.glob(".*.partial"))
