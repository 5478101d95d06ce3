"""Python SDK benchmarks: local evaluation, OpenFeature vs GrowthBook, memory, sticky lookups, idle CPU.

Prints:
- `Client.evaluate` next to the bare core (`Snapshot.evaluate`) on bench_http's reference
  flag (target: at most 2 us of overhead per evaluation);
- the same flag through `openfeature.api` with `FlagshipProvider` (`get_string_value`,
  and `get_boolean_value` on a boolean twin), next to GrowthBook's Python SDK on an
  equivalent feature in the same run (target: below half of GrowthBook's time), plus the
  OpenFeature SDK's own floor (a no-op provider) and the provider called directly;
- traced memory of a client holding 1,000 reference flags, next to the bare snapshot;
- the sticky contract's cost against a real `flagship serve`: the first evaluation of
  an experiment flag for a unit the process has not seen (one GET of the unit's
  assignments), a returning unit, and a new unit with `sticky_lookup=False`;
- CPU used by an idle client polling that server every second (304s).

Figures are per evaluation, the best and the median of interleaved rounds (the box is
shared, so the best is the figure least disturbed by others).

    python benchmarks/bench_sdk.py [--rounds 15] [--idle-seconds 5]
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

from bench_http import free_port, reference_flag, request, start_server

from flagship import Snapshot
from flagship.sdk import Client

DEAD_URL = f"http://127.0.0.1:{free_port()}"  # bootstrapped clients never reach a server
STAFF = {"key": "staff", "conditions": [
    {"attribute": "email", "operator": "ends_with", "values": ["@corp.example"]}]}


def boolean_twin(key: str) -> dict:
    """The reference flag with boolean variants (what get_boolean_value needs)."""
    return {**reference_flag(key), "type": "boolean", "variants": {"a": False, "b": True, "c": True}}


def snapshot_doc(flags: int = 1) -> dict:
    return {"revision": 1, "segments": [STAFF],
            "flags": [reference_flag("ref"), boolean_twin("ref-bool")]
            + [reference_flag(f"flag-{i:04d}") for i in range(flags - 1)]}


def contexts(n: int = 64) -> list[dict[str, Any]]:
    """A mix reaching every rule: staff force, the semver force, the 40 % rollout, the default."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        kinds: list[dict[str, Any]] = [
            {"key": f"user-{i}", "country": "NL", "plan": "pro", "email": f"u{i}@corp.example"},
            {"key": f"user-{i}", "country": "DE", "app_version": "2.1.0", "email": f"u{i}@x.org", "age": 40},
            {"key": f"user-{i}", "country": "DE", "app_version": "1.0.0", "email": f"alice{i}@x.com",
             "beta": True},
            {"key": f"user-{i}", "country": "US", "email": f"zed{i}@x.com", "beta": False}]
        out.append(kinds[i % 4])
    return out


def growthbook_features() -> dict:
    """GrowthBook's form of the reference flag (string) and its boolean twin."""
    rules: list[dict[str, Any]] = [
        {"condition": {"country": {"$in": ["NL", "BE"]}, "plan": "pro",
                       "email": {"$regex": r"@corp\.example$"}}, "force": "B"},
        {"condition": {"app_version": {"$vgte": "2.0.0"}, "email": {"$regex": r"\.org$"},
                       "age": {"$gt": 30}}, "force": "C"},
        {"condition": {"country": {"$nin": ["US"]}, "beta": True, "email": {"$regex": "^[a-m]"}},
         "force": "B", "coverage": 0.4, "hashAttribute": "id"}]
    as_bool: list[dict[str, Any]] = [{**rule, "force": True} for rule in rules]
    return {"ref": {"defaultValue": "A", "rules": rules},
            "ref-bool": {"defaultValue": False, "rules": as_bool}}


def race(candidates: dict[str, Callable[[], int]], rounds: int) -> dict[str, tuple[float, float]]:
    """Interleaved rounds of each candidate loop; per-call (best, median) in microseconds."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for loop in candidates.values():
        loop()  # warm up
    for _ in range(rounds):
        for name, loop in candidates.items():
            gc.disable()
            start = time.perf_counter()
            calls = loop()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
            gc.enable()
    return {name: (min(s), statistics.median(s)) for name, s in samples.items()}


def looping(fn: Callable[[Any], Any], ctxs: list[Any], repeat: int = 50) -> Callable[[], int]:
    def loop() -> int:
        for _ in range(repeat):
            for ctx in ctxs:
                fn(ctx)
        return repeat * len(ctxs)
    return loop


def show(results: dict[str, tuple[float, float]]) -> None:
    for name, (best, median) in results.items():
        print(f"  {name:<58} {best:7.2f} us  (median {median:6.2f})")


def bench_local(rounds: int) -> None:
    doc, ctxs = snapshot_doc(), contexts()
    snapshot = Snapshot.from_dict(doc)
    with Client(DEAD_URL, "k", bootstrap=doc, poll_interval=3600, events=False) as client:
        assert all(client.evaluate("ref", c) == snapshot.evaluate("ref", c) for c in ctxs)
        results = race({
            "core: Snapshot.evaluate(reference flag)": looping(lambda c: snapshot.evaluate("ref", c), ctxs),
            "sdk:  Client.evaluate(reference flag)": looping(lambda c: client.evaluate("ref", c), ctxs),
            "sdk:  Client.string_value(reference flag)": looping(
                lambda c: client.string_value("ref", c, "x"), ctxs)}, rounds)
    print("Local evaluation, per call:")
    show(results)
    core = results["core: Snapshot.evaluate(reference flag)"]
    sdk = results["sdk:  Client.evaluate(reference flag)"]
    print(f"  Client.evaluate overhead over the core: {sdk[0] - core[0]:.2f} us best, "
          f"{sdk[1] - core[1]:.2f} us median (target <= 2 us)")


def bench_openfeature(rounds: int) -> None:
    from growthbook import GrowthBook
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.provider.no_op_provider import NoOpProvider

    from flagship.sdk.openfeature import FlagshipProvider

    doc, ctxs = snapshot_doc(), contexts()
    of_ctxs = [EvaluationContext(c["key"], {k: v for k, v in c.items() if k != "key"}) for c in ctxs]
    gb_ctxs = [{"id": c["key"], **{k: v for k, v in c.items() if k != "key"}} for c in ctxs]
    gb = GrowthBook(features=growthbook_features())
    client = Client(DEAD_URL, "k", bootstrap=doc, poll_interval=3600, events=False)
    provider = FlagshipProvider(client)
    api.set_provider_and_wait(provider)
    of = api.get_client()
    ours = [of.get_string_value("ref", "x", c) for c in of_ctxs]
    theirs = []
    for attrs in gb_ctxs:
        gb.set_attributes(attrs)
        theirs.append(gb.get_feature_value("ref", "x"))
    # rollout buckets hash differently; every other rule must agree
    pairs = enumerate(zip(ours, theirs, strict=True))
    assert all(a == b for i, (a, b) in pairs if i % 4 != 2), (ours, theirs)

    def gb_eval(key: str, default: Any) -> Callable[[dict], Any]:
        def run(attrs: dict) -> Any:
            gb.set_attributes(attrs)  # GrowthBook holds the user on the instance
            return gb.get_feature_value(key, default)
        return run

    noop = api.get_client("noop")
    api.set_provider_and_wait(NoOpProvider(), "noop")
    results = race({
        "OpenFeature get_string_value -> FlagshipProvider": looping(
            lambda c: of.get_string_value("ref", "x", c), of_ctxs),
        "GrowthBook set_attributes + get_feature_value (string)": looping(gb_eval("ref", "x"), gb_ctxs),
        "OpenFeature get_boolean_value -> FlagshipProvider": looping(
            lambda c: of.get_boolean_value("ref-bool", False, c), of_ctxs),
        "GrowthBook set_attributes + get_feature_value (boolean)": looping(
            gb_eval("ref-bool", False), gb_ctxs),
        "OpenFeature get_string_value -> no-op provider (SDK floor)": looping(
            lambda c: noop.get_string_value("ref", "x", c), of_ctxs),
        "FlagshipProvider.resolve_string_details (no OpenFeature client)": looping(
            lambda c: provider.resolve_string_details("ref", "x", c), of_ctxs),
        "Client.string_value": looping(lambda c: client.string_value("ref", c, "x"), ctxs)}, rounds)
    api.clear_providers()
    print("OpenFeature provider next to GrowthBook (same flag, same contexts), per call:")
    show(results)
    gb_string = results["GrowthBook set_attributes + get_feature_value (string)"][0]
    for name in ("OpenFeature get_string_value -> FlagshipProvider",
                 "OpenFeature get_string_value -> no-op provider (SDK floor)",
                 "FlagshipProvider.resolve_string_details (no OpenFeature client)", "Client.string_value"):
        print(f"  {name}: {results[name][0] / gb_string:.2f}x GrowthBook (target < 0.5x)")
    floor = results["OpenFeature get_string_value -> no-op provider (SDK floor)"][0]
    with_ours = results["OpenFeature get_string_value -> FlagshipProvider"][0]
    print(f"  our provider adds {with_ours - floor:.2f} us "
          "over the OpenFeature SDK's own cost with a provider that does nothing")


def bench_memory(flags: int = 1000) -> None:
    doc = snapshot_doc(flags)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    snapshot = Snapshot.from_dict(doc)
    bare = tracemalloc.get_traced_memory()[0] - base
    del snapshot
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    client = Client(DEAD_URL, "k", bootstrap=doc, poll_interval=3600)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    client.close(timeout=0.1)
    print(f"Memory for {flags} reference flags (tracemalloc): client {held / 2**20:.1f} MiB, "
          f"bare compiled snapshot {bare / 2**20:.1f} MiB")


def bench_server(idle_seconds: float) -> None:
    key = "fsk_admin_benchmark_key_0000000000000000"
    headers = {"Authorization": f"Bearer {key}"}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(Path(tmp), port, key)
        try:
            sdk_key = seed_experiment(port, headers)
            base = f"http://127.0.0.1:{port}"
            sticky_costs(base, sdk_key)
            idle_cpu(base, sdk_key, idle_seconds)
        finally:
            server.terminate()
            server.wait(timeout=10)


def seed_experiment(port: int, headers: dict) -> str:
    for path, body in [
            ("/api/v1/layers", {"key": "bench"}),
            ("/api/v1/experiments", {"key": "bench-exp", "flag": "bench-flag", "layer": "bench",
                                     "traffic_percentage": 100, "variants": [
                                         {"variant": "a", "value": "A", "is_control": True},
                                         {"variant": "b", "value": "B"}]}),
            ("/api/v1/experiments/bench-exp/start", None)]:
        status, payload = request(port, "POST", path, body, headers)
        assert status in (200, 201), payload
    status, payload = request(port, "POST", "/api/v1/keys", {"name": "bench-sdk", "scope": "sdk"}, headers)
    assert status == 201, payload
    return json.loads(payload)["key"]


def timed_units(client: Client, units: list[str]) -> list[float]:
    out = []
    for unit in units:
        start = time.perf_counter()
        client.evaluate("bench-flag", {"key": unit})
        out.append((time.perf_counter() - start) * 1e6)
    return sorted(out)


def sticky_costs(base: str, sdk_key: str, n: int = 400) -> None:
    with Client(base, sdk_key, flush_interval=60) as client:
        assert client.ready(10)
        new = timed_units(client, [f"new-{i}" for i in range(n)])
        again = timed_units(client, [f"new-{i}" for i in range(n)])
    with Client(base, sdk_key, flush_interval=60, sticky_lookup=False) as client:
        assert client.ready(10)
        local = timed_units(client, [f"local-{i}" for i in range(n)])
    print("Sticky contract (experiment flag, real server on loopback), per evaluation:")
    for name, values in [("unit not seen by this process: server lookup (GET /experiments/user)", new),
                         ("returning unit (remembered in the LRU)", again),
                         ("unit not seen, sticky_lookup=False (local hashing only)", local)]:
        print(f"  {name:<72} p50 {values[len(values) // 2]:8.1f} us, "
              f"p99 {values[int(len(values) * 0.99)]:8.1f} us")


def idle_cpu(base: str, sdk_key: str, seconds: float) -> None:
    with Client(base, sdk_key, poll_interval=1.0) as client:
        assert client.ready(10)
        cpu, wall = time.process_time(), time.monotonic()
        polls = client.stats["snapshot_requests"]
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        polls = client.stats["snapshot_requests"] - polls
    print(f"Idle client polling every 1 s for {wall:.1f} s: {polls} conditional GETs (304), "
          f"{cpu * 1e3:.1f} ms CPU = {cpu / wall * 100:.3f} % of one core "
          f"({cpu / max(polls, 1) * 1e3:.2f} ms per poll; at the default 30 s interval "
          f"{cpu / max(polls, 1) / 30 * 100:.4f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args, _ = parser.parse_known_args()  # run.py passes every benchmark the same arguments
    logging.disable(logging.WARNING)  # bootstrapped clients log their unreachable server
    bench_local(args.rounds)
    bench_openfeature(args.rounds)
    bench_memory()
    bench_server(args.idle_seconds)


if __name__ == "__main__":
    main()
