"""`flagship aa-test`: the false-positive rate of each analysis method, by A/A simulation."""
from __future__ import annotations

import dataclasses
import json
import sys
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
@click.option("--live", is_flag=True, help="Run A/A experiments through the real store, "
              "assignment, ingestion, aggregation and results code (temporary SQLite file); "
              "--looks is then the hours over which units arrive (one look per hour).")
def aa_test(simulations: int, looks: int, n: int, alpha: float, metric: str, baseline: float,
            seed: int, as_json: bool, live: bool) -> None:
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
        if live:
            results = _live(simulations, looks, n, alpha, metric, baseline, seed, quiet=as_json)
        else:
            results = simulate_aa(simulations, looks, n, alpha, metric,  # type: ignore[arg-type]
                                  baseline, seed=seed)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors[exc.field][0] if exc.field else exc.message,
                                 param_hint=f"--{exc.field}" if exc.field else None) from None
    settings = {"simulations": simulations, "looks": looks, "n": n, "alpha": alpha,
                "metric": metric, "baseline": baseline, "seed": seed, "live": live}
    if as_json:
        click.echo(json.dumps({"settings": settings,
                               "methods": [dataclasses.asdict(r) for r in results]}, indent=2))
        return
    click.echo(_table(settings, results))


def _live(simulations: int, hours: int, n: int, alpha: float, metric: str, baseline: float,
          seed: int, quiet: bool) -> Any:
    """Run the live A/A experiments on a temporary SQLite database, with a progress bar."""
    import tempfile

    from flagship.db import upgrade
    from flagship.experiments.aa import LiveSettings, run_live
    from flagship.runtime import make_runtime

    with tempfile.TemporaryDirectory(prefix="flagship-aa-") as folder:
        url = f"sqlite:///{folder}/aa.db"
        upgrade(url)
        runtime = make_runtime({"DATABASE_URL": url, "AUTH": False})
        settings = LiveSettings(simulations, n, hours, alpha, metric, baseline, seed)
        try:
            with click.progressbar(length=simulations, label="A/A experiments", file=sys.stderr,
                                   hidden=quiet) as bar:
                return run_live(runtime, settings, progress=lambda done: bar.update(1))
        finally:
            runtime.close()


def _table(settings: dict[str, Any], results: Any) -> str:
    rows = [COLUMNS] + [(r.description, f"{r.false_positive_rate:.4f}", f"{r.standard_error:.4f}",
                         "yes" if r.within_alpha else "no") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    kind = ("A/A through the live pipeline" if settings.get("live") else "A/A simulation")
    looks = "hours of looks" if settings.get("live") else "looks"
    lines = [f"{kind}: {settings['simulations']:,} experiments x {settings['looks']} "
             f"{looks}, {settings['n']:,} units per arm at the last look, {settings['metric']} "
             f"baseline {settings['baseline']:g}, alpha {settings['alpha']:g}, "
             f"seed {settings['seed']}", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
