"""`flagship config export|apply`: configuration as code (see `flagship.configfile`)."""
from __future__ import annotations

import json
from typing import Any

import click

from flagship.errors import FlagshipError


@click.group("config")
def config() -> None:
    """Export the configuration to a file, or apply one."""


@config.command("export")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml")
def config_export(fmt: str) -> None:
    """Write every environment, metric, segment, flag, layer, experiment, rollout template
    and webhook (without its secret) to stdout."""
    from flagship.cli import make_cli_runtime
    from flagship.configfile import dump_text, export_config

    doc = export_config(make_cli_runtime())
    click.echo(json.dumps(doc, indent=2) if fmt == "json" else dump_text(doc), nl=fmt == "json")


@config.command("apply")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--dry-run", is_flag=True, help="Show the changes; apply nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def config_apply(file: Any, dry_run: bool, as_json: bool) -> None:
    """Apply FILE (YAML or JSON; - for stdin): a diff per object, then one transaction."""
    from flagship.cli import make_cli_runtime
    from flagship.configfile import apply_config, load_text

    try:
        result = apply_config(make_cli_runtime(), "cli", load_text(file.read()), dry_run=dry_run)
    except FlagshipError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    for line in describe(result):
        click.echo(line)


def describe(result: dict[str, Any]) -> list[str]:
    """The result as lines a person reads: one per object, one per changed field."""
    lines = []
    for change in result["changes"]:
        where = f" ({change['environment']})" if change["environment"] else ""
        mark = "+" if change["action"] == "create" else "~"
        lines.append(f"{mark} {change['kind']} {change['key']}{where}")
        if change.get("secret_generated"):
            lines.append("    a signing secret is generated when this is applied (shown once)")
        if change["action"] == "update":
            for item in change["changes"]:
                lines.append(f"    {item['path'] or '.'}: {_short(item.get('before'))} -> "
                             f"{_short(item.get('after'))}")
    lines.append(f"{len(result['changes'])} to change, {result['unchanged']} unchanged")
    if result["applied"]:
        lines.append(f"applied as change set {result['change_set']}")
    elif result["dry_run"]:
        lines.append("dry run: nothing was applied")
    for name, secret in result.get("secrets", {}).items():
        lines.append(f"signing secret of webhook {name} (shown this once): {secret}")
    return lines


def _short(value: Any, limit: int = 80) -> str:
    text = "(none)" if value is None else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."

