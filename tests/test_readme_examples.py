"""The README's walk-through runs as written: the quick start's curl commands, then the
progressive-delivery example built on them (it once named a rule the quick start never
created, and a metric nobody had made)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SERVER = "http://127.0.0.1:8000"


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    return README[start:README.index("\n## ", start + 1)]


def _curls(section: str) -> list[tuple[str, str, object]]:
    """(method, path, body) of every curl command in the section's sh blocks, in order."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        words = shlex.split(block.replace("\\\n", " "), comments=True)
        starts = [i for i, word in enumerate(words) if word == "curl"] + [len(words)]
        for begin, end in zip(starts, starts[1:]):
            command = words[begin:end]
            url = next(w for w in command if w.startswith(SERVER))
            body = json.loads(command[command.index("-d") + 1]) if "-d" in command else None
            method = command[command.index("-X") + 1] if "-X" in command else (
                "POST" if body is not None else "GET")
            found.append((method, url.removeprefix(SERVER), body))
    return found


def test_the_quick_start_and_the_rollout_example_run_as_written(client, admin):
    steps = _curls(_section("Quick start")) + _curls(_section("Progressive delivery: rollouts, guardrails, rollback"))
    assert [path for _, path, _ in steps] == [
        "/api/v1/flags", "/api/v1/evaluate", "/api/v1/metrics", "/api/v1/rollout-templates",
        "/api/v1/rollouts", "/api/v1/rollouts/1/start"]
    for method, path, body in steps:
        response = client.open(path, method=method, json=body, headers=admin)
        assert response.status_code in (200, 201), (method, path, response.json)
    assert client.get("/api/v1/rollouts/1", headers=admin).json["status"] == "running"
