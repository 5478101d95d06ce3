"""The home dashboard: running experiments with their SRM light and decision, recently
changed flags, and sections other domains register.

Extension point: a UI module adds a section with `register_section(Section(...))` when it
is imported by `init_ui`; `alerts.py` adds "Open alerts" and `rollouts.py` "Active
rollouts" (with their step), in that order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from flask import render_template
from markupsafe import Markup

from flagship import audit
from flagship.errors import FlagshipError
from flagship.experiments import report, results
from flagship.experiments import service as experiment_service
from flagship.runtime import Runtime
from flagship.ui.base import bp, env, render, runtime
from flagship.ui.experiments import experiment_in_env

RECENT_FLAGS = 10


@dataclass(frozen=True)
class Section:
    """A dashboard section: a title, its template, and a loader giving the template's
    context for an environment (None hides the section)."""

    title: str
    template: str
    load: Callable[[Runtime, str], dict[str, Any] | None]


SECTIONS: list[Section] = []


def register_section(section: Section) -> None:
    """Add a section to the dashboard (called once, at import, by the module that owns it)."""
    if all(s.title != section.title for s in SECTIONS):
        SECTIONS.append(section)


@bp.route("/")
def home() -> Any:
    """Running experiments, recently changed flags, and the registered sections."""
    running, _ = experiment_service.list_experiments(runtime(), environment=env(), status="running",
                                                     per_page=100)
    changes, _ = audit.list_audit(runtime(), per_page=RECENT_FLAGS, target_type="flag",
                                  environment=env())
    extra = []
    for section in SECTIONS:
        context = section.load(runtime(), env())
        if context is not None:
            extra.append({"title": section.title,
                          "html": Markup(render_template(section.template, **context))})
    return render("ui/home.html", section="ui.home", running=running, changes=changes, extra=extra)


@bp.route("/experiments/<key>/verdict")
def experiment_verdict(key: str) -> Any:
    """One dashboard cell: the SRM light and the decision of a running experiment (loaded
    after the page, so the dashboard stays fast with many experiments)."""
    experiment_in_env(key)
    try:
        analysis = results.analyse(results.read(runtime(), key))  # the looks: the same decision as results
    except FlagshipError as err:
        return render("ui/_verdict.html", "ui/_verdict.html", error=err.message, key=key)
    return render("ui/_verdict.html", "ui/_verdict.html", key=key, srm=analysis["srm"],
                  decision=analysis["decision"], text=report.decision_text(analysis["decision"]))
