"""The `flagship` command line: serve, db, keys, plugins."""
from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from typing import Any

import click

from flagship.config import load_config
from flagship.errors import ConfigError, FlagshipError


def _settings(**overrides: Any) -> dict[str, Any]:
    try:
        return load_config({k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None


def make_cli_runtime(**overrides: Any) -> Any:
    """The runtime a command works against (no Flask app): FLAGSHIP_* settings plus overrides."""
    from flagship.runtime import make_runtime

    try:
        return make_runtime({k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None


_runtime = make_cli_runtime


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """flagship: feature flags, experiments and progressive delivery."""


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to FLAGSHIP_DATABASE_URL."""
    from flagship.db import upgrade

    settings = _settings()
    upgrade(settings["DATABASE_URL"])
    click.echo(f"database at head: {settings['DATABASE_URL']}", err=True)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--scope", type=click.Choice(["admin", "sdk"]), required=True)
@click.option("--name", required=True, help="A unique name, e.g. the service that uses it.")
@click.option("--environment", default=None,
              help="Bind the key to this environment (SDK keys default to the default one).")
def keys_create(scope: str, name: str, environment: str | None) -> None:
    """Create a key and print it alone on stdout (it is shown only once)."""
    from flagship.auth import create_key

    try:
        secret = create_key(_runtime(), "cli", name, scope, environment=environment)
    except FlagshipError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(secret)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def keys_list(as_json: bool) -> None:
    """List keys (never their secrets)."""
    from flagship.auth import list_keys

    rows = list_keys(_runtime())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "live"
        where = row["environment"] or "all environments"
        click.echo(f"{row['name']:<24} {row['scope']:<6} {where:<18} {row['prefix']}...  {state}")


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke a key by name."""
    from flagship.auth import revoke_key

    try:
        revoke_key(_runtime(), "cli", name)
    except FlagshipError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"revoked {name}", err=True)


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_cmd(as_json: bool) -> None:
    """List loaded plugins, their hooks and the operators they provide."""
    from flagship.plugins import describe_plugins

    runtime = _runtime()
    rows = describe_plugins(runtime.plugins)
    operators = sorted(runtime.operators)
    if as_json:
        click.echo(json.dumps({"plugins": rows, "operators": operators}, indent=2))
        return
    for row in rows:
        dist = f" ({row['distribution']})" if row["distribution"] else ""
        click.echo(f"{row['name']}{dist}: {', '.join(row['hooks'])}")
    click.echo(f"operators: {', '.join(operators)}")


def ensure_admin_key(runtime: Any, out: Any = sys.stderr) -> str | None:
    """First start: with no admin key at all, create one (or store FLAGSHIP_ADMIN_KEY)."""
    from flagship.auth import count_live_keys, create_key, list_keys

    if count_live_keys(runtime, "admin"):
        return None
    taken = {row["name"] for row in list_keys(runtime)}
    name = next(n for n in (f"admin-{i}" if i else "admin" for i in range(1000)) if n not in taken)
    given = runtime.config["ADMIN_KEY"] or None
    secret = create_key(runtime, "bootstrap", name, "admin", secret=given)
    if given is None:
        print(f"\nCreated the first admin API key (shown once, keep it):\n\n    {secret}\n\n"
              f"Use it as: curl -H 'Authorization: Bearer {secret}' "
              f"http://{runtime.config['HOST']}:{runtime.config['PORT']}/api/v1/flags\n"
              "More keys: flagship keys create --scope admin|sdk --name NAME\n", file=out)
    return secret


def check_default_environment(runtime: Any) -> None:
    """FLAGSHIP_DEFAULT_ENVIRONMENT must name an environment: a typo started a server that
    answered every call naming none with 404. Not checked before migrations ran (/readyz
    reports those)."""
    from sqlalchemy.exc import SQLAlchemyError

    from flagship.environments import list_environments

    try:
        known = [env["key"] for env in list_environments(runtime)]
    except SQLAlchemyError:
        return
    default = runtime.config["DEFAULT_ENVIRONMENT"]
    if known and default not in known:
        raise click.UsageError(f"FLAGSHIP_DEFAULT_ENVIRONMENT={default!r} names no environment; "
                               f"there are: {', '.join(known)} (create it first, or pick one)")


@main.command("serve")
@click.option("--host", default=None, help="Bind address [FLAGSHIP_HOST, 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [FLAGSHIP_PORT, 8000].")
@click.option("--workers", type=int, default=None, help="Processes [FLAGSHIP_WORKERS, 2].")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the server with gunicorn (migrates first on the embedded SQLite default)."""
    from flagship.db import upgrade
    from flagship.server import prepare_metrics_dir, run_gunicorn

    prepare_metrics_dir()  # before anything imports prometheus_client
    # one signing key for every worker: a UI session signed by one must be valid in the others
    os.environ.setdefault("FLAGSHIP_SECRET_KEY", secrets.token_hex(32))
    settings = _settings(HOST=host, PORT=port, WORKERS=workers)
    if settings["DATABASE_URL"].startswith("sqlite"):
        upgrade(settings["DATABASE_URL"])
    runtime = _runtime(HOST=settings["HOST"], PORT=settings["PORT"])
    from flagship.observability import configure_logging

    configure_logging(runtime.config["LOG_FORMAT"])
    problem = runtime.assignments.ping() if runtime.config["REDIS_URL"] else None
    if problem:
        logging.getLogger("flagship.serve").error(
            "FLAGSHIP_REDIS_URL is set but Redis cannot be reached (%s): serving anyway; sticky "
            "assignments use the SQL exposures table until it is back", problem)
    check_default_environment(runtime)
    if runtime.config["AUTH"]:
        ensure_admin_key(runtime)
    runtime.db.dispose()  # each gunicorn worker opens its own connections after fork
    click.echo(f"flagship serving on http://{settings['HOST']}:{settings['PORT']} "
               f"({settings['WORKERS']} workers; docs at /api/docs)", err=True)
    run_gunicorn(settings)


@main.command("jobs")
@click.option("--status-file", default=None,
              help="Write the jobs' status here every second (what `serve`'s /readyz reports).")
@click.option("--parent", type=int, default=None, hidden=True,
              help="Exit when this process (the gunicorn master that started us) is gone.")
def jobs_command(status_file: str | None, parent: int | None) -> None:
    """Run the periodic jobs in the foreground: aggregation, WAL checkpoints, the rollout round.

    `flagship serve` runs this in a process of its own next to its workers; run it yourself
    when the app is served some other way. Stops on SIGTERM or Ctrl-C.
    """
    from flagship.jobs import run_jobs
    from flagship.observability import configure_logging
    from flagship.runtime import make_runtime

    runtime = make_runtime(server=True)
    configure_logging(runtime.config["LOG_FORMAT"])
    run_jobs(runtime, status_file, parent)


def _register_more_commands() -> None:
    from flagship.cli.configfile import config
    from flagship.cli.data import events, experiments
    from flagship.cli.rollouts import rollouts, worker
    from flagship.cli.stats import aa_test

    main.add_command(events)
    main.add_command(experiments)
    main.add_command(aa_test)
    main.add_command(config)
    main.add_command(worker)
    main.add_command(rollouts)


_register_more_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
