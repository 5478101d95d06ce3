"""Real-browser fixtures: one `flagship serve` and one headless Chromium per test process
(the tests share an xdist group, so they run in one process, in order), a fresh signed-in
page per test, and screenshots of every main screen saved under the test's tmp dir when
it fails."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.browser.helpers import UIServer, axe_violations, browser_available, launch, sign_in


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[UIServer]:
    reason = browser_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(reason)
    server = UIServer(tmp_path_factory.mktemp("ui-server"))
    # an already migrated file (the suite's template): `serve` then finds nothing to migrate
    shutil.copy(request.getfixturevalue("sqlite_template"), server.folder / "flagship.db")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium(ui_server: UIServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def signed_in(chromium: Any, ui_server: UIServer) -> dict[str, Any]:
    """The cookies of one sign-in, reused by every test's fresh browser context."""
    context = chromium.new_context()
    sign_in(context.new_page(), ui_server.base_url)
    state = context.storage_state()
    context.close()
    return state


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


class Screens:
    """The main screens a test passed through: checked with axe, photographed (in memory;
    written to the tmp dir only if the test fails)."""

    def __init__(self, page: Any, folder: Path) -> None:
        self.page, self.folder = page, folder
        self.shots: list[tuple[str, bytes]] = []
        self.problems: list[str] = []  # console errors: CSP violations, script errors

    def check(self, name: str, accessibility: bool = True) -> None:
        self.page.wait_for_load_state("load")
        # htmx marks elements with a request in flight; wait until the page has settled
        self.page.wait_for_function("() => !document.querySelector('.htmx-request')")
        self.shots.append((name, self.page.screenshot(full_page=True)))
        if accessibility:
            violations = axe_violations(self.page)
            assert violations == [], f"{name}: serious accessibility violations {violations}"
        assert self.problems == [], f"{name}: browser console errors {self.problems}"

    def save(self) -> Path:
        folder = self.folder / "screens"
        folder.mkdir(parents=True, exist_ok=True)
        for number, (name, png) in enumerate(self.shots, 1):
            (folder / f"{number:02d}-{name}.png").write_bytes(png)
        try:
            self.page.screenshot(path=str(folder / "zz-at-failure.png"), full_page=True)
        except Exception:  # noqa: BLE001 - the page may be gone; the others are saved
            pass
        return folder


def _console(screens: Screens) -> Any:
    def listen(message: Any) -> None:
        text = message.text
        # 409/422 answers are part of the UI (stale versions, field errors): not a problem
        if message.type == "error" and "Failed to load resource" not in text:
            screens.problems.append(text)
    return listen


@pytest.fixture
def page(chromium: Any, ui_server: UIServer, signed_in: dict[str, Any], request: pytest.FixtureRequest,
         tmp_path: Path) -> Iterator[Any]:
    """A signed-in page (as the server's first admin key, so changes are by `ui:admin`)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, storage_state=signed_in)
    context.set_default_timeout(10_000)
    tab = context.new_page()
    screens = Screens(tab, tmp_path)
    tab.on("console", _console(screens))
    tab.on("pageerror", lambda error: screens.problems.append(f"page error: {error}"))
    tab.on("dialog", lambda dialog: dialog.accept())  # confirmations: the tests mean it
    tab.screens = screens
    yield tab
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        print(f"screenshots of the main screens: {screens.save()}")
    context.close()
