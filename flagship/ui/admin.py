"""The audit log (filters, before/after diff) and API keys (create shows the secret once;
revoke; environment binding)."""
from __future__ import annotations

import json
from typing import Any

from flask import request

from flagship import audit, auth
from flagship.diff import json_diff
from flagship.errors import FlagshipError
from flagship.ui.base import (Errors, actor, bp, environments, errors_from, flash_message, link,
                              page_arg, redirect_to, render, require_unbound, runtime)

AUDIT_FILTERS = ("actor", "action", "target_type", "target", "environment")
PER_PAGE = 50


@bp.route("/audit", endpoint="audit")
def audit_log() -> Any:
    """Every change, newest first, filtered by actor, action, object and environment."""
    filters = {name: request.args.get(name, "").strip() for name in AUDIT_FILTERS}
    page = page_arg()
    items, total = audit.list_audit(runtime(), page=page, per_page=PER_PAGE,
                                    **{k: v or None for k, v in filters.items()})
    for item in items:
        # a change: its diff; a creation or deletion: the whole document, as JSON
        both = item["before"] is not None and item["after"] is not None
        item["diff"] = json_diff(item["before"], item["after"]) if both else None
        item["document"] = None if both else json.dumps(item["after"] if item["after"] is not None
                                                        else item["before"], indent=1, default=str)
    return render("ui/audit/list.html", "ui/audit/_table.html", section="ui.audit", items=items,
                  total=total, page=page, per_page=PER_PAGE, filters=filters)


@bp.route("/keys", methods=["GET", "POST"])
def keys() -> Any:
    """API keys: create (the secret is shown once), revoke, bind to an environment."""
    state, errors = {"name": "", "scope": "sdk", "environment": ""}, Errors()
    if request.method == "POST":
        state = {name: request.form.get(name, "").strip() for name in state}
        try:
            require_unbound("managing API keys")
            secret = auth.create_key(runtime(), actor(), state["name"], state["scope"],
                                     environment=state["environment"] or None)
        except FlagshipError as err:
            errors = errors_from(err)
            if not errors.fields and "already exists" in err.message:
                errors.add("name", err.message)
        else:
            created = auth.get_key(runtime(), state["name"])
            return render("ui/keys/created.html", section="ui.keys", key=created, secret=secret,
                          status=201)
    return render("ui/keys/list.html", section="ui.keys", items=auth.list_keys(runtime()),
                  state=state, errors=errors, environments=environments(),
                  status=errors.http_status)


@bp.route("/keys/<path:name>/revoke", methods=["POST"])  # a name may hold "/"
def key_revoke(name: str) -> Any:
    """Revoke a key: it stops working at once (signed-in sessions with it end too)."""
    require_unbound("managing API keys")
    auth.revoke_key(runtime(), actor(), name)
    flash_message(f"Key {name} revoked.")
    return redirect_to(link("ui.keys"))
