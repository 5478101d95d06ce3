"""REST endpoints for flags (per environment), segments, environments and promotion.

`/flags/{key}/environments/{env}` is the canonical form of a flag's targeting; the flat
`/flags/...` endpoints act on the environment named by `?environment=`, else the key's
own, else the default environment (production), so older clients keep working.
"""
from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView

from flagship import environments as environment_service
from flagship.api import (PageArgs, actor, bound_environment, environment, expected_version,
                          make_blueprint, page_body, require_unbound, requires, runtime, versioned)
from flagship.errors import ValidationError
from flagship.flags import promotion, schemas, segments, service

blp = make_blueprint("flags", "Flags, segments, environments and promotion")


def _optional_version() -> int | None:
    body = request.get_json(silent=True) if request.content_length else None
    return expected_version(body if isinstance(body, dict) else None)


@blp.route("/flags")
class Flags(MethodView):
    @requires("admin")
    @blp.arguments(schemas.FlagListArgs, location="query")
    @blp.response(200, schemas.FlagPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List an environment's flags (filter by tag, search key and description; paged)"""
        items, total = service.list_flags(runtime(), environment(), tag=args.get("tag"),
                                          search=args.get("q"), page=args["page"],
                                          per_page=args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])

    @requires("admin")
    @blp.arguments(schemas.FlagCreateSchema)
    @blp.response(201, schemas.FlagSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a flag: as given in the environment named (default production), switched off
        without rules in every other environment"""
        body.pop("version", None)
        return versioned(service.create_flag(runtime(), actor(), body, environment()), 201)


def _get(key: str, env: str) -> Any:
    return versioned(service.get_flag(runtime(), key, env))


def _put(body: dict[str, Any], key: str, env: str) -> Any:
    version = expected_version(body, required=True)
    body.pop("version", None)
    return versioned(service.replace_flag(runtime(), actor(), key, body, version, env,
                                          everywhere=bound_environment() is None))


def _patch(body: dict[str, Any], key: str, env: str) -> Any:
    version = expected_version(body, required=True)
    body.pop("version", None)
    return versioned(service.patch_flag(runtime(), actor(), key, body, version, env,
                                        everywhere=bound_environment() is None))


@blp.route("/flags/<key>")
class FlagByKey(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def get(self, key: str) -> Any:
        """A flag: its definition, its targeting in the environment named, and a summary of
        every environment (the ETag is the version to send back in If-Match)"""
        return _get(key, environment())

    @requires("admin")
    @blp.arguments(schemas.FlagReplaceSchema)
    @blp.response(200, schemas.FlagSchema)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Replace a flag in the environment named (needs If-Match or `version`; stale -> 409);
        a changed definition applies to every environment"""
        return _put(body, key, environment())

    @requires("admin")
    @blp.arguments(schemas.FlagBodySchema)
    @blp.response(200, schemas.FlagSchema)
    def patch(self, body: dict[str, Any], key: str) -> Any:
        """Change some top-level fields of a flag (needs If-Match or `version`)"""
        return _patch(body, key, environment())

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a flag from every environment (If-Match optional); its revisions are kept"""
        require_unbound("deleting a flag")
        service.delete_flag(runtime(), actor(), key, expected_version(), environment())


@blp.route("/flags/<key>/environments/<env>")
class FlagInEnvironment(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def get(self, key: str, env: str) -> Any:
        """A flag's targeting in one environment (canonical form)"""
        return _get(key, environment(env))

    @requires("admin")
    @blp.arguments(schemas.FlagReplaceSchema)
    @blp.response(200, schemas.FlagSchema)
    def put(self, body: dict[str, Any], key: str, env: str) -> Any:
        """Replace the flag in one environment (needs If-Match or `version`)"""
        return _put(body, key, environment(env))

    @requires("admin")
    @blp.arguments(schemas.FlagBodySchema)
    @blp.response(200, schemas.FlagSchema)
    def patch(self, body: dict[str, Any], key: str, env: str) -> Any:
        """Change some of the flag's fields in one environment (needs If-Match or `version`)"""
        return _patch(body, key, environment(env))


def _toggle(key: str, enabled: bool, env: str) -> Any:
    return versioned(service.set_enabled(runtime(), actor(), key, enabled, _optional_version(), env))


@blp.route("/flags/<key>/enable")
class FlagEnable(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str) -> Any:
        """Turn a flag on in the environment named (no version needed)"""
        return _toggle(key, True, environment())


@blp.route("/flags/<key>/disable")
class FlagDisable(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str) -> Any:
        """Kill switch: serve the off variant to everyone in the environment named"""
        return _toggle(key, False, environment())


@blp.route("/flags/<key>/environments/<env>/enable")
class FlagEnableIn(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str, env: str) -> Any:
        """Turn a flag on in one environment (no version needed)"""
        return _toggle(key, True, environment(env))


@blp.route("/flags/<key>/environments/<env>/disable")
class FlagDisableIn(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str, env: str) -> Any:
        """Kill switch of one environment (no version needed)"""
        return _toggle(key, False, environment(env))


@blp.route("/flags/<key>/revisions")
class FlagRevisions(MethodView):
    @requires("admin")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, schemas.RevisionPageSchema)
    def get(self, args: dict[str, Any], key: str) -> dict[str, Any]:
        """A flag's revisions in the environment named, newest first: who, when, document, diff"""
        items, total = service.list_revisions(runtime(), key, environment(), args["page"],
                                              args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])


@blp.route("/flags/<key>/revisions/<int(min=1, max=2147483647):version>/restore")
class FlagRestore(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str, version: int) -> Any:
        """Make an old revision of the environment named current again (as a new revision;
        works after delete)"""
        return versioned(service.restore_revision(runtime(), actor(), key, version,
                                                  _optional_version(), environment()))


@blp.route("/flags/<key>/promote")
class FlagPromote(MethodView):
    @requires("admin")
    @blp.arguments(schemas.PromoteSchema)
    @blp.response(200)
    def post(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        """Copy a flag's targeting from one environment to another: the diff with
        `dry_run`, else applied under version checks (409 if the target changed)"""
        environment(body["to"])  # a key bound to an environment may only promote into it
        versions = {key: body["version"]} if body.get("version") is not None else None
        return promotion.promote(runtime(), actor(), [key], body["source"], body["to"],
                                 dry_run=body["dry_run"], copy_segments=body["copy_segments"],
                                 versions=versions)


@blp.route("/promote")
class PromoteByTag(MethodView):
    @requires("admin")
    @blp.arguments(schemas.PromoteManySchema)
    @blp.response(200)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Promote every flag with a tag from one environment to another, in one transaction"""
        environment(body["to"])
        return promotion.promote(runtime(), actor(), None, body["source"], body["to"],
                                 tag=body["tag"], dry_run=body["dry_run"],
                                 copy_segments=body["copy_segments"], versions=body.get("versions"))


@blp.route("/flags/<key>/compare")
class FlagCompare(MethodView):
    @requires("admin")
    @blp.arguments(schemas.CompareArgs, location="query")
    @blp.response(200)
    def get(self, args: dict[str, Any], key: str) -> dict[str, Any]:
        """A flag's targeting side by side in several environments, and what differs"""
        names = [n.strip() for n in args["environments"].split(",") if n.strip()]
        if len(names) < 2:
            raise ValidationError("name at least two environments", field="environments")
        return promotion.compare(runtime(), key, names)


@blp.route("/segments")
class Segments(MethodView):
    @requires("admin")
    @blp.arguments(schemas.EnvironmentArgs, location="query")
    @blp.response(200, schemas.SegmentSchema(many=True))
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """List an environment's segments"""
        return segments.list_segments(runtime(), environment())

    @requires("admin")
    @blp.arguments(schemas.SegmentCreateSchema)
    @blp.response(201, schemas.SegmentSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a segment in the environment named"""
        body.pop("version", None)
        return versioned(segments.create_segment(runtime(), actor(), body, environment()), 201)


@blp.route("/segments/<key>")
class SegmentByKey(MethodView):
    @requires("admin")
    @blp.response(200, schemas.SegmentSchema)
    def get(self, key: str) -> Any:
        """Get a segment"""
        return versioned(segments.get_segment(runtime(), key, environment()))

    @requires("admin")
    @blp.arguments(schemas.SegmentBodySchema)
    @blp.response(200, schemas.SegmentSchema)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Replace a segment (needs If-Match or `version`)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(segments.replace_segment(runtime(), actor(), key, body, version, environment()))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a segment; 409 naming the flags that still use it"""
        segments.delete_segment(runtime(), actor(), key, expected_version(), environment())


@blp.route("/environments")
class Environments(MethodView):
    @requires("admin")
    @blp.response(200, schemas.EnvironmentSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List environments in display order"""
        return environment_service.list_environments(runtime())

    @requires("admin")
    @blp.arguments(schemas.EnvironmentCreateSchema)
    @blp.response(201, schemas.EnvironmentSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create an environment: every flag starts off there without rules, or with the
        targeting and segments of `copy_from`"""
        body.pop("version", None)
        require_unbound("creating an environment")
        return versioned(environment_service.create_environment(runtime(), actor(), body), 201)


@blp.route("/environments/<key>")
class EnvironmentByKey(MethodView):
    @requires("admin")
    @blp.response(200, schemas.EnvironmentSchema)
    def get(self, key: str) -> Any:
        """An environment"""
        return versioned(environment_service.get_environment(runtime(), key))

    @requires("admin")
    @blp.arguments(schemas.EnvironmentBodySchema)
    @blp.response(200, schemas.EnvironmentSchema)
    def patch(self, body: dict[str, Any], key: str) -> Any:
        """Rename, recolour or reorder an environment (needs If-Match or `version`)"""
        require_unbound("changing an environment")
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(environment_service.update_environment(runtime(), actor(), key, body, version))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete an environment and its targeting (409 for the default one, or while it
        holds layers, experiments or live keys)"""
        require_unbound("deleting an environment")
        environment_service.delete_environment(runtime(), actor(), key)
