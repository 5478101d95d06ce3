"""HTTP endpoints of serving: evaluation, the SDK snapshot and explain (SDK-scoped reads)."""
from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView

from flagship.api import environment, make_blueprint, requires, runtime
from flagship.experiments.schemas import ExplainSchema
from flagship.flags import schemas
from flagship.serving import service

blp = make_blueprint("serving", "Evaluation, SDK snapshots and explain")


@blp.route("/evaluate")
class Evaluate(MethodView):
    @requires("sdk")
    @blp.arguments(schemas.EvaluateSchema)
    @blp.response(200, schemas.EvaluateResultSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the named flags (or all) for one context, honouring sticky assignments

        In the key's environment (an SDK key is bound to one); an admin key may name one
        with `?environment=` (default: production)."""
        env = environment()
        outcome = service.evaluate(runtime(), body["context"], body.get("flags"), env)
        return {"revision": outcome.revision, "environment": env,
                "flags": {key: service.evaluation_body(r) for key, r in outcome.results.items()}}


@blp.route("/sdk/snapshot")
class SdkSnapshot(MethodView):
    @requires("sdk")
    @blp.response(200, headers={"ETag": {"schema": {"type": "string"}}})
    @blp.alt_response(304, description="unchanged since the ETag sent in If-None-Match")
    def get(self) -> Response:
        """Every flag, segment, layer and experiment of the key's environment, for local
        evaluation (ETag per environment; 304 on If-None-Match)"""
        env = environment()
        compiled = service.snapshot(runtime(), env)
        headers = {"ETag": compiled.etag, "Cache-Control": "no-cache", "Vary": "Authorization",
                   "X-Flagship-Revision": str(compiled.revision), "X-Flagship-Environment": env}
        if compiled.etag in _etags(request.headers.get("If-None-Match", "")):
            return Response(status=304, headers=headers)
        return Response(compiled.body, status=200, mimetype="application/json", headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@blp.route("/explain")
class Explain(MethodView):
    @requires("sdk")
    @blp.arguments(ExplainSchema)
    @blp.response(200)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every step of one evaluation with the raw numbers (buckets, owners, sticky records)"""
        return service.explain(runtime(), body["flag"], body["context"], environment())
