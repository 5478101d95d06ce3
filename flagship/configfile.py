"""Configuration as code: the store's configuration as one document, and applying one.

The document (YAML on disk, JSON over HTTP) has a format version and one top-level
section per kind of object, each a mapping from key to object, so a change in git is a
change of one object and new kinds (webhooks, rollout templates) arrive as new sections:

    flagship: 1
    environments: {production: {name, colour, requires_approval, position}}
    metrics:      {checkout: {event, kind, direction, ...}}
    segments:     {production: {staff: {conditions: [...]}}}
    flags:        {new-checkout: {type, variants, description, tags, salt,
                                  environments: {production: {enabled, rules, default_variant,
                                                              off_variant, allowlist, blocklist}}}}
    layers:       {main: {environment, name, description, salt}}
    experiments:  {checkout-button: {environment, flag, layer, variants, ...}}

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
"""
from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from flagship import environments as environment_service
from flagship.diff import json_diff
from flagship.errors import ConflictError, ValidationError
from flagship.experiments import layers as layer_service, metrics as metric_service
from flagship.experiments import service as experiment_service
from flagship.experiments.model import experiment_from_dict, experiment_to_dict, metric_from_dict, metric_to_dict
from flagship.experiments.store import config as experiment_store
from flagship.flags import segments as segment_service, service as flag_service, store as flag_store
from flagship.flags.model import flag_from_dict, flag_to_dict, segment_from_dict, segment_to_dict
from flagship.flags.promotion import promoted_document
from flagship.jsonvalue import json_problem
from flagship.runtime import Runtime

FORMAT_VERSION = 1
SECTIONS = ("environments", "metrics", "segments", "flags", "layers", "experiments")  # apply order
ENVIRONMENT_FIELDS = ("name", "colour", "requires_approval", "position")
LAYER_FIELDS = ("name", "description", "salt")


@dataclass
class Change:
    """One object the file creates or changes, with the version the plan saw."""

    kind: str
    key: str
    environment: str | None
    action: str  # create | update
    before: dict[str, Any] | None
    after: dict[str, Any]
    version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "environment": self.environment,
                "action": self.action, "version": self.version,
                "changes": json_diff(self.before or {}, self.after)}


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


def _entries(doc: Mapping[str, Any], section: str) -> list[tuple[str, dict[str, Any]]]:
    return _mapping(doc.get(section), section)


def _mapping(value: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(value or {}, dict):
        raise ValidationError("must be a mapping of key -> object", field=where)
    out = []
    for key, entry in (value or {}).items():
        if not isinstance(entry, dict):
            raise ValidationError("must be a mapping", field=f"{where}.{key}")
        out.append((str(key), copy.deepcopy(entry)))
    return out


# -- export ------------------------------------------------------------------------------------

def _without(doc: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in doc.items() if k not in names}


def _unmanaged(targeting: dict[str, Any]) -> dict[str, Any]:
    rules = [r for r in targeting.get("rules", []) if r.get("kind") not in flag_service.MANAGED_KINDS]
    return {**targeting, "rules": rules}


def export_config(runtime: Runtime) -> dict[str, Any]:
    """Every environment, metric, segment, flag (with its targeting per environment),
    layer and experiment configuration, as one document."""
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
    return out


# -- plan --------------------------------------------------------------------------------------

def _named(section: str, key: str, error: ValidationError) -> ValidationError:
    errors = {f"{section}.{key}.{field}": messages for field, messages in error.errors.items()}
    return ValidationError(f"{section}.{key}: {error.message}", errors=errors or None)


class _Planner:
    """Reads the store once and lists what applying `doc` would change."""

    def __init__(self, runtime: Runtime, session: Any, doc: Mapping[str, Any]) -> None:
        self.runtime, self.session, self.doc = runtime, session, doc
        self.changes: list[Change] = []
        self.unchanged = 0

    def add(self, kind: str, key: str, env: str | None, before: Any, after: dict[str, Any],
            version: int | None) -> None:
        if before == after:
            self.unchanged += 1
            return
        action = "create" if before is None else "update"
        self.changes.append(Change(kind, key, env, action, before, after, version))

    def segment_keys(self, env: str) -> set[str]:
        planned = (self.doc.get("segments") or {}).get(env) or {}
        return flag_store.segment_keys(self.session, env) | {str(k) for k in planned}

    def environments(self) -> None:
        for key, entry in _entries(self.doc, "environments"):
            record = flag_store.get_environment(self.session, key)
            before = {f: getattr(record, f) for f in ENVIRONMENT_FIELDS} if record else None
            after = {f: entry.get(f, (before or {}).get(f)) for f in ENVIRONMENT_FIELDS if
                     f in entry or before is not None}
            self.add("environment", key, None, before, after, record.version if record else None)

    def metrics(self) -> None:
        for key, entry in _entries(self.doc, "metrics"):
            try:
                after = metric_to_dict(metric_from_dict({**entry, "key": key}))
            except ValidationError as error:
                raise _named("metrics", key, error) from None
            record = experiment_store.get_metric(self.session, key)
            before = metric_to_dict(experiment_store.metric_of(record)) if record else None
            self.add("metric", key, None, before, after, record.version if record else None)

    def segments(self) -> None:
        for env, entries in (self.doc.get("segments") or {}).items():
            for key, entry in _mapping(entries, f"segments.{env}"):
                try:
                    after = segment_to_dict(segment_from_dict({**entry, "key": key}, self.runtime.operators))
                except ValidationError as error:
                    raise _named(f"segments.{env}", key, error) from None
                record = flag_store.get_segment(self.session, key, str(env))
                self.add("segment", key, str(env), record.document if record else None, after,
                         record.version if record else None)

    def flags(self) -> None:
        default = self.runtime.config["DEFAULT_ENVIRONMENT"]
        for key, entry in _entries(self.doc, "flags"):
            targetings = entry.pop("environments", None) or {}
            if not isinstance(targetings, dict):
                raise ValidationError("must be a mapping of environment -> targeting",
                                      field=f"flags.{key}.environments")
            rows = flag_store.flag_rows(self.session, key)
            if not targetings:  # the definition only: every environment keeps its targeting
                current = rows.get(default)
                targetings = {default: flag_service.targeting(current.document) if current else {}}
            for env, targeting in targetings.items():
                env = str(env)
                record = rows.get(env)
                if not isinstance(targeting or {}, dict):
                    raise ValidationError("must be a mapping", field=f"flags.{key}.environments.{env}")
                written = {**entry, **(targeting or {}), "key": key}
                doc = {**promoted_document(written, record.document), **flag_service.definition(written)} \
                    if record else written
                try:
                    after = flag_to_dict(flag_from_dict(doc, self.runtime.operators, self.segment_keys(env)))
                except ValidationError as error:
                    raise _named("flags", key, error) from None
                self.add("flag", key, env, record.document if record else None, after,
                         record.version if record else None)

    def layers(self) -> None:
        default = self.runtime.config["DEFAULT_ENVIRONMENT"]
        for key, entry in _entries(self.doc, "layers"):
            record = experiment_store.get_layer(self.session, key)
            env = str(entry.get("environment") or (record.environment if record else default))
            if record is not None and record.environment != env:
                raise ValidationError(f"layer {key!r} is in environment {record.environment!r}; "
                                      "a layer cannot move", field=f"layers.{key}.environment")
            before = {f: getattr(record, f) for f in LAYER_FIELDS} if record else None
            after = {"name": entry.get("name") or key, "description": entry.get("description", ""),
                     "salt": entry.get("salt") or (record.salt if record else layer_service.default_salt(key))}
            self.add("layer", key, env, before, after, record.version if record else None)

    def experiments(self) -> None:
        default = self.runtime.config["DEFAULT_ENVIRONMENT"]
        for key, entry in _entries(self.doc, "experiments"):
            record = experiment_store.get_experiment(self.session, key)
            env = str(entry.pop("environment", None) or (record.environment if record else default))
            if record is not None and record.environment != env:
                raise ValidationError(f"experiment {key!r} is in environment {record.environment!r}",
                                      field=f"experiments.{key}.environment")
            doc = {**entry, "key": key}
            try:
                after = experiment_to_dict(experiment_from_dict(
                    doc, operators=self.runtime.operators, segment_keys=self.segment_keys(env),
                    flag_variants=self._variants(str(doc.get("flag")), env)))
            except ValidationError as error:
                raise _named("experiments", key, error) from None
            self.add("experiment", key, env, record.document if record else None, after,
                     record.version if record else None)

    def _variants(self, flag: str, env: str) -> dict[str, Any] | None:
        written = (self.doc.get("flags") or {}).get(flag)
        if isinstance(written, dict) and isinstance(written.get("variants"), dict):
            return written["variants"]
        record = flag_store.get_flag(self.session, flag, env)
        return record.document["variants"] if record else None


def plan(runtime: Runtime, doc: Mapping[str, Any]) -> tuple[list[Change], int]:
    """What applying `doc` would change, object by object (and how many are unchanged)."""
    check_document(doc)
    with runtime.db.session() as session:
        planner = _Planner(runtime, session, doc)
        for section in SECTIONS:
            getattr(planner, section)()
    return planner.changes, planner.unchanged


# -- apply -------------------------------------------------------------------------------------

def apply_config(runtime: Runtime, actor: str, doc: Mapping[str, Any],
                 dry_run: bool = False) -> dict[str, Any]:
    """Plan, and unless `dry_run`, apply the plan in one transaction."""
    changes, unchanged = plan(runtime, doc)
    result = {"dry_run": dry_run, "changes": [c.to_dict() for c in changes], "unchanged": unchanged,
              "applied": False, "change_set": None}
    if dry_run or not changes:
        return result
    result["change_set"] = execute(runtime, actor, changes)
    result["applied"] = True
    return result


def execute(runtime: Runtime, actor: str, changes: list[Change]) -> str:
    """Apply planned changes in one transaction, each object's version checked against the
    plan (ConflictError naming the object otherwise); return the change set's id."""
    change_set = uuid.uuid4().hex[:12]
    with runtime.change_set(actor) as tx:
        _check_flag_versions(tx.session, [c for c in changes if c.kind == "flag"])
        for change in changes:
            _apply_one(runtime, actor, change)
        tx.audit("config.apply", "config", change_set, None,
                 {"changes": [{k: v for k, v in c.to_dict().items() if k != "changes"} for c in changes]})
    return change_set


def _check_flag_versions(session: Any, changes: list[Change]) -> None:
    """Lock the flags the plan changes and check they are still as planned (a changed
    definition updates every environment, so per-environment checks come first)."""
    for change in changes:
        record = flag_store.get_flag(session, change.key, change.environment, lock=True)
        current = record.version if record is not None else None
        if current != change.version:
            where = f" in environment {change.environment!r}"
            raise ConflictError(f"flag {change.key!r}{where} changed since the plan was made "
                                f"(version {current}, planned on {change.version}): nothing was "
                                "applied; plan again", {"flags": [change.key]})


def _apply_one(runtime: Runtime, actor: str, change: Change) -> None:
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
