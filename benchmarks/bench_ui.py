"""UI server time per page with 1,000 flags and 100 experiments (40 of them running, with
traffic). Target: every page and fragment < 100 ms.

Each screen is requested through the Flask test client (no network: what is measured is
the server's work, from routing to the rendered HTML), signed in, on a SQLite file.

    python benchmarks/bench_ui.py [--flags 1000 --experiments 100 --repeat 15]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flagship.app import create_app
from flagship.db import upgrade

TARGET_MS = 100.0


def populate(app, flags: int, experiments: int, running: int) -> None:
    from flagship.experiments import layers, metrics, service
    from flagship.flags import service as flag_service
    from flagship.jobs import aggregate

    rt = app.extensions["flagship"]
    for i in range(flags):
        rules = [{"kind": "force", "variant": "on",
                  "conditions": [{"attribute": "country", "operator": "in", "values": ["NL", "BE"]}]},
                 {"kind": "rollout", "variant": "on", "percentage": i % 100}]
        flag_service.create_flag(rt, "bench", {
            "key": f"flag-{i:04d}", "type": "boolean", "variants": {"on": True, "off": False},
            "default_variant": "off", "tags": ["critical"] if i % 50 == 0 else [f"team-{i % 7}"],
            "description": f"benchmark flag number {i}", "rules": rules}, "production")
    metrics.create_metric(rt, "bench", {"key": "checkout", "event": "purchase", "kind": "conversion"})
    metrics.create_metric(rt, "bench", {"key": "revenue", "event": "purchase", "kind": "sum"})
    for layer in range(10):
        layers.create_layer(rt, "bench", {"key": f"layer-{layer}"}, "production")
    for i in range(experiments):
        service.create_experiment(rt, "bench", {
            "key": f"exp-{i:03d}", "flag": f"exp-flag-{i:03d}", "layer": f"layer-{i % 10}",
            "traffic_percentage": 10, "success_metrics": ["checkout", "revenue"], "minimum_sample_size": 1000,
            "variants": [{"variant": "a", "value": "a", "is_control": True}, {"variant": "b", "value": "b"}]},
            "production")
        if i < running:
            service.transition(rt, "bench", f"exp-{i:03d}", "start")
    from flagship.auth import create_key

    client = app.test_client()
    sdk = {"Authorization": f"Bearer {create_key(rt, 'bench', 'bench-sdk', 'sdk')}"}
    events = []
    for n in range(4000):
        key = f"exp-{n % 10:03d}"
        events.append({"event_id": f"x{n}", "unit": f"u{n}", "event": "$exposure", "experiment": key,
                       "variant": "ab"[n % 2]})
        if n % 5 == 0:
            events.append({"event_id": f"p{n}", "unit": f"u{n}", "event": "purchase", "value": 10})
    for start in range(0, len(events), 5000):
        answer = client.post("/api/v1/experiments/events/batch", json={"events": events[start:start + 5000]},
                             headers=sdk)
        assert answer.status_code == 200, answer.get_json()
    aggregate(rt)


def sign_in(app):
    from flagship.auth import create_key

    client = app.test_client()
    secret = create_key(app.extensions["flagship"], "bench", "bench-ui", "admin")
    client.get("/ui/sign-in")
    with client.session_transaction("/ui/") as session:
        token = session["csrf"]
    assert client.post("/ui/sign-in", data={"key": secret, "csrf_token": token}).status_code == 303
    return client


SCREENS = [
    ("dashboard", "/ui/", {}),
    ("flags list (page 1 of 1,100)", "/ui/flags", {}),
    ("flags search (fragment)", "/ui/flags?q=number 99", {"HX-Request": "true"}),
    ("flags by tag, page 3", "/ui/flags?tag=team-3&page=3", {}),
    ("flag detail (rule editor)", "/ui/flags/flag-0500", {}),
    ("explain (fragment)", '/ui/flags/flag-0500/explain?context={"key":"u1","country":"NL"}', {"HX-Request": "true"}),
    ("flag revisions", "/ui/flags/flag-0500/revisions", {}),
    ("flag scheduled changes", "/ui/flags/flag-0500/schedule", {}),
    ("experiments list", "/ui/experiments", {}),
    ("experiment form", "/ui/experiments/-/new", {}),
    ("flag suggestions (fragment)", "/ui/experiments/-/flag-options?flag=flag-01", {"HX-Request": "true"}),
    ("experiment overview", "/ui/experiments/exp-001", {}),
    ("monitor (fragment)", "/ui/experiments/exp-001/monitor", {"HX-Request": "true"}),
    ("verdict (dashboard cell)", "/ui/experiments/exp-001/verdict", {"HX-Request": "true"}),
    ("results", "/ui/experiments/exp-001/results", {}),
    ("lift over time (fragment)", "/ui/experiments/exp-001/lift/checkout", {"HX-Request": "true"}),
    ("experiment alert rules", "/ui/experiments/exp-001/alerts", {}),
    ("rollouts", "/ui/rollouts", {}),
    ("rollout templates", "/ui/rollouts/templates", {}),
    ("alerts", "/ui/alerts", {}),
    ("webhooks", "/ui/webhooks", {}),
    ("layers", "/ui/layers", {}),
    ("layer", "/ui/layers/layer-1", {}),
    ("segments", "/ui/segments", {}),
    ("metrics", "/ui/metrics", {}),
    ("audit log", "/ui/audit", {}),
    ("API keys", "/ui/keys", {}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", type=int, default=1000)
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--running", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        upgrade(url)
        app = create_app({"DATABASE_URL": url, "ENTRY_POINTS": False, "PLUGINS": "", "AUTH": True})
        started = time.perf_counter()
        populate(app, args.flags, args.experiments, args.running)
        print(f"populated {args.flags} flags + {args.experiments} experiments ({args.running} running) "
              f"in {time.perf_counter() - started:.1f} s")
        client = sign_in(app)
        worst = 0.0
        print(f"{'screen':32} {'median':>9} {'p95':>9}   target < {TARGET_MS:.0f} ms")
        for name, path, headers in SCREENS:
            client.get(path, headers=headers)  # warm: templates compiled, snapshot built
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                response = client.get(path, headers=headers)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, (path, response.status_code, response.text[:500])
            times.sort()
            median, p95 = statistics.median(times), times[int(len(times) * 0.95) - 1]
            worst = max(worst, p95)
            print(f"{name:32} {median:7.1f}ms {p95:7.1f}ms   {'ok' if p95 < TARGET_MS else 'SLOW'}")
        app.extensions["flagship"].db.dispose()
    print(f"slowest p95: {worst:.1f} ms ({'met' if worst < TARGET_MS else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
