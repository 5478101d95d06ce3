"""What applying a configuration document would change: the diff per object (`Change`),
read from the store in one session, with each entry of the file checked as its API checks
it (422 naming the path, `flags.checkout.rules.0.percentage`) and put in canonical form,
so an object already as written is no change at all."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from flagship.diff import json_diff
from flagship.errors import ValidationError
from flagship.experiments import layers as layer_service
from flagship.experiments.model import experiment_from_dict, experiment_to_dict, metric_from_dict, metric_to_dict
from flagship.experiments.store import config as experiment_store
from flagship.flags import service as flag_service, store as flag_store
from flagship.flags.model import flag_from_dict, flag_to_dict, segment_from_dict, segment_to_dict
from flagship.flags.promotion import promoted_document
from flagship.rollout import notifications, notify_store, service as rollout_service, store as rollout_store
from flagship.runtime import Runtime

SECTIONS = ("environments", "metrics", "segments", "flags", "layers", "experiments",
            "rollout_templates", "webhooks")  # apply order
ENVIRONMENT_FIELDS = ("name", "colour", "requires_approval", "position")
LAYER_FIELDS = ("name", "description", "salt")
TEMPLATE_FIELDS = ("name", "description", "policy")
WEBHOOK_FIELDS = ("url", "event_types", "environment", "enabled")


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
        out = {"kind": self.kind, "key": self.key, "environment": self.environment,
               "action": self.action, "version": self.version,
               "changes": json_diff(self.before or {}, self.after)}
        if self.kind == "webhook" and self.action == "create":
            out["secret_generated"] = True  # the secret itself is only in a real apply's `secrets`
        return out


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


def webhook_document(record: Any) -> dict[str, Any]:
    """A webhook as configuration (its name is the key; never its secret)."""
    return {"url": record.url, "event_types": list(record.event_types),
            "environment": record.environment, "enabled": record.enabled}


def _named(section: str, key: str, error: ValidationError) -> ValidationError:
    errors = {f"{section}.{key}.{field}": messages for field, messages in error.errors.items()}
    return ValidationError(f"{section}.{key}: {error.message}", errors=errors or None)


def _only(entry: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for name in entry:
        if name not in allowed:
            raise ValidationError(f"unknown field; allowed: {', '.join(allowed)}", field=str(name))


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

    def rollout_templates(self) -> None:
        for key, entry in _entries(self.doc, "rollout_templates"):
            try:
                _only(entry, TEMPLATE_FIELDS)
                after = rollout_service.check_template(self.runtime, key, entry)
            except ValidationError as error:
                raise _named("rollout_templates", key, error) from None
            record = rollout_store.get_template(self.session, key)
            self.add("rollout_template", key, None, rollout_service.template_document(record) if record
                     else None, after, record.version if record else None)

    def webhooks(self) -> None:
        for name, entry in _entries(self.doc, "webhooks"):
            try:
                after = self._webhook(name, entry)
            except ValidationError as error:
                raise _named("webhooks", name, error) from None
            record = notify_store.webhook_by_name(self.session, name)
            self.add("webhook", name, None, webhook_document(record) if record else None, after,
                     record.version if record else None)

    def _webhook(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        if "secret" in entry:
            raise ValidationError("a signing secret is not configuration: leave it out (one is "
                                  "generated) and rotate it with PATCH /api/v1/webhooks/<id>", field="secret")
        _only(entry, WEBHOOK_FIELDS)
        for required in ("url", "event_types"):
            if required not in entry:
                raise ValidationError("required", field=required)
        env = entry.pop("environment", None)  # may be created by this file, so checked here
        known = {e.key for e in flag_store.environments(self.session)} | set(self.doc.get("environments") or {})
        if env is not None and (not isinstance(env, str) or env not in known):
            raise ValidationError(f"no environment {env!r}", field="environment")
        values = notifications.check_webhook(self.session, {"name": name, **entry})
        return {"url": values["url"], "event_types": values["event_types"], "environment": env,
                "enabled": values.get("enabled", True)}

    def _variants(self, flag: str, env: str) -> dict[str, Any] | None:
        written = (self.doc.get("flags") or {}).get(flag)
        if isinstance(written, dict) and isinstance(written.get("variants"), dict):
            return written["variants"]
        record = flag_store.get_flag(self.session, flag, env)
        return record.document["variants"] if record else None


def diff(runtime: Runtime, doc: Mapping[str, Any]) -> tuple[list[Change], int]:
    """What applying a checked `doc` would change, object by object (and how many are unchanged)."""
    with runtime.db.session() as session:
        planner = _Planner(runtime, session, doc)
        for section in SECTIONS:
            getattr(planner, section)()
    return planner.changes, planner.unchanged
