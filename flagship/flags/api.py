"""REST endpoints for flags, segments, evaluation and the SDK snapshot."""
from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView

from flagship.api import (PageArgs, actor, expected_version, make_blueprint, page_body, requires,
                          runtime, versioned)
from flagship.flags import schemas, service

blp = make_blueprint("flags", "Flags and segments")



@blp.route("/flags")
class Flags(MethodView):
    @requires("admin")
    @blp.arguments(schemas.FlagListArgs, location="query")
    @blp.response(200, schemas.FlagPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List flags (filter by tag, search key and description; paged)"""
        items, total = service.list_flags(runtime(), tag=args.get("tag"), search=args.get("q"),
                                          page=args["page"], per_page=args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])

    @requires("admin")
    @blp.arguments(schemas.FlagCreateSchema)
    @blp.response(201, schemas.FlagSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a flag"""
        body.pop("version", None)
        return versioned(service.create_flag(runtime(), actor(), body), 201)


@blp.route("/flags/<key>")
class FlagByKey(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def get(self, key: str) -> Any:
        """Get a flag (its ETag is the version to send back in If-Match)"""
        return versioned(service.get_flag(runtime(), key))

    @requires("admin")
    @blp.arguments(schemas.FlagReplaceSchema)
    @blp.response(200, schemas.FlagSchema)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Replace a flag (needs If-Match or `version`; stale -> 409)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(service.replace_flag(runtime(), actor(), key, body, version))

    @requires("admin")
    @blp.arguments(schemas.FlagBodySchema)
    @blp.response(200, schemas.FlagSchema)
    def patch(self, body: dict[str, Any], key: str) -> Any:
        """Change some top-level fields of a flag (needs If-Match or `version`)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(service.patch_flag(runtime(), actor(), key, body, version))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a flag (If-Match optional); its revisions are kept"""
        service.delete_flag(runtime(), actor(), key, expected_version())


def _toggle(key: str, enabled: bool) -> Any:
    body = request.get_json(silent=True) if request.content_length else None
    version = expected_version(body if isinstance(body, dict) else None)
    return versioned(service.set_enabled(runtime(), actor(), key, enabled, version))


@blp.route("/flags/<key>/enable")
class FlagEnable(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str) -> Any:
        """Turn a flag on (no version needed)"""
        return _toggle(key, True)


@blp.route("/flags/<key>/disable")
class FlagDisable(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str) -> Any:
        """Kill switch: serve the off variant to everyone (no version needed)"""
        return _toggle(key, False)


@blp.route("/flags/<key>/revisions")
class FlagRevisions(MethodView):
    @requires("admin")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, schemas.RevisionPageSchema)
    def get(self, args: dict[str, Any], key: str) -> dict[str, Any]:
        """A flag's revisions, newest first: who, when, full document and diff"""
        items, total = service.list_revisions(runtime(), key, args["page"], args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])


@blp.route("/flags/<key>/revisions/<int:version>/restore")
class FlagRestore(MethodView):
    @requires("admin")
    @blp.response(200, schemas.FlagSchema)
    def post(self, key: str, version: int) -> Any:
        """Make an old revision current again (as a new revision; works after delete)"""
        body = request.get_json(silent=True) if request.content_length else None
        expected = expected_version(body if isinstance(body, dict) else None)
        return versioned(service.restore_revision(runtime(), actor(), key, version, expected))


@blp.route("/segments")
class Segments(MethodView):
    @requires("admin")
    @blp.response(200, schemas.SegmentSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List segments"""
        return service.list_segments(runtime())

    @requires("admin")
    @blp.arguments(schemas.SegmentCreateSchema)
    @blp.response(201, schemas.SegmentSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a segment"""
        body.pop("version", None)
        return versioned(service.create_segment(runtime(), actor(), body), 201)


@blp.route("/segments/<key>")
class SegmentByKey(MethodView):
    @requires("admin")
    @blp.response(200, schemas.SegmentSchema)
    def get(self, key: str) -> Any:
        """Get a segment"""
        return versioned(service.get_segment(runtime(), key))

    @requires("admin")
    @blp.arguments(schemas.SegmentBodySchema)
    @blp.response(200, schemas.SegmentSchema)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Replace a segment (needs If-Match or `version`)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(service.replace_segment(runtime(), actor(), key, body, version))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a segment; 409 naming the flags that still use it"""
        service.delete_segment(runtime(), actor(), key, expected_version())
