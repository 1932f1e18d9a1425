"""Fixtures for the dashboard tests: runs made through the public API, a live server,
HTTP helpers, and the browser marker (skipped without Chromium or Playwright)."""

from __future__ import annotations

import importlib.util
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import trainspect as ts

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MILLION = 1_000_000


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives Debian's Chromium through Playwright (skipped without them)")


def browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright)"
    return None


def pytest_collection_modifyitems(config, items):
    why = browser_missing()
    if why is None:
        return
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET, errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(base: str, path: str, **headers: str):
    status, _, body = http(base.rstrip("/") + path, headers)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def view_of(root: Path, ref: str) -> ts.RunView:
    return ts.open(root).run(ref)


@pytest.fixture(scope="session")
def million_run(tmp_path_factory):
    """A finished run with one 1,000,000-point series `loss` (written once, ~6 s)."""
    root = tmp_path_factory.mktemp("million")
    run = ts.init(project="big", name="million", dir=root)
    for step in range(MILLION):
        run.log({"loss": 1.0 / (step + 1) + (5.0 if step == 777_777 else 0.0)}, step=step)
    run.finish()
    return root, f"big/{run.id}"


@pytest.fixture
def serve(runs):
    """Start dashboards on free ports over `runs`; all stopped at the end."""
    from trainspect.dashboard.server import start

    servers = []

    def _start(root=None, **kwargs):
        kwargs.setdefault("poll_s", 0.1)
        server = start(root or runs, port=0, **kwargs)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


def wait_for(predicate, timeout: float = 5.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


# ---- the browser (Debian's Chromium through Playwright) ----------------------------------

@pytest.fixture(scope="module")
def browser():
    if browser_missing():
        pytest.skip(browser_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _page(browser, bypass_csp: bool):
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True, bypass_csp=bypass_csp)
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda err: page.problems.append(f"pageerror: {err}"))
    page.on("console", lambda msg: msg.type == "error" and page.problems.append(msg.text))
    return context, page


@pytest.fixture
def page(browser):
    """A page under the dashboard's Content Security Policy."""
    context, page = _page(browser, bypass_csp=False)
    yield page
    context.close()


@pytest.fixture
def raw_page(browser):
    """A page with the CSP switched off: escaping alone must keep payloads inert."""
    context, page = _page(browser, bypass_csp=True)
    yield page
    context.close()


def wait_js(page, expression: str, timeout: float = 10.0):
    """Poll a JS expression until truthy (wait_for_function would need eval, which the
    CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value or time.monotonic() > deadline:
            assert value, f"timed out waiting for {expression}"
            return value
        time.sleep(0.03)


def open_run(page, url: str, ref: str, compare: str = "") -> None:
    page.goto(url + "#run=" + ref + (f"&compare={compare}" if compare else ""))
    page.wait_for_selector("#panel-loss .uplot", timeout=15_000)
