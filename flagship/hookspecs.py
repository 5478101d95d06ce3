"""Hook specifications: the plugin reference for flagship.

A plugin is any module or object with functions decorated by ``@hookimpl`` whose names
match the specs below. Third-party plugins are found through the ``flagship``
entry-point group (``[options.entry_points] flagship = myplugin = my_pkg.plugin``) or
named in ``FLAGSHIP_PLUGINS``. The built-in operators are registered through exactly
the same hooks (see ``flagship/plugins/``).

No hook runs on the evaluation hot path: ``register_operators`` is collected once when
the app (or an SDK client) builds its operator table, and the engine then calls plain
functions from a dict.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from flagship.flags.operators import Operator

hookspec = pluggy.HookspecMarker("flagship")
hookimpl = pluggy.HookimplMarker("flagship")


@hookspec
def register_operators() -> Iterable["Operator"]:
    """Return targeting operators this plugin provides.

    Returns:
        An iterable of :class:`flagship.flags.operators.Operator`. Each has a unique
        ``name`` (the string used in a condition's ``operator`` field), a ``compile``
        function that validates a condition's ``values`` list when a flag or segment is
        written (raise ``ValueError`` with a message a person can act on; the API turns
        it into a 422 naming the field) and returns a prepared form, and a ``match``
        function ``match(attribute_value, prepared) -> bool`` called during evaluation.
        ``match`` may raise ``TypeError``/``ValueError`` for an attribute it cannot
        compare; the engine treats that as "no match".

    Fires: once when the operator table is built (app start, SDK client start).
    Two plugins registering the same name is a start-up error.
    """


@hookspec
def track_event(event: dict[str, Any]) -> None:
    """Observe a committed change.

    Args:
        event: ``{"action": "flag.create" | "flag.update" | ..., "actor": str,
            "target_type": "flag" | "segment" | "api_key" | ..., "target": key,
            "before": dict | None, "after": dict | None, "at": ISO-8601 str}``,
            the same record the audit log stores.

    Fires: after the transaction that made the change has committed, once per audit
    record, in the process that made the change. Exceptions are logged and swallowed:
    a notifier can never undo or block a committed write.
    """
