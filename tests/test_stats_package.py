"""The stats package's shape: numpy/scipy only, small modules, frozen documented results."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import flagship.experiments.stats as stats_pkg
from flagship.experiments.stats import welch_t_test

PACKAGE = Path(stats_pkg.__file__).parent


def test_engine_does_not_import_statsmodels_or_the_web_stack() -> None:
    probe = ("import sys, flagship.experiments.stats\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'statsmodels', 'flask', 'sqlalchemy', 'redis', 'rq', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) < 400


@pytest.mark.parametrize("name", stats_pkg.__all__)
def test_public_api_is_documented_and_results_are_frozen(name: str) -> None:
    obj = getattr(stats_pkg, name)
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        assert obj.__dataclass_params__.frozen
    if callable(obj) and not getattr(obj, "__module__", "").startswith("typing"):
        assert (obj.__doc__ or "").strip(), name


def test_results_cannot_be_mutated() -> None:
    result = welch_t_test(10, 1.0, 1.0, 10, 1.5, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.p_value = 0.01  # type: ignore[misc]
