"""The console's pages and files: public (no tenant data in them), one index.html for every page
URL, ES modules with their media type, a CSP that allows nothing but the service's own origin,
and no way out of the web folder."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from service.api.console import WEB

PAGES = ["/", "/sign-in", "/runs", f"/runs/{uuid.uuid4()}", "/workflows", "/workflows/hello", "/stats"]


@pytest.fixture
def anonymous(api: httpx.AsyncClient) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=str(api.base_url), timeout=10)


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_url_answers_the_console(anonymous: httpx.AsyncClient, path: str) -> None:
    async with anonymous:
        answer = await anonymous.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.content == (WEB / "index.html").read_bytes()
    csp = answer.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert answer.headers["x-content-type-options"] == "nosniff"


async def test_assets_are_served_with_their_types_and_the_same_policy(anonymous: httpx.AsyncClient) -> None:
    async with anonymous:
        script = await anonymous.get("/console/js/app.js")
        style = await anonymous.get("/console/console.css")
        missing = await anonymous.get("/console/js/nope.js")
        escape = await anonymous.get("/console/../../service/config.py")
        encoded = await anonymous.get("/console/%2e%2e/%2e%2e/config.py")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert "default-src 'self'" in script.headers["content-security-policy"]
    assert missing.status_code == 404
    for answer in (escape, encoded):
        assert answer.status_code == 404 and b"Settings" not in answer.content


def test_the_console_has_no_inline_script_or_style_and_no_third_party_url() -> None:
    """What the CSP would refuse at run time, refused here first."""
    for path in WEB.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        urls = re.findall(r"https?://[^\s\"'`)]+", text) + re.findall(r"[\"'(]//[a-z0-9]", text)
        namespaces = ("http://www.w3.org/",)  # XML namespace names, never fetched
        assert [u for u in urls if not u.startswith(namespaces)] == [], path
        if path.suffix == ".html":
            assert "style=" not in text and "<script>" not in text and "onclick" not in text.lower(), path
        if path.suffix == ".js":
            assert "eval(" not in text and "new Function" not in text and "innerHTML =" not in text, path
