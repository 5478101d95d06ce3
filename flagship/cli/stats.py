"""`flagship aa-test`: the false-positive rate of each analysis method, by A/A simulation."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

COLUMNS = ("method", "false-positive rate", "MC s.e.", "within alpha + 2 SE")


@click.command("aa-test")
@click.option("--simulations", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Simulated A/A experiments.")
@click.option("--looks", type=click.IntRange(1, 100), default=20, show_default=True,
              help="Equally spaced analyses per experiment.")
@click.option("--n", "n", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Units per arm at the last look.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Significance level (two-sided).")
@click.option("--metric", type=click.Choice(["conversion", "mean"]), default="conversion",
              show_default=True, help="Binary conversions, or normal values with sd 1.")
@click.option("--baseline", type=float, default=0.1, show_default=True,
              help="Conversion rate (or mean) of both arms.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def aa_test(simulations: int, looks: int, n: int, alpha: float, metric: str, baseline: float,
            seed: int, as_json: bool) -> None:
    """Simulate A/A experiments and print each method's false-positive rate.

    Methods: a fixed-horizon test at the last look, naive peeking at every look, the
    always-valid mSPRT and O'Brien-Fleming group-sequential boundaries. The rate is the
    share of experiments declared significant although both arms are the same; its
    Monte-Carlo standard error is sqrt(p (1 - p) / simulations).
    """
    # Imported here so that every other `flagship` command starts without numpy and scipy.
    from flagship.errors import ValidationError
    from flagship.experiments.stats.simulate import simulate_aa

    try:
        results = simulate_aa(simulations, looks, n, alpha, metric,  # type: ignore[arg-type]
                              baseline, seed=seed)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors[exc.field][0] if exc.field else exc.message,
                                 param_hint=f"--{exc.field}" if exc.field else None) from None
    settings = {"simulations": simulations, "looks": looks, "n": n, "alpha": alpha,
                "metric": metric, "baseline": baseline, "seed": seed}
    if as_json:
        click.echo(json.dumps({"settings": settings,
                               "methods": [dataclasses.asdict(r) for r in results]}, indent=2))
        return
    click.echo(_table(settings, results))


def _table(settings: dict[str, Any], results: Any) -> str:
    rows = [COLUMNS] + [(r.description, f"{r.false_positive_rate:.4f}", f"{r.standard_error:.4f}",
                         "yes" if r.within_alpha else "no") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [f"A/A simulation: {settings['simulations']:,} experiments x {settings['looks']} "
             f"looks, {settings['n']:,} units per arm at the last look, {settings['metric']} "
             f"baseline {settings['baseline']:g}, alpha {settings['alpha']:g}, "
             f"seed {settings['seed']}", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
