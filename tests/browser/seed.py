"""Demo data through the public API: flags, a layer, a metric, a running experiment with
exposures and conversions (for the README screenshots and the browser tests)."""
from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any


def boolean_flag(key: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "type": "boolean", "variants": {"on": True, "off": False},
            "default_variant": "off", **extra}


def send_traffic(server: Any, sdk_key: str, experiment: str, rates: dict[str, float],
                 units: int, prefix: str, seed: int = 7) -> None:
    """Exposures split evenly between the variants, then conversions at `rates`."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).isoformat()
    names = list(rates)
    events = []
    for i in range(units):
        unit, variant = f"{prefix}-{i}", names[i % len(names)]
        events.append({"event_id": f"{prefix}-x-{i}", "unit": unit, "event": "$exposure",
                       "experiment": experiment, "variant": variant, "timestamp": now})
        if rng.random() < rates[variant]:
            events.append({"event_id": f"{prefix}-p-{i}", "unit": unit, "event": "purchase",
                           "value": 1, "timestamp": now})
    answer = server.ok("POST", "/api/v1/experiments/events/batch", {"events": events}, key=sdk_key)
    assert not answer["rejected"], answer["rejected"][:3]


def seed_demo(server: Any) -> dict[str, str]:
    sdk = server.ok("POST", "/api/v1/keys", {"name": "demo-sdk", "scope": "sdk"})["key"]
    server.ok("POST", "/api/v1/metrics", {"key": "checkout", "name": "Checkout conversion",
                                          "event": "purchase", "kind": "conversion"})
    server.ok("POST", "/api/v1/layers", {"key": "main", "name": "Main layer"})
    server.ok("POST", "/api/v1/flags", boolean_flag(
        "new-checkout", description="The redesigned checkout flow", tags=["checkout", "critical"],
        rules=[{"kind": "force", "variant": "on", "conditions": [
                   {"attribute": "country", "operator": "in", "values": ["NL", "BE"]}]},
               {"kind": "rollout", "variant": "on", "percentage": 25}]))
    server.ok("POST", "/api/v1/flags", boolean_flag("dark-mode", description="Dark theme", tags=["ui"],
                                                    rules=[{"kind": "rollout", "variant": "on", "percentage": 50}]))
    server.ok("POST", "/api/v1/flags", {"key": "search-ranking", "type": "string", "tags": ["search"],
                                        "variants": {"bm25": "bm25", "neural": "neural"},
                                        "default_variant": "bm25", "description": "Ranking model"})
    server.ok("POST", "/api/v1/flags/dark-mode/disable")
    server.ok("POST", "/api/v1/experiments", {
        "key": "checkout-button", "name": "Green checkout button", "flag": "button-colour",
        "layer": "main", "traffic_percentage": 40, "owner": "ana",
        "hypothesis": "A green button converts better than the blue one",
        "variants": [{"variant": "blue", "value": "#00f", "is_control": True},
                     {"variant": "green", "value": "#0a0"}],
        "success_metrics": ["checkout"], "minimum_sample_size": 3000})
    server.ok("POST", "/api/v1/experiments/checkout-button/start")
    send_traffic(server, sdk, "checkout-button", {"blue": 0.10, "green": 0.15}, 4000, "demo")
    return {"flag": "new-checkout", "experiment": "checkout-button", "sdk": sdk}
