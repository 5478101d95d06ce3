"""Evaluation throughput of the pure core on the reference flag.

Run: ``.venv/bin/python benchmarks/bench_core.py [--evaluations N] [--rounds R]``.
The reference flag has three force rules of three conditions each (one a segment
reference) and a rollout rule; contexts vary so every path of the flag is exercised.
Reports the best round, the usual way to read a benchmark on a noisy machine.
"""
from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from typing import Any

from flagship import Snapshot

TARGET_US = 5.0

REFERENCE = {
    "revision": 1,
    "segments": [{
        "key": "beta-testers",
        "included": ["user-7", "user-42"],
        "excluded": ["user-13"],
        "conditions": [
            {"attribute": "email", "operator": "ends_with", "values": ["@acme.com", "@acme.io"]},
            {"attribute": "beta_opt_in", "operator": "eq", "values": [True]},
        ],
    }],
    "flags": [{
        "key": "checkout-v2",
        "type": "string",
        "variants": {"legacy": "v1", "new": "v2", "new-fast": "v2-fast"},
        "default_variant": "legacy",
        "allowlist": {"qa-1": "new", "qa-2": "new-fast"},
        "blocklist": ["bot-1"],
        "rules": [
            {"id": "beta", "kind": "force", "variant": "new-fast", "conditions": [
                {"attribute": "country", "operator": "in", "values": ["US", "CA", "GB"]},
                {"attribute": "plan", "operator": "eq", "values": ["enterprise"]},
                {"segment": "beta-testers"},
            ]},
            {"id": "mobile", "kind": "force", "variant": "new", "conditions": [
                {"attribute": "platform", "operator": "in", "values": ["ios", "android"]},
                {"attribute": "app_version", "operator": "semver_gte", "values": ["4.2.0"]},
                {"attribute": "email", "operator": "ends_with", "values": ["@example.org"],
                 "negate": True},
            ]},
            {"id": "loyal", "kind": "force", "variant": "new", "conditions": [
                {"attribute": "orders", "operator": "gte", "values": [10]},
                {"attribute": "signup", "operator": "before", "values": ["2023-01-01T00:00:00Z"]},
                {"attribute": "country", "operator": "not_in", "values": ["FR"]},
            ]},
            {"id": "ramp", "kind": "rollout", "variant": "new", "percentage": 25,
             "conditions": [{"attribute": "country", "operator": "in",
                             "values": ["US", "CA", "GB", "DE"]}]},
        ],
    }],
}


def make_contexts(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Build varied contexts that reach every rule, the defaults and the overrides."""
    rng = random.Random(seed)
    contexts = []
    for i in range(count):
        context: dict[str, Any] = {
            "key": rng.choice(["qa-1", "bot-1"]) if i % 97 == 0 else f"user-{i}",
            "country": rng.choice(["US", "CA", "GB", "DE", "FR", "JP"]),
            "plan": rng.choice(["free", "pro", "enterprise"]),
            "platform": rng.choice(["web", "ios", "android"]),
            "app_version": rng.choice(["4.1.9", "4.2.0", "4.10.1", "5.0.0-beta.2"]),
            "orders": rng.randint(0, 20),
            "signup": rng.choice(["2021-06-01T00:00:00Z", "2024-02-01T00:00:00Z"]),
        }
        if rng.random() < 0.5:
            context["email"] = f"u{i}@" + rng.choice(["acme.com", "example.org", "mail.net"])
            context["beta_opt_in"] = rng.random() < 0.5
        contexts.append(context)
    return contexts


def run_round(snapshot: Snapshot, contexts: list[dict[str, Any]], evaluations: int) -> float:
    """Return the seconds taken by `evaluations` evaluations cycling over `contexts`."""
    evaluate, n = snapshot.evaluate, len(contexts)
    loops, rest = divmod(evaluations, n)
    batch = contexts * loops + contexts[:rest]
    start = time.perf_counter()
    for context in batch:
        evaluate("checkout-v2", context)
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print evaluations/s and µs per evaluation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    snapshot = Snapshot.from_dict(REFERENCE)
    contexts = make_contexts(5000)
    reasons = Counter((e.reason, e.rule_id) for e in map(
        lambda c: snapshot.evaluate("checkout-v2", c), contexts))
    best = min(run_round(snapshot, contexts, args.evaluations) for _ in range(args.rounds))
    per_eval_us = best / args.evaluations * 1e6
    print(f"outcome mix over {len(contexts)} contexts: {dict(sorted(reasons.items(), key=str))}")
    print(f"best of {args.rounds} rounds x {args.evaluations} evaluations: "
          f"{args.evaluations / best:,.0f} evaluations/s, {per_eval_us:.2f} µs/evaluation "
          f"(target <= {TARGET_US} µs: {'met' if per_eval_us <= TARGET_US else 'MISSED'})")


if __name__ == "__main__":
    main()
