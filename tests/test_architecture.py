"""The evaluation core (and the stats engine) import nothing from the web, SQL or queue stacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import flagship

FORBIDDEN = ("flask", "sqlalchemy", "sqlmodel", "redis", "rq", "werkzeug")
PACKAGE = Path(flagship.__file__).parent


def loaded_forbidden(code: str) -> list[str]:
    """Run `code` in a fresh interpreter and return the forbidden top-level modules it loaded."""
    probe = code + (
        "\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FORBIDDEN)!r})))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_evaluation_stays_pure() -> None:
    code = (
        "import flagship\n"
        "from flagship import Snapshot\n"
        "snap = Snapshot.from_dict({'revision': 1, 'flags': [{'key': 'f', 'type': 'boolean',"
        " 'variants': {'on': True, 'off': False}, 'default_variant': 'off', 'rules': ["
        "{'kind': 'rollout', 'variant': 'on', 'percentage': 100,"
        " 'conditions': [{'attribute': 'country', 'operator': 'in', 'values': ['US']}]}]}]})\n"
        "result = snap.evaluate('f', {'key': 'u-1', 'country': 'US'})\n"
        "assert (result.value, result.reason) == (True, 'SPLIT'), result\n"
    )
    assert loaded_forbidden(code) == []


def test_probe_detects_a_forbidden_import() -> None:
    assert loaded_forbidden("import json, email") == []
    assert loaded_forbidden("import sys; sys.modules['rq'] = sys") == ["rq"]


PURE = ["flagship.flags.model", "flagship.flags.bucketing", "flagship.flags.operators",
        "flagship.flags.evaluate", "flagship.flags.traffic", "flagship.flags.rules",
        "flagship.flags.explain",
        "flagship.flags.snapshot", "flagship.experiments.allocation", "flagship.experiments.assignment",
        "flagship.experiments.events", "flagship.experiments.stats"]


def test_every_pure_module_and_the_stats_engine_stay_pure() -> None:
    stats = PACKAGE / "experiments" / "stats"
    submodules = [f"flagship.experiments.stats.{path.stem}" for path in sorted(stats.glob("*.py"))
                  if path.stem != "__init__"]
    assert len(submodules) > 5
    assert loaded_forbidden("\n".join(f"import {name}" for name in PURE + submodules)) == []
