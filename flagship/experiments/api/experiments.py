"""REST endpoints for layers, experiments, their lifecycle and assignment."""
from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView

from flagship.api import (PageArgs, actor, bound_environment, environment, expected_version,
                          make_blueprint, page_body, requires, runtime, versioned)
from flagship.experiments import layers as layer_service, schemas, service
from flagship.flags.schemas import RevisionPageSchema
from flagship.serving import service as serving

blp = make_blueprint("experiments", "Layers, experiments, lifecycle and assignment")



@blp.route("/layers")
class Layers(MethodView):
    @requires("admin")
    @blp.response(200, schemas.LayerSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List an environment's layers with their allocation maps"""
        return layer_service.list_layers(runtime(), environment())

    @requires("admin")
    @blp.arguments(schemas.LayerCreateSchema)
    @blp.response(201, schemas.LayerSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a layer (10,000 buckets hashed with its own salt)"""
        return versioned(layer_service.create_layer(runtime(), actor(), body, environment()), 201)


@blp.route("/layers/<key>")
class LayerByKey(MethodView):
    @requires("admin")
    @blp.response(200, schemas.LayerSchema)
    def get(self, key: str) -> Any:
        """A layer: each experiment's bucket ranges, percentage and status, and the free share"""
        return versioned(layer_service.get_layer(runtime(), key, bound_environment()))

    @requires("admin")
    @blp.arguments(schemas.LayerPatchSchema)
    @blp.response(200, schemas.LayerSchema)
    def patch(self, body: dict[str, Any], key: str) -> Any:
        """Rename or describe a layer (needs If-Match or `version`; the salt only before any
        experiment ran in it)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(layer_service.update_layer(runtime(), actor(), key, body, version,
                                                    bound_environment()))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a layer; 409 while it holds an active or draft experiment"""
        layer_service.delete_layer(runtime(), actor(), key, bound_environment())


@blp.route("/experiments")
class Experiments(MethodView):
    @requires("admin")
    @blp.arguments(schemas.ExperimentListArgs, location="query")
    @blp.response(200, schemas.ExperimentPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List experiments (filter by status, layer, flag)"""
        items, total = service.list_experiments(
            runtime(), environment=environment(), status=args.get("status"), layer=args.get("layer"),
            flag=args.get("flag"), page=args["page"], per_page=args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])

    @requires("admin")
    @blp.arguments(schemas.ExperimentCreateSchema)
    @blp.response(201, schemas.ExperimentSchema)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a draft experiment on a flag (created from the variant values if new)"""
        body.pop("version", None)
        return versioned(service.create_experiment(runtime(), actor(), body, environment()), 201)


@blp.route("/experiments/<key>")
class ExperimentByKey(MethodView):
    @requires("admin")
    @blp.response(200, schemas.ExperimentSchema)
    def get(self, key: str) -> Any:
        """An experiment with its state and bucket allocation"""
        return versioned(service.get_experiment(runtime(), key))

    @requires("admin")
    @blp.arguments(schemas.ExperimentReplaceSchema)
    @blp.response(200, schemas.ExperimentSchema)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Replace an experiment's configuration (needs If-Match or `version`)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(service.update_experiment(runtime(), actor(), key, body, version, partial=False))

    @requires("admin")
    @blp.arguments(schemas.ExperimentBodySchema)
    @blp.response(200, schemas.ExperimentSchema)
    def patch(self, body: dict[str, Any], key: str) -> Any:
        """Change some fields (weights and traffic affect only units never assigned)"""
        version = expected_version(body, required=True)
        body.pop("version", None)
        return versioned(service.update_experiment(runtime(), actor(), key, body, version, partial=True))

    @requires("admin")
    @blp.response(204)
    def delete(self, key: str) -> None:
        """Delete a draft experiment (finished ones are kept for their results)"""
        service.delete_experiment(runtime(), actor(), key)


def _lifecycle(action: str, doc: str) -> type[MethodView]:
    class Transition(MethodView):
        @requires("admin")
        @blp.response(200, schemas.ExperimentSchema)
        def post(self, key: str) -> Any:
            return versioned(service.transition(runtime(), actor(), key, action))

    Transition.post.__doc__ = doc
    Transition.__name__ = f"Experiment{action.title()}"
    return Transition


for _action, _doc in (("start", "Start: claim buckets in the layer (409 when too little is free)"),
                      ("pause", "Pause: no new enrolment; enrolled units keep their variant"),
                      ("resume", "Resume a paused experiment")):
    blp.route(f"/experiments/<key>/{_action}", endpoint=f"experiment_{_action}")(
        _lifecycle(_action, _doc))


@blp.route("/experiments/<key>/stop")
class ExperimentStop(MethodView):
    @requires("admin")
    @blp.arguments(schemas.StopSchema)
    @blp.response(200, schemas.ExperimentSchema)
    def post(self, body: dict[str, Any], key: str) -> Any:
        """Stop as completed or terminated; its buckets return to the layer"""
        return versioned(service.transition(runtime(), actor(), key, "stop", body["outcome"]))


@blp.route("/experiments/<key>/release")
class ExperimentRelease(MethodView):
    @requires("admin")
    @blp.arguments(schemas.ReleaseSchema)
    @blp.response(200, schemas.ExperimentSchema)
    def post(self, body: dict[str, Any], key: str) -> Any:
        """Promote a winner: complete, free the buckets, serve it to a percentage (ramp again later)"""
        return versioned(service.release(runtime(), actor(), key, body["variant"], body["percentage"]))


@blp.route("/experiments/<key>/revisions")
class ExperimentRevisions(MethodView):
    @requires("admin")
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, RevisionPageSchema)
    def get(self, args: dict[str, Any], key: str) -> dict[str, Any]:
        """Every configuration and state change: who, when, document and diff"""
        items, total = service.list_experiment_revisions(runtime(), key, args["page"], args["per_page"])
        return page_body(items, total, args["page"], args["per_page"])


@blp.route("/experiments/<key>/revisions/<int(min=1, max=2147483647):version>/restore")
class ExperimentRevisionRestore(MethodView):
    @requires("admin")
    @blp.response(200, schemas.ExperimentSchema)
    def post(self, key: str, version: int) -> Any:
        """Make revision `version`'s configuration current again (draft or paused experiments;
        a new revision; If-Match or `version` optional)"""
        body = request.get_json(silent=True) if request.content_length else None
        expected = expected_version(body if isinstance(body, dict) else None)
        return versioned(service.restore_revision(runtime(), actor(), key, version, expected))


@blp.route("/experiments/<key>/assign")
class ExperimentAssign(MethodView):
    @requires("sdk")
    @blp.arguments(schemas.AssignSchema)
    @blp.response(200, schemas.AssignResultSchema)
    def post(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        """Assign a unit (sticky); the first assignment records an exposure"""
        return serving.assign(runtime(), key, body["context"], environment())


@blp.route("/experiments/user/<unit>")
class UnitAssignments(MethodView):
    @requires("sdk")
    @blp.response(200)
    def get(self, unit: str) -> dict[str, Any]:
        """A unit's sticky assignments, by experiment"""
        return serving.unit_assignments(runtime(), unit, environment())
