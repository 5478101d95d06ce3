"""`flagship worker` and `flagship rollouts tick`: the periodic round on RQ or from cron."""
from __future__ import annotations

import json

import click

from flagship.cli import make_cli_runtime


@click.command("worker")
@click.option("--burst", is_flag=True, help="Run the queued jobs, then exit.")
@click.option("--simple", is_flag=True, help="Run jobs in this process (no fork per job).")
def worker(burst: bool, simple: bool) -> None:
    """Run an RQ worker for the periodic round (needs FLAGSHIP_REDIS_URL)."""
    from flagship.jobs import run_worker

    runtime = make_cli_runtime()
    if not runtime.config["REDIS_URL"]:
        raise click.UsageError("flagship worker needs FLAGSHIP_REDIS_URL (without Redis, "
                               "`flagship serve` runs the round itself)")
    click.echo(f"flagship worker: queue flagship, a round every {runtime.config['ROLLOUT_INTERVAL']} s",
               err=True)
    run_worker(runtime, burst=burst, simple=simple)


@click.group("rollouts")
def rollouts() -> None:
    """Rollout commands."""


@rollouts.command("tick")
@click.option("--slot", type=int, default=None, help="Evaluate this slot (default: the current one).")
def tick(slot: int | None) -> None:
    """Run one periodic round and exit (for system cron, Kubernetes CronJobs, serverless)."""
    from flagship.jobs import periodic_round

    runtime = make_cli_runtime()
    try:
        report = periodic_round(runtime, slot)
    finally:
        runtime.close()
    click.echo(json.dumps(report, default=str))
