"""The home dashboard: running experiments with their SRM light and decision, recently
changed flags, and sections other domains register.

Extension point: progressive delivery (active rollouts, open alerts; issue 10) is being
built in `flagship/rollout`. When its service lands, it adds its dashboard sections with
`register_section(Section(...))` from a UI module of its own (e.g. `flagship/ui/rollouts.py`
imported by `init_ui`); until then the dashboard shows no rollout or alert section at all
rather than a placeholder that pretends.
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
        analysis = results.analyse(results.read(runtime(), key, with_looks=False))
    except FlagshipError as err:
        return render("ui/_verdict.html", "ui/_verdict.html", error=err.message, key=key)
    return render("ui/_verdict.html", "ui/_verdict.html", key=key, srm=analysis["srm"],
                  decision=analysis["decision"], text=report.decision_text(analysis["decision"]))
