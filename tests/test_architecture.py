"""The evaluation core (and the stats engine) import nothing from the web, SQL or queue stacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# -- import directions (static: every import statement, module level or inside functions) -----

def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """flagship module -> the flagship modules and top-level packages it imports."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = found
    return graph


CORE = ("flagship.errors", "flagship.diff", "flagship.jsonvalue", "flagship.flags.model", "flagship.flags.bucketing",
        "flagship.flags.builtin_operators", "flagship.rollout.builtin_guardrails",
        "flagship.flags.operators", "flagship.flags.evaluate", "flagship.flags.rules",
        "flagship.flags.traffic", "flagship.flags.explain", "flagship.flags.snapshot",
        "flagship.experiments.model", "flagship.experiments.allocation",
        "flagship.experiments.assignment", "flagship.experiments.events",
        "flagship.experiments.planning", "flagship.experiments.stats", "flagship.experiments.analysis",
        "flagship.rollout.model", "flagship.rollout.plan", "flagship.rollout.guardrails",
        "flagship.rollout.alerts")
HTTP = ("flagship.api", "flagship.admin_api", "flagship.flags.api", "flagship.flags.schemas",
        "flagship.experiments.api", "flagship.experiments.schemas", "flagship.serving.api",
        "flagship.serving.ofrep", "flagship.serving.stream", "flagship.serving.fastpath",
        "flagship.openapi",
        "flagship.observability", "flagship.config_api", "flagship.rollout.api",
        "flagship.ui", "flask", "flask_smorest", "werkzeug", "webargs")
FRONT_DOORS = ("flagship.app", "flagship.cli", "flagship.server", "flagship.jobs", "flagship.ui")


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(rule: Any, modules: Any) -> list[str]:
    graph = _imports()
    return sorted(f"{m} imports {i}" for m in graph if modules(m) for i in graph[m] if rule(m, i))


def test_the_core_imports_only_the_core() -> None:
    def outside(module: str, imported: str) -> bool:
        return imported.startswith("flagship") and not _within(imported, CORE) \
            and imported not in ("flagship", "flagship.flags", "flagship.experiments", "flagship.rollout")
    assert _violations(outside, lambda m: _within(m, CORE)) == []


def test_flags_never_import_the_domains_above_them() -> None:
    above = ("flagship.experiments", "flagship.rollout", "flagship.serving")
    assert _violations(lambda m, i: _within(i, above), lambda m: _within(m, ("flagship.flags",))) == []


def test_experiments_never_import_rollout_and_only_their_http_layer_uses_serving() -> None:
    def wrong(module: str, imported: str) -> bool:
        if _within(imported, ("flagship.rollout",)):
            return True
        return _within(imported, ("flagship.serving",)) and not _within(module, ("flagship.experiments.api",))
    assert _violations(wrong, lambda m: _within(m, ("flagship.experiments",))) == []


def test_domain_modules_never_import_http_or_front_doors() -> None:
    def domain(module: str) -> bool:
        return not _within(module, HTTP + FRONT_DOORS) and module != "flagship"
    assert _violations(lambda m, i: _within(i, HTTP + FRONT_DOORS), domain) == []


def test_the_import_rules_see_a_violation() -> None:
    graph = _imports()
    assert "flagship.flags.model" in graph["flagship.flags.rules"]
    assert any(_within(i, ("flask",)) for i in graph["flagship.api"])


def test_a_snapshot_needs_no_plugin_manager() -> None:
    code = ("import sys\nfrom flagship import Snapshot\n"
            "Snapshot.from_dict({'revision': 1, 'flags': []}).evaluate('f', {'key': 'u'})\n"
            "assert 'pluggy' not in sys.modules, 'pluggy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
