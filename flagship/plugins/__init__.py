"""Plugin manager construction and the built-in plugins.

Built-ins register through the same hooks a third-party plugin uses
(datasette's DEFAULT_PLUGINS pattern).
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable

import pluggy

from flagship import hookspecs
from flagship.errors import ConfigError

DEFAULT_PLUGINS: tuple[str, ...] = ("flagship.plugins.default_operators",
                                   "flagship.plugins.default_guardrails",
                                   # `module:object`: one plugin per notifier, so each is
                                   # retried on its own (see call_notifiers)
                                   "flagship.plugins.default_notifiers:log",
                                   "flagship.plugins.default_notifiers:webhooks")


def make_plugin_manager(extra: Iterable[str] = (), entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, `flagship` entry points and `extra` modules."""
    pm = pluggy.PluginManager("flagship")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        module, _, attribute = name.partition(":")
        plugin = importlib.import_module(module)
        pm.register(getattr(plugin, attribute) if attribute else plugin, name=name)
    if entry_points:
        pm.load_setuptools_entrypoints("flagship")
    for name in extra:
        name = name.strip()
        if not name or pm.has_plugin(name):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"FLAGSHIP_PLUGINS: cannot import plugin {name!r}: {exc}") from exc
        pm.register(module, name=name)
    return pm


def operator_table(pm: pluggy.PluginManager) -> dict[str, Any]:
    """Collect every plugin's operators into one name -> Operator table (built once)."""
    from flagship.flags.operators import build_operator_table

    return build_operator_table(pm.hook.register_operators())


def guardrail_table(pm: pluggy.PluginManager) -> dict[str, Any]:
    """Collect every plugin's guardrails into one name -> Guardrail table (built once)."""
    from flagship.rollout.guardrails import build_guardrail_table

    return build_guardrail_table(pm.hook.register_guardrails())


def call_notifiers(pm: pluggy.PluginManager, event: dict[str, Any],
                   only: Iterable[str] | None = None, runtime: Any = None) -> dict[str, str]:
    """Call each `notify` implementation on its own; return {plugin name: error} of those that raised.

    pluggy's ``pm.hook.notify(...)`` stops at the first raising implementation, so the
    implementations are called one by one. ``only`` restricts the call to those plugin
    names (a redelivery to the notifiers that failed last time); ``runtime`` is passed to
    implementations that declare it.
    """
    arguments = {"event": event, "runtime": runtime}
    wanted = None if only is None else set(only)
    failures: dict[str, str] = {}
    for impl in pm.hook.notify.get_hookimpls():
        if wanted is not None and impl.plugin_name not in wanted:
            continue
        try:
            # pluggy lets an implementation take a subset of the spec's arguments
            impl.function(*[arguments[name] for name in impl.argnames])
        except Exception as exc:  # noqa: BLE001 - one notifier must never block another
            failures[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
            from flagship import telemetry  # here: `serve` picks the metrics mode before import

            telemetry.NOTIFIER_FAILURES.labels(impl.plugin_name).inc()
    return failures


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Name, module and hooks of every registered plugin (for `flagship plugins`)."""
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: str(item[0])):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        dist = next((d for p, d in pm.list_plugin_distinfo() if p is plugin), None)
        rows.append({"name": name, "module": getattr(plugin, "__name__", repr(plugin)),
                     "hooks": hooks,
                     "distribution": f"{dist.project_name} {dist.version}" if dist else None})
    return rows
