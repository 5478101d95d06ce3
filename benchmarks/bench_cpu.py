"""Server CPU per request on the hot endpoints: flagship against a bare Flask app.

Starts the real `flagship serve` (gunicorn gthread, 2 workers x 8 threads, SQLite in a
temp dir, auth on; requests carry an sdk key) and benchmarks/bare_app.py under the same
gunicorn model, sends each the same keep-alive requests from several client threads (one
persistent connection each) and prints, per endpoint, the server CPU (user + system, the
gunicorn master and all its workers) per request, and the ratio flagship / bare Flask,
next to the targets of issue 9. On a shared 2-core machine latency swings several-fold
between runs; CPU per request moves far less (other load on the machine still inflates
it, so each endpoint's requests go in chunks alternating between the two servers, which
then see the same conditions; the ratio shown is the median over those chunk pairs, with
their range beside it: the figure to compare between runs).

How: each process's CPU clock is read before and after the measured requests (warm-up
excluded) through clock_gettime on the process CPU clock (nanoseconds, the same total as
utime + stime in /proc/<pid>/stat, which is the fallback, in clock ticks). After each
measurement the server is left to go idle: the CPU it burns meanwhile (flagship's
aggregator folding the last events and exposures in, net of its idle rate) is shown as
"+later" and is not in the ratio; what the aggregator did during the run is.

The bare app is the framework floor: parse the JSON body and `jsonify` an answer of the
same shape (POST endpoints), compare If-None-Match and answer 304 (snapshot). See
bare_app.py.

    python benchmarks/bench_cpu.py [--requests 3000] [--threads 4] [--rounds 6] [--endpoint evaluate-1]

Endpoints: evaluate-1, evaluate-10, assign-returning, assign-new, event, snapshot-304, batch.
"""
from __future__ import annotations

import argparse
import atexit
import http.client
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench_http import free_port, request, seed

HERE = Path(__file__).resolve().parent
ADMIN_KEY = "fsk_admin_benchmark_key_0000000000000000"
TICK = os.sysconf("SC_CLK_TCK")
RETURNING_UNITS = 500   # units assigned once in the warm-up, then assigned again
BATCH = 1000            # events per batch request
POLL = 0.25             # seconds between CPU reads while waiting for a server to go idle
BUSY = 0.04 * POLL      # CPU seconds in one poll that count as a burst (4 % of a core)

Body = tuple[str, bytes | None]  # path, JSON body (None: GET)


# --- servers -------------------------------------------------------------------------

@dataclass
class Server:
    """One gunicorn server we started (its own process group), and how to reach it."""

    name: str
    proc: subprocess.Popen
    port: int
    log: Path
    quiet: float                 # seconds without CPU bursts that count as idle
    headers: dict[str, str] = field(default_factory=dict)
    idle_rate: float = 0.0       # CPU seconds per second when idle


RUNNING: list[Server] = []


def stop(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL it if the master lingers, then SIGKILL
    whatever of the group is left (a worker outliving its master)."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.proc.pid, sig)
            server.proc.wait(timeout=grace)
            break
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_all() -> None:
    while RUNNING:
        stop(RUNNING.pop())


def launch(name: str, argv: list[str], env: dict[str, str], port: int, tmp: Path, quiet: float) -> Server:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp)
    server = Server(name, proc, port, log, quiet)
    RUNNING.append(server)
    wait_healthy(server)
    return server


def wait_healthy(server: Server, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            if request(server.port, "GET", "/healthz", None, {})[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    tail = server.log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"{server.name} did not start on port {server.port}:\n{tail}")


def start_flagship(tmp: Path, workers: int, threads: int) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGSHIP_")}
    env.update({"FLAGSHIP_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}", "FLAGSHIP_HOST": "127.0.0.1",
                "FLAGSHIP_PORT": str(port := free_port()), "FLAGSHIP_ADMIN_KEY": ADMIN_KEY,
                "FLAGSHIP_AUTH": "true", "FLAGSHIP_WORKERS": str(workers),
                "FLAGSHIP_THREADS": str(threads)})
    # idle means no burst for longer than the aggregator's 2 s interval
    return launch("flagship", [sys.executable, "-m", "flagship.cli", "serve"], env, port, tmp, quiet=2.6)


def start_bare(tmp: Path, workers: int, threads: int) -> Server:
    port = free_port()
    argv = [sys.executable, str(HERE / "bare_app.py"), "--port", str(port),
            "--workers", str(workers), "--threads", str(threads)]
    return launch("bare Flask", argv, dict(os.environ), port, tmp, quiet=0.5)


# --- seeding flagship ----------------------------------------------------------------

def post(port: int, path: str, body: object, headers: dict[str, str]) -> dict:
    status, payload = request(port, "POST", path, body, headers)
    assert status in (200, 201), f"{path}: {status} {payload[:300]!r}"
    return json.loads(payload) if payload else {}


def seed_flagship(server: Server) -> None:
    """Ten reference flags, a layer, a metric, a running experiment; then an sdk key."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    seed(server.port, admin, 10)  # segment "staff" + reference_flag() as flag-0000 .. flag-0009
    post(server.port, "/api/v1/layers", {"key": "bench"}, admin)
    post(server.port, "/api/v1/metrics", {"key": "clicks", "event": "click", "kind": "count"}, admin)
    post(server.port, "/api/v1/experiments", {
        "key": "bench-exp", "flag": "bench-flag", "layer": "bench", "traffic_percentage": 100,
        "success_metrics": ["clicks"], "variants": [
            {"variant": "a", "value": "A", "is_control": True}, {"variant": "b", "value": "B"}]}, admin)
    post(server.port, "/api/v1/experiments/bench-exp/start", None, admin)
    sdk = post(server.port, "/api/v1/keys", {"name": "bench-sdk", "scope": "sdk"}, admin)
    server.headers = {"Authorization": f"Bearer {sdk['key']}"}


# --- the endpoints -------------------------------------------------------------------

def encode(path: str, body: object) -> Body:
    return path, json.dumps(body).encode()


def context(unit: str) -> dict:
    return {"key": unit, "country": "NL", "email": f"{unit}@x.org", "app_version": "2.1.0",
            "age": len(unit) * 3, "plan": "free", "beta": True}


def evaluate(flags: int) -> Callable[[int, str], Body]:
    keys = [f"flag-{i:04d}" for i in range(flags)]
    return lambda i, tag: encode("/api/v1/evaluate", {"context": context(f"user-{i}"), "flags": keys})


def assign_new(i: int, tag: str) -> Body:
    return encode("/api/v1/experiments/bench-exp/assign", {"context": context(f"{tag}-unit-{i}")})


def assign_returning(i: int, tag: str) -> Body:
    # the warm-up sends units 0..RETURNING_UNITS-1 once: every measured request is a return
    return encode("/api/v1/experiments/bench-exp/assign", {"context": context(f"back-{i % RETURNING_UNITS}")})


def event(i: int, tag: str) -> Body:
    return encode("/api/v1/experiments/events", {"event_id": f"{tag}-{i}", "unit": f"u{i % 5000}",
                                                 "event": "click"})


def batch(i: int, tag: str) -> Body:
    return encode("/api/v1/experiments/events/batch", [
        {"event_id": f"{tag}-{i}-{j}", "unit": f"u{j}", "event": "click", "value": 1.0}
        for j in range(BATCH)])


def snapshot(i: int, tag: str) -> Body:
    return "/api/v1/sdk/snapshot", None


@dataclass(frozen=True)
class Case:
    """One hot endpoint: how to build request i, what answer to expect, the target ratio."""

    name: str
    label: str
    make: Callable[[int, str], Body]
    status: int
    target: float | None
    warmup: int = 200
    per_request: int = 1                 # units the CPU is divided by, per request
    scale: float = 1.0                   # fraction of --requests this case sends


CASES = [
    Case("evaluate-1", "/evaluate one flag", evaluate(1), 200, 1.5),
    Case("evaluate-10", "/evaluate ten flags", evaluate(10), 200, 1.5),
    Case("assign-returning", "/assign returning unit", assign_returning, 200, 1.5, warmup=RETURNING_UNITS),
    Case("assign-new", "/assign new unit", assign_new, 200, 2.5),
    Case("event", "/events one event", event, 202, 2.0),
    Case("snapshot-304", "/sdk/snapshot 304", snapshot, 304, 1.2),
    Case("batch", "1 event in 1,000-event batch", batch, 200, None, warmup=2, per_request=BATCH,
         scale=1 / 150),
]


def etag_header(server: Server) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/api/v1/sdk/snapshot", headers=server.headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return {"If-None-Match": response.getheader("ETag") or ""}


# --- CPU accounting ------------------------------------------------------------------

def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads, ever) of one process; None if it is gone."""
    try:
        # the process CPU clock of `pid` (Linux CPUCLOCK_SCHED, ns resolution), as clock_getcpuclockid gives
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def server_cpu(server: Server) -> dict[int, float]:
    """CPU seconds of the gunicorn master and each of its workers, by pid."""
    pids = [server.proc.pid, *children(server.proc.pid)]
    return {pid: cpu for pid in pids if (cpu := process_cpu(pid)) is not None}


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    if set(before) != set(after):
        print(f"  warning: server processes changed during a measurement "
              f"({sorted(before)} -> {sorted(after)}): a worker restarted", file=sys.stderr)
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def settle(server: Server, limit: float = 30.0) -> tuple[float, float]:
    """Wait until the server has had no CPU burst for `server.quiet` s; return (CPU s, s)."""
    start, quiet_since = time.perf_counter(), time.perf_counter()
    first = last = server_cpu(server)
    while time.perf_counter() - quiet_since < server.quiet and time.perf_counter() - start < limit:
        time.sleep(POLL)
        now = server_cpu(server)
        if cpu_since(last, now) > BUSY:
            quiet_since = time.perf_counter()
        last = now
    return cpu_since(first, last), time.perf_counter() - start


def measure_idle(server: Server, seconds: float = 2.0) -> None:
    settle(server)
    before = server_cpu(server)
    time.sleep(seconds)
    server.idle_rate = cpu_since(before, server_cpu(server)) / seconds


# --- load ----------------------------------------------------------------------------

def send(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
         headers: dict[str, str]) -> int:
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def drive(server: Server, bodies: list[Body], headers: dict[str, str], status: int, threads: int) -> int:
    """Send every request once over `threads` keep-alive connections; return the errors."""
    counter, errors, lock = itertools.count(), [0], threading.Lock()
    headers = {**server.headers, "Content-Type": "application/json", **headers}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while (i := next(counter)) < len(bodies):
            path, body = bodies[i]
            method = "GET" if body is None else "POST"
            try:
                got = send(conn, method, path, body, headers)
            except (OSError, http.client.HTTPException):
                conn.close()  # the server closed an idle connection: reconnect once
                try:
                    got = send(conn, method, path, body, headers)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    got = 0
            if got != status:
                with lock:
                    errors[0] += 1
        conn.close()

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors[0]


@dataclass
class Tally:
    """What one server got during the measured chunks of one endpoint."""

    cpu: float = 0.0
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    chunks: list[float] = field(default_factory=list)  # CPU seconds per request, each chunk


@dataclass
class Measured:
    cpu_us: float        # server CPU per unit (request or event), microseconds
    later_us: float      # CPU after the run until idle, net of the idle rate, per unit
    rps: float
    errors: int
    chunks: list[float]  # CPU µs per unit in each chunk


def run_chunk(server: Server, bodies: list[Body], extra: dict[str, str], case: Case, threads: int,
              tally: Tally) -> None:
    before, t0 = server_cpu(server), time.perf_counter()
    tally.errors += drive(server, bodies, extra, case.status, threads)
    tally.seconds += time.perf_counter() - t0
    cpu = cpu_since(before, server_cpu(server))
    tally.cpu += cpu
    tally.requests += len(bodies)
    tally.chunks.append(cpu / len(bodies))


def measure(servers: list[Server], case: Case, requests: int, threads: int, rounds: int) -> list[Measured]:
    """Warm each server up, then alternate chunks between them (both see the same load on
    the machine), then wait for each to go idle again."""
    extras = [etag_header(s) if case.name == "snapshot-304" else {} for s in servers]
    for server, extra in zip(servers, extras):
        drive(server, [case.make(i, "warm") for i in range(case.warmup)], extra, case.status, threads)
    bodies = [case.make(i, "run") for i in range(requests)]
    size = -(-requests // rounds)
    tallies = [Tally() for _ in servers]
    for start in range(0, requests, size):
        for server, extra, tally in zip(servers, extras, tallies):
            run_chunk(server, bodies[start:start + size], extra, case, threads, tally)
    results = []
    for server, tally in zip(servers, tallies):
        later, later_s = settle(server)
        units = tally.requests * case.per_request
        results.append(Measured(tally.cpu / units * 1e6,
                                max(0.0, later - server.idle_rate * later_s) / units * 1e6,
                                tally.requests / tally.seconds, tally.errors,
                                [c / case.per_request * 1e6 for c in tally.chunks]))
    return results


# --- report --------------------------------------------------------------------------

HEADER = (f"{'endpoint':<30} {'flagship µs':>11} {'+later':>7} {'bare µs':>8} {'ratio':>6} {'chunks':>9} "
          f"{'target':>7} {'':>4} {'flagship/bare req/s':>19}")


def ratios(ours: Measured, bare: Measured) -> list[float]:
    """flagship / bare for each pair of chunks run back to back."""
    return sorted(o / b if b else float("inf") for o, b in zip(ours.chunks, bare.chunks))


def row(case: Case, ours: Measured, bare: Measured) -> str:
    pairs = ratios(ours, bare)
    ratio = statistics.median(pairs)
    spread = f"{pairs[0]:.1f}-{pairs[-1]:.1f}"
    target = f"≤{case.target:.1f}x" if case.target else "—"
    verdict = "" if case.target is None else ("ok" if ratio <= case.target else "MISS")
    errors = f"  errors {ours.errors}/{bare.errors}" if ours.errors or bare.errors else ""
    return (f"{case.label:<30} {ours.cpu_us:>11,.0f} {ours.later_us:>7,.0f} {bare.cpu_us:>8,.0f} "
            f"{ratio:>5.1f}x {spread:>9} {target:>7} {verdict:>4} {ours.rps:>9,.0f}/{bare.rps:<9,.0f}{errors}")


def run(cases: list[Case], requests: int, threads: int, rounds: int, workers: int, server_threads: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ours = start_flagship(tmp, workers, server_threads)
        seed_flagship(ours)
        bare = start_bare(tmp, workers, server_threads)
        bare.headers = dict(ours.headers)  # same request bytes to both
        for server in (ours, bare):
            measure_idle(server)
        print(f"server CPU per request (user+system, gunicorn master + {workers} workers x "
              f"{server_threads} threads), {requests:,} keep-alive requests per endpoint over "
              f"{threads} connections in {rounds} alternating chunks; idle: flagship {ours.idle_rate * 1e3:.1f} ms/s, "
              f"bare {bare.idle_rate * 1e3:.1f} ms/s")
        print(HEADER, flush=True)
        for case in cases:
            n = max(5, round(requests * case.scale))
            print(row(case, *measure([ours, bare], case, n, threads, rounds)), flush=True)
        print("µs: server CPU per request (per event for the batch row); ratio: median over the "
              "chunk pairs, chunks: their range; +later: flagship CPU after the run until idle "
              "(aggregation), not in the ratio; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work inflates CPU per request)")
        stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per endpoint")
    parser.add_argument("--threads", type=int, default=4, help="client threads (connections)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="chunks per endpoint, alternating between the two servers")
    parser.add_argument("--endpoint", choices=[c.name for c in CASES], help="run only this one")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of both servers")
    parser.add_argument("--server-threads", type=int, default=8, help="threads per worker")
    args = parser.parse_args()
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cases = [c for c in CASES if args.endpoint in (None, c.name)]
    try:
        run(cases, args.requests, args.threads, args.rounds, args.workers, args.server_threads)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
