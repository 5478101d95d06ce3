"""Configuration as code: the store's configuration as one document, and applying one.

The document (YAML on disk, JSON over HTTP) has a format version and one top-level
section per kind of object, each a mapping from key to object, so a change in git is a
change of one object and new kinds of object arrive as new sections:

    flagship: 1
    environments: {production: {name, colour, requires_approval, position}}
    metrics:      {checkout: {event, kind, direction, ...}}
    segments:     {production: {staff: {conditions: [...]}}}
    flags:        {new-checkout: {type, variants, description, tags, salt,
                                  environments: {production: {enabled, rules, default_variant,
                                                              off_variant, allowlist, blocklist}}}}
    layers:       {main: {environment, name, description, salt}}
    experiments:  {checkout-button: {environment, flag, layer, variants, ...}}
    rollout_templates: {guarded: {name, description, policy}}
    webhooks:     {ops: {url, event_types, environment, enabled}}   # keyed by name; no secret

Applying makes the objects named in the file look as written: missing ones are created,
different ones updated, objects the file does not name are left alone (nothing is
deleted), and so are environments of a flag the file does not list. A plan (the diff per
object) is read first; applying runs every change in one transaction (`change_set`) with
each object's version checked against the plan, so a concurrent change aborts it all,
naming the object. It is audited as one change set: one `config.apply` record listing the
changes, beside the objects' own records. Applying a file twice changes nothing the
second time (objects are compared in their canonical form). Experiment rules on flags
belong to the experiments section (they are kept in place, not read from `flags`); an
experiment's lifecycle state is not configuration and is neither exported nor applied.
A webhook's signing secret is never in the file: a webhook the file creates gets a
generated one, returned once in the apply result (`secrets`), and an update keeps it.
"""
from __future__ import annotations

import copy
import uuid
from typing import Any, Callable, Mapping

import yaml

from flagship import environments as environment_service
from flagship.configplan import ENVIRONMENT_FIELDS, LAYER_FIELDS, SECTIONS, Change, diff, webhook_document
from flagship.errors import ConflictError, ValidationError
from flagship.experiments import layers as layer_service, metrics as metric_service
from flagship.experiments import service as experiment_service
from flagship.experiments.model import metric_to_dict
from flagship.experiments.store import config as experiment_store
from flagship.flags import segments as segment_service, service as flag_service, store as flag_store
from flagship.jsonvalue import json_problem
from flagship.rollout import notifications, notify_store, service as rollout_service, store as rollout_store
from flagship.runtime import Runtime

FORMAT_VERSION = 1
LABELS = {"rollout_template": "rollout template"}


# -- the text form -----------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """Safe YAML without aliases (no alias bombs) and without timestamp parsing (dates
    stay the ISO strings the API takes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not supported in a configuration file")
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_text(text: str) -> dict[str, Any]:
    """Parse a configuration file (YAML, or JSON, which is YAML) and check its shape."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError) as error:
        raise ValidationError(f"not a valid YAML configuration file: {error}") from None
    return check_document(doc)


def dump_text(doc: Mapping[str, Any]) -> str:
    """The YAML form of an exported document (keys in the order written)."""
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, default_flow_style=False)


def check_document(doc: Any) -> dict[str, Any]:
    """The document's format version, sections and bounds (depth, integers, NUL)."""
    if not isinstance(doc, dict):
        raise ValidationError("a configuration file is a mapping of sections")
    problem = json_problem(doc)
    if problem is not None:
        raise ValidationError(problem[1], field=problem[0])
    if doc.get("flagship", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValidationError(f"format version {doc.get('flagship')!r} is not supported; this "
                              f"server reads version {FORMAT_VERSION}", field="flagship")
    unknown = sorted(str(k) for k in doc if k not in ("flagship", *SECTIONS))
    if unknown:
        raise ValidationError(f"unknown section {unknown[0]!r}; known: {', '.join(SECTIONS)}",
                              field=unknown[0])
    for section in SECTIONS:
        if not isinstance(doc.get(section) or {}, dict):
            raise ValidationError("must be a mapping of key -> object", field=section)
    return doc


# -- export ------------------------------------------------------------------------------------

def _without(doc: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in doc.items() if k not in names}


def _unmanaged(targeting: dict[str, Any]) -> dict[str, Any]:
    rules = [r for r in targeting.get("rules", []) if r.get("kind") not in flag_service.MANAGED_KINDS]
    return {**targeting, "rules": rules}


def export_config(runtime: Runtime) -> dict[str, Any]:
    """Every environment, metric, segment, flag (with its targeting per environment),
    layer, experiment configuration, rollout template and webhook (without its secret),
    as one document."""
    out: dict[str, Any] = {"flagship": FORMAT_VERSION}
    with runtime.db.session() as session:
        envs = flag_store.environments(session)
        out["environments"] = {e.key: {f: getattr(e, f) for f in ENVIRONMENT_FIELDS} for e in envs}
        metrics, _ = experiment_store.query_metrics(session, 0, 1_000_000)
        out["metrics"] = {m.key: _without(metric_to_dict(experiment_store.metric_of(m)), "key")
                          for m in metrics}
        out["segments"] = {e.key: {s.key: _without(s.document, "key")
                                   for s in flag_store.segments_in(session, e.key)} for e in envs}
        flags: dict[str, Any] = {}
        for env in envs:
            for record in flag_store.flags_in(session, env.key):
                entry = flags.setdefault(record.key, {
                    **_without(flag_service.definition(record.document), "key"), "environments": {}})
                entry["environments"][env.key] = _unmanaged(flag_service.targeting(record.document))
        out["flags"] = dict(sorted(flags.items()))
        out["layers"] = {layer.key: {"environment": layer.environment,
                                     **{f: getattr(layer, f) for f in LAYER_FIELDS}}
                         for layer in experiment_store.layers(session)}
        out["experiments"] = {e.key: {"environment": e.environment, **_without(e.document, "key")}
                              for e in experiment_store.experiments(session)}
        out["rollout_templates"] = {t.key: rollout_service.template_document(t)
                                    for t in rollout_store.templates(session)}
        out["webhooks"] = dict(sorted((w.name, webhook_document(w)) for w in notify_store.webhooks(session)))
    return out


# -- plan --------------------------------------------------------------------------------------

def plan(runtime: Runtime, doc: Mapping[str, Any]) -> tuple[list[Change], int]:
    """What applying `doc` would change, object by object (and how many are unchanged)."""
    return diff(runtime, check_document(doc))


# -- apply -------------------------------------------------------------------------------------

def apply_config(runtime: Runtime, actor: str, doc: Mapping[str, Any],
                 dry_run: bool = False) -> dict[str, Any]:
    """Plan, and unless `dry_run`, apply the plan in one transaction."""
    changes, unchanged = plan(runtime, doc)
    result = {"dry_run": dry_run, "changes": [c.to_dict() for c in changes], "unchanged": unchanged,
              "applied": False, "change_set": None, "secrets": {}}
    if dry_run or not changes:
        return result
    result["change_set"], result["secrets"] = execute(runtime, actor, changes)
    result["applied"] = True
    return result


def execute(runtime: Runtime, actor: str, changes: list[Change]) -> tuple[str, dict[str, str]]:
    """Apply planned changes in one transaction, each object's version checked against the
    plan (ConflictError naming the object otherwise); return the change set's id and the
    signing secrets of the webhooks it created (by name: the only time they are shown)."""
    change_set, secrets = uuid.uuid4().hex[:12], {}
    with runtime.change_set(actor) as tx:
        _check_versions(tx.session, changes)
        for change in changes:
            secret = _apply_one(runtime, actor, change)
            if secret is not None:
                secrets[change.key] = secret
        tx.audit("config.apply", "config", change_set, None,
                 {"changes": [{k: v for k, v in c.to_dict().items() if k != "changes"} for c in changes]})
    return change_set, secrets


_LOCKED: dict[str, Callable[[Any, Change], Any]] = {  # locked and checked before any change
    "flag": lambda session, c: flag_store.get_flag(session, c.key, c.environment, lock=True),
    "rollout_template": lambda session, c: rollout_store.get_template(session, c.key, lock=True),
    "webhook": lambda session, c: notify_store.webhook_by_name(session, c.key, lock=True)}


def _check_versions(session: Any, changes: list[Change]) -> None:
    """Lock the flags, templates and webhooks the plan changes and check they are still as
    planned (a changed flag definition updates every environment, so these checks come
    before any change is made)."""
    for change in changes:
        if change.kind not in _LOCKED:
            continue
        record = _LOCKED[change.kind](session, change)
        current = record.version if record is not None else None
        if current != change.version:
            where = f" in environment {change.environment!r}" if change.environment else ""
            what = "was created" if change.version is None else \
                f"changed (version {current}, planned on {change.version})"
            raise ConflictError(f"{LABELS.get(change.kind, change.kind)} {change.key!r}{where} {what} since "
                                "the plan was made: nothing was applied; plan again",
                                {f"{change.kind}s": [change.key]})


def _apply_one(runtime: Runtime, actor: str, change: Change) -> str | None:
    """Make one planned change; return the secret of a webhook it created."""
    key, env, after, version = change.key, change.environment, change.after, change.version
    create = change.action == "create"
    if change.kind == "environment":
        if create:
            environment_service.create_environment(runtime, actor, {"key": key, **after})
        else:
            environment_service.update_environment(runtime, actor, key, after, version)
    elif change.kind == "metric":
        if create:
            metric_service.create_metric(runtime, actor, after)
        else:
            metric_service.replace_metric(runtime, actor, key, after, version)
    elif change.kind == "segment":
        if create:
            segment_service.create_segment(runtime, actor, after, env)
        else:
            segment_service.replace_segment(runtime, actor, key, after, version, env)
    elif change.kind == "flag":
        _apply_flag(runtime, actor, change)
    elif change.kind == "layer":
        if create:
            layer_service.create_layer(runtime, actor, {"key": key, **after}, env)
        else:
            layer_service.update_layer(runtime, actor, key, after, version)
    elif change.kind == "experiment":
        if create:
            experiment_service.create_experiment(runtime, actor, after, env)
        else:
            experiment_service.update_experiment(runtime, actor, key, after, version, partial=False)
    elif change.kind == "rollout_template":
        rollout_service.save_template(runtime, actor, key, after, version, create=create)
    elif change.kind == "webhook":
        return _apply_webhook(runtime, actor, change)
    return None


def _apply_webhook(runtime: Runtime, actor: str, change: Change) -> str | None:
    if change.action == "create":
        return str(notifications.create_webhook(runtime, actor, {"name": change.key, **change.after})["secret"])
    with runtime.change(actor) as tx:  # joins the change set, where _check_versions locked it
        record = notify_store.webhook_by_name(tx.session, change.key)
        webhook_id = record.id if record is not None and record.id is not None else 0
    # no `secret` in the patch: the webhook keeps the one it has
    notifications.update_webhook(runtime, actor, webhook_id, change.after, change.version)
    return None


def _apply_flag(runtime: Runtime, actor: str, change: Change) -> None:
    with runtime.change(actor) as tx:  # joins the change set
        rows = flag_store.flag_rows(tx.session, change.key)
        if not rows:
            flag_service.insert_flag(tx, runtime, change.after, change.environment)
            return
        record = rows.get(change.environment)
        if record is None:
            raise ConflictError(f"flag {change.key!r} has no environment {change.environment!r}",
                                {"flags": [change.key]})
        if record.document != change.after:  # an earlier definition change may have done it
            flag_service.update_flag(tx, runtime, record, change.after, None, "config")
