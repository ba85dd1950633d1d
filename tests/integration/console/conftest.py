"""Fixtures for the web console's browser tests: a real Chromium (Debian's ``chromium``, driven by
Playwright through ``executable_path``; no browser download) against the real service served by
the ``api`` fixture. Every test here is marked ``browser``.

``page`` fails its test on any uncaught page error or console error that the test did not
declare with ``page_errors.allow(pattern)``; ``shoot(page, name)`` saves a screenshot under
``test-output/console/`` at the repository root.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright

REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO / "test-output" / "console"
ENV_CHROMIUM = "FLOWLEDGER_CHROMIUM"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def chromium_path() -> str:
    """Debian's chromium (``apt-get install chromium``; ``.ci/run`` installs it when missing),
    or the executable ``FLOWLEDGER_CHROMIUM`` names."""
    path = os.environ.get(ENV_CHROMIUM) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError(
            "the browser tests need Chromium: `apt-get install chromium` (Debian), "
            f"or set {ENV_CHROMIUM} to a Chromium executable"
        )
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class PageErrors:
    """Uncaught errors and console errors of a page; those matching an allowed pattern are expected."""

    seen: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.seen if not any(p.search(e) for p in self.allowed)]


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
async def page(browser: Browser, api: httpx.AsyncClient, page_errors: PageErrors) -> AsyncIterator[Page]:
    """A fresh browser context (no cookies) on the ``api`` fixture's service; fails the test on
    any page or console error not declared with ``page_errors.allow``."""
    context = await browser.new_context(base_url=str(api.base_url), viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10_000)
    opened = await context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            page_errors.seen.append(f"console: {message.text} ({message.location.get('url', '')})")

    def on_error(error: Error) -> None:
        page_errors.seen.append(f"page error: {error.message}")

    opened.on("console", on_console)
    opened.on("pageerror", on_error)
    try:
        yield opened
    finally:
        await context.close()
    assert not page_errors.unexpected(), page_errors.unexpected()


def token_of(api: httpx.AsyncClient) -> str:
    return api.headers["Authorization"].removeprefix("Bearer ")


async def sign_in(page: Page, token: str, *, path: str = "/") -> None:
    """Sign in through the sign-in page (opening ``path`` first, as a user following a link would)."""
    await page.goto(path)
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("navigation", name="Main").wait_for()


@pytest.fixture
async def signed_in(page: Page, api: httpx.AsyncClient) -> Page:
    """``page`` with a session of the ``api`` fixture's admin key, on the runs list."""
    await sign_in(page, token_of(api))
    await page.get_by_role("heading", name="Runs").wait_for()
    return page


async def shoot(page: Page, name: str) -> Path:
    """A full-page screenshot ``test-output/console/<name>.png`` (look at them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
