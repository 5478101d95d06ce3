"""Browser-test helpers: a real `flagship serve`, Debian's Chromium through Playwright,
axe-core (vendored) and screenshots. Also run as a script to refresh the README's PNGs:

    .venv/bin/python -m tests.browser.helpers docs/
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.sdk_server import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
AXE = Path(__file__).parent / "vendor" / "axe-4.14.1.min.js"
ADMIN_KEY = "fsk_admin_ui_browser_tests_000000000000000"
SERIOUS = ("serious", "critical")


class UIServer:
    """`flagship serve` on a free port with a SQLite file, aggregation every 2 s."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "server.log"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "FLAGSHIP_DATABASE_URL": f"sqlite:///{self.folder / 'flagship.db'}",
               "FLAGSHIP_PORT": str(self.port), "FLAGSHIP_ADMIN_KEY": ADMIN_KEY,
               "FLAGSHIP_WORKERS": "1", "FLAGSHIP_THREADS": "8", "FLAGSHIP_AGGREGATE_INTERVAL": "2",
               "FLAGSHIP_SECRET_KEY": "browser-tests-secret", "FLAGSHIP_PLUGINS": ""}
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen([sys.executable, "-m", "flagship.cli", "serve"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"flagship serve did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc = None

    def call(self, method: str, path: str, body: Any = None, key: str = ADMIN_KEY) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        return response.status, json.loads(data) if data else None

    def ok(self, method: str, path: str, body: Any = None, key: str = ADMIN_KEY) -> Any:
        status, answer = self.call(method, path, body, key)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer


def browser_available() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless; Playwright never downloads a browser of its own."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def sign_in(page: Any, base_url: str, key: str = ADMIN_KEY) -> None:
    page.goto(f"{base_url}/ui/sign-in")
    page.get_by_label("Admin API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/ui/")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now.

    axe is evaluated through the DevTools protocol, which the page's CSP does not govern,
    so the page keeps its real policy (no inline script) while it is checked."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    return [v for v in result if v["impact"] in SERIOUS]


def screenshot(page: Any, path: Path, full_page: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path


def make_docs_screenshots(out: Path) -> list[Path]:
    """Seed a server with a realistic flag and experiment and photograph the main screens."""
    from playwright.sync_api import sync_playwright

    from tests.browser.seed import seed_demo

    folder = Path(tempfile.mkdtemp(prefix="flagship-ui-docs-"))
    server = UIServer(folder)
    server.start()
    shots = []
    try:
        keys = seed_demo(server)
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            sign_in(page, server.base_url)
            for name, path in (("ui-flags.png", "/ui/flags"),
                               ("ui-flag.png", f"/ui/flags/{keys['flag']}"),
                               ("ui-experiment.png", f"/ui/experiments/{keys['experiment']}/results")):
                page.goto(server.base_url + path)
                page.wait_for_load_state("networkidle")
                shots.append(screenshot(page, out / name, full_page=False))
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return shots


if __name__ == "__main__":
    for shot in make_docs_screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(shot)
