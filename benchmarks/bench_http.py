"""HTTP benchmarks against a real `flagship serve` (gunicorn, SQLite) on loopback.

Prints: single-flag POST /api/v1/evaluate latency at a fixed arrival rate (open loop,
latency measured from each request's scheduled start, so a stall is not hidden) and the
closed-loop maximum throughput; GET /api/v1/sdk/snapshot 304 latency with 1,000 flags.
Also: POST /experiments/{key}/assign at the same rate, every request a new unit, so
each one persists a sticky assignment and an exposure on SQLite.
Targets: evaluate and assign p99 <= 10 ms at 500 requests/s; snapshot 304 p50 <= 2 ms.
After each open-loop figure, the same requests at the same rate against a bare Flask app
under the same gunicorn model (benchmarks/bare_app.py): the machine's latency floor in
the same minute, for the tail latency of these machines swings several-fold between runs.

With `--noise 0.5`, a competing process busy-loops half of every 20 ms on the shared cores
for the whole run (a noisy neighbour, made repeatable): the tail then shows whether
flagship degrades more than the bare app under the same contention.

    python benchmarks/bench_http.py [--rate 500] [--seconds 10] [--closed-seconds 5] [--noise 0.5]
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp: Path, port: int, admin_key: str, database_url: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "FLAGSHIP_DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.db'}",
           "FLAGSHIP_PORT": str(port), "FLAGSHIP_ADMIN_KEY": admin_key}
    proc = subprocess.Popen([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status, _ = request(port, "GET", "/healthz", None, {})
            if status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def start_bare(port: int) -> subprocess.Popen:
    """benchmarks/bare_app.py (2 workers x 8 threads, like `flagship serve`) on `port`."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "bare_app.py"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/healthz", None, {})[0] == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the bare Flask app did not start")


NOISE = """
import sys, time
busy = float(sys.argv[1]) * 0.02
while True:
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        pass
    time.sleep(0.02 - busy)
"""


def start_noise(duty: float) -> subprocess.Popen | None:
    """A process that keeps a core busy `duty` of every 20 ms until killed (0: none)."""
    if duty <= 0:
        return None
    return subprocess.Popen([sys.executable, "-c", NOISE, str(duty)])


def floor(port: int, rate: int, seconds: float, make) -> str:
    """The bare app's latency for the same requests at the same rate, as a printed note."""
    bare = open_loop(port, {}, rate, seconds, make=make)
    return (f"  bare Flask, same requests and rate, just after: p50 {bare['p50_ms']:.2f} ms, "
            f"p99 {bare['p99_ms']:.2f} ms (the machine's floor now)")


def request(port: int, method: str, path: str, body: object, headers: dict,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **headers})
    response = conn.getresponse()
    payload = response.read()
    if own:
        conn.close()
    return response.status, payload


class LeanConnection:
    """A keep-alive HTTP/1.1 client for the open-loop load: the load generator shares the
    server's two cores, and http.client (header parsing through the email package, a
    response object per request) cost about a third of a core at 1,000 requests/s here,
    CPU the server under test then lacks. This writes a request in one send and reads the
    answer by its Content-Length; enough for flagship's and the bare app's answers."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        data = body or b""
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._receive()
        head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._receive()
        payload, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, payload

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def reference_flag(key: str) -> dict:
    cond = lambda a, o, v: {"attribute": a, "operator": o, "values": v}  # noqa: E731
    return {"key": key, "type": "string", "variants": {"a": "A", "b": "B", "c": "C"},
            "default_variant": "a", "rules": [
                {"kind": "force", "variant": "b", "conditions": [
                    cond("country", "in", ["NL", "BE"]), cond("plan", "eq", ["pro"]),
                    {"segment": "staff"}]},
                {"kind": "force", "variant": "c", "conditions": [
                    cond("app_version", "semver_gte", ["2.0.0"]), cond("email", "ends_with", [".org"]),
                    cond("age", "gt", [30])]},
                {"kind": "rollout", "variant": "b", "percentage": 40, "conditions": [
                    cond("country", "not_in", ["US"]), cond("beta", "eq", [True]),
                    cond("email", "matches", ["^[a-m]"])]}]}


def seed(port: int, headers: dict, flags: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    segment = {"key": "staff", "conditions": [
        {"attribute": "email", "operator": "ends_with", "values": ["@corp.example"]}]}
    request(port, "POST", "/api/v1/segments", segment, headers, conn)
    for i in range(flags):
        status, body = request(port, "POST", "/api/v1/flags", reference_flag(f"flag-{i:04d}"), headers, conn)
        assert status == 201, body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def evaluate_body(i: int) -> tuple[str, dict]:
    return "/api/v1/evaluate", {"context": {"key": f"user-{i}", "country": "NL", "email": f"u{i}@x.org",
                                            "app_version": "2.1.0", "age": i % 80}, "flags": ["flag-0001"]}


def assign_body(i: int) -> tuple[str, dict]:
    # a new unit every time: each request persists a first assignment (the worst case)
    return "/api/v1/experiments/bench-exp/assign", {"context": {"key": f"unit-{i}"}}


def returning_body(i: int) -> tuple[str, dict]:
    # units seen before (the common case): the sticky record is read, nothing is written
    return "/api/v1/experiments/bench-exp/assign", {"context": {"key": f"unit-{i % 2000}"}}


def seed_experiment(port: int, headers: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for path, body in [
            ("/api/v1/layers", {"key": "bench"}),
            ("/api/v1/experiments", {"key": "bench-exp", "flag": "bench-flag", "layer": "bench",
                                     "traffic_percentage": 100, "variants": [
                                         {"variant": "a", "value": "A", "is_control": True},
                                         {"variant": "b", "value": "B"}]}),
            ("/api/v1/experiments/bench-exp/start", None)]:
        status, payload = request(port, "POST", path, body, headers, conn)
        assert status in (200, 201), payload


def open_loop(port: int, headers: dict, rate: int, seconds: float, threads: int = 16,
              make=evaluate_body) -> dict:
    """Requests scheduled at a fixed rate; latency counted from the scheduled start."""
    total = int(rate * seconds)
    counter = itertools.count()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    sent = {"Content-Type": "application/json", **headers}

    def worker() -> None:
        conn = LeanConnection(port)
        while (i := next(counter)) < total:
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            path, body = make(i)
            status, _ = conn.request("POST", path, json.dumps(body).encode(), sent)
            elapsed = time.perf_counter() - scheduled
            with lock:
                latencies.append(elapsed)
                errors[0] += not 200 <= status < 300
        conn.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    duration = time.perf_counter() - start
    return {"requests": total, "achieved_rps": total / duration, "errors": errors[0],
            "p50_ms": percentile(latencies, 0.50) * 1e3, "p95_ms": percentile(latencies, 0.95) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3, "max_ms": max(latencies) * 1e3}


def closed_loop(port: int, headers: dict, seconds: float, threads: int = 8) -> float:
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.perf_counter() < stop:
            request(port, "POST", "/api/v1/evaluate",
                    {"context": {"key": f"u{counts[n]}"}, "flags": ["flag-0001"]}, headers, conn)
            counts[n] += 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / seconds


def snapshot_304(port: int, headers: dict, n: int = 2000) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/v1/sdk/snapshot", headers=headers)
    response = conn.getresponse()
    size, etag = len(response.read()), response.getheader("ETag")
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/api/v1/sdk/snapshot", headers={**headers, "If-None-Match": etag})
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - t0)
        assert response.status == 304
    return {"snapshot_bytes": size, "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--flags", type=int, default=1000)
    parser.add_argument("--closed-seconds", type=float, default=5.0,
                        help="length of the closed-loop throughput run")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="busy share of a competing process on the shared cores (0 to <1)")
    args = parser.parse_args()
    if not 0 <= args.noise < 1:
        parser.error("--noise is the busy share of each 20 ms: from 0 to below 1")
    key = "fsk_admin_benchmark_key_0000000000000000"
    headers = {"Authorization": f"Bearer {key}"}
    with tempfile.TemporaryDirectory() as tmp:
        port, bare_port = free_port(), free_port()
        server = start_server(Path(tmp), port, key)
        bare = start_bare(bare_port)
        noise = start_noise(args.noise)
        if noise is not None:
            print(f"with a competing process busy {args.noise:.0%} of the time on the shared cores")
        try:
            seed(port, headers, args.flags)
            open_loop(port, headers, 200, 1)  # warm up both workers' caches
            result = open_loop(port, headers, args.rate, args.seconds)
            print(f"POST /evaluate at {args.rate} req/s for {args.seconds:.0f} s: "
                  f"achieved {result['achieved_rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
                  f"p95 {result['p95_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                  f"max {result['max_ms']:.0f} ms, errors {result['errors']} (target p99 <= 10 ms)")
            open_loop(bare_port, {}, 200, 1)  # warm up both bare workers
            print(floor(bare_port, args.rate, args.seconds, evaluate_body))
            print(f"POST /evaluate closed loop, 8 connections: "
                  f"{closed_loop(port, headers, args.closed_seconds):.0f} req/s")
            seed_experiment(port, headers)
            # warm up: each worker recompiles the snapshot once after the experiment starts
            open_loop(port, headers, 100, 1, make=lambda i: assign_body(10_000_000 + i))
            sticky = open_loop(port, headers, args.rate, args.seconds, make=assign_body)
            print(f"POST /experiments/{{key}}/assign (new unit each time: sticky write + exposure) "
                  f"at {args.rate} req/s: achieved {sticky['achieved_rps']:.0f} req/s, "
                  f"p50 {sticky['p50_ms']:.2f} ms, p95 {sticky['p95_ms']:.2f} ms, "
                  f"p99 {sticky['p99_ms']:.2f} ms, max {sticky['max_ms']:.0f} ms, "
                  f"errors {sticky['errors']} (target p99 <= 10 ms)")
            print(floor(bare_port, args.rate, args.seconds, assign_body))
            again = open_loop(port, headers, args.rate, args.seconds, make=returning_body)
            print(f"POST /experiments/{{key}}/assign (returning units: sticky read) at {args.rate} req/s: "
                  f"p50 {again['p50_ms']:.2f} ms, p95 {again['p95_ms']:.2f} ms, "
                  f"p99 {again['p99_ms']:.2f} ms, max {again['max_ms']:.0f} ms")
            snap = snapshot_304(port, headers)
            print(f"GET /sdk/snapshot 304 with {args.flags} flags ({snap['snapshot_bytes']} bytes body): "
                  f"p50 {snap['p50_ms']:.2f} ms, p99 {snap['p99_ms']:.2f} ms (target p50 <= 2 ms)")
        finally:
            for proc in (server, bare, *([noise] if noise else [])):
                proc.terminate()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
