"""Rollout evaluation: one periodic round over 1,000 running rollouts with three checks each
(target <= 1 s on SQLite), and the time from a breach being in the data to the rollback
being visible in the snapshot (target <= one interval + 1 s).

    python benchmarks/bench_rollout.py [--rollouts 1000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

POLICY = {"evaluation_interval": 1, "min_consecutive_ok": 1,
          "steps": [{"percent": 10, "min_duration": 1, "min_units": 50},
                    {"percent": 50, "min_duration": 3600, "min_units": 50}],
          "checks": [{"id": "errors", "type": "metric_regression", "metric": "errors", "min_units": 50,
                      "on_fail": "rollback"},
                     {"id": "srm", "type": "srm"},
                     {"id": "traffic", "type": "min_traffic", "min_units": 50}]}


def _runtime(folder: str):
    from flagship.db import upgrade
    from flagship.runtime import make_runtime

    url = f"sqlite:///{folder}/bench.db"
    upgrade(url)
    return make_runtime({"DATABASE_URL": url, "ENTRY_POINTS": False, "PLUGINS": "", "ROLLOUT_INTERVAL": 1})


def _seed(runtime, count: int) -> list[int]:
    from flagship.experiments import metrics
    from flagship.flags import service as flags
    from flagship.rollout import service

    metrics.create_metric(runtime, "bench", {"key": "errors", "event": "error", "kind": "conversion",
                                             "direction": "decrease"})
    ids = []
    for i in range(count):
        flags.create_flag(runtime, "bench", {
            "key": f"f{i}", "type": "boolean", "variants": {"on": True, "off": False},
            "default_variant": "off", "rules": [{"id": "ramp", "kind": "rollout", "variant": "on",
                                                 "percentage": 0}]}, "production")
        rollout = service.create_rollout(runtime, "bench", {"flag": f"f{i}", "rule_id": "ramp",
                                                            "policy": POLICY}, "production")
        service.act(runtime, "bench", rollout["id"], "start")
        ids.append(rollout["id"])
    return ids


def round_time(runtime, slot: int) -> tuple[float, dict]:
    from flagship.rollout.evaluation import evaluate_all

    started = time.perf_counter()
    tally = evaluate_all(runtime, slot)
    return time.perf_counter() - started, tally


def breach_to_rollback(runtime) -> float:
    """Harmful data for one rollout's treatment; seconds until its rule is at 0 % in the
    snapshot, with the round run as the ticker would (every interval / 4)."""
    from flagship import jobs
    from flagship.experiments.ingest import ingest

    snapshot = runtime.snapshots.get("production").snapshot
    items = []
    for i in range(4000):
        result = snapshot.evaluate("f0", {"key": f"u{i}"})
        if result.arm is None:
            continue
        items.append({"unit": f"u{i}", "event": "$exposure", "experiment": result.experiment,
                      "variant": result.arm, "event_id": f"x{i}"})
        if result.arm == "treatment" or i % 50 == 0:
            items.append({"unit": f"u{i}", "event": "error", "event_id": f"e{i}"})
    ingest(runtime, items)
    breached = time.perf_counter()
    while time.perf_counter() - breached < 30:
        jobs.periodic_round(runtime)
        rule = runtime.snapshots.get("production").snapshot.flags["f0"].rules[0]
        if rule.percentage == 0:
            return time.perf_counter() - breached
        time.sleep(0.25)
    return float("inf")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rollouts", type=int, default=1000)
    args, _ = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as folder:
        runtime = _runtime(folder)
        started = time.perf_counter()
        _seed(runtime, args.rollouts)
        print(f"seeded {args.rollouts} running rollouts in {time.perf_counter() - started:.1f} s")
        slot = int(datetime.now(timezone.utc).timestamp())
        seconds, tally = round_time(runtime, slot)
        print(f"one round over {args.rollouts} rollouts x 3 checks: {seconds:.2f} s "
              f"(target <= 1 s) {tally}")
        again, tally = round_time(runtime, slot)
        print(f"the same slot again (all skipped): {again:.2f} s {tally}")
        runtime.close()
    with tempfile.TemporaryDirectory() as folder:  # the latency of one rollout, nothing else queued
        runtime = _runtime(folder)
        _seed(runtime, 1)
        latency = breach_to_rollback(runtime)
        print(f"breach in the data -> rollback in the snapshot: {latency:.2f} s "
              "(target <= one 1 s interval + 1 s)")
        runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
