"""The console's session (``/v1/session``): sign in with a key, get an HttpOnly SameSite=Strict
cookie that authenticates like the key, expires, dies with the key, and needs the CSRF token for
changes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import httpx

from service.config import AuthSettings
from service.store.keys import KeyStore
from tests.helpers.api import assert_problem
from tests.helpers.servers import Servers
from tests.helpers.serving import api_key, serve_app

COOKIE = "flowledger_session"


def _token(api: httpx.AsyncClient) -> str:
    return api.headers["Authorization"].removeprefix("Bearer ")


def _browser(api: httpx.AsyncClient) -> httpx.AsyncClient:
    """A client of the same service with no Authorization header: only what a cookie gives."""
    return httpx.AsyncClient(base_url=str(api.base_url), timeout=10)


async def _signed_in(api: httpx.AsyncClient) -> tuple[httpx.AsyncClient, dict[str, str]]:
    browser = _browser(api)
    answer = await browser.post("/v1/session", json={"token": _token(api)})
    assert answer.status_code == 200, answer.text
    return browser, answer.json()


async def test_sign_in_sets_an_httponly_strict_cookie_that_authenticates(api: httpx.AsyncClient) -> None:
    browser = _browser(api)
    async with contextlib.aclosing(browser):
        assert_problem(await browser.get("/v1/runs"), 401)
        nobody = await browser.get("/v1/session")  # "am I signed in?" is no error when not
        assert nobody.status_code == 204 and not nobody.content
        answer = await browser.post("/v1/session", json={"token": _token(api)})
        assert answer.status_code == 200
        set_cookie = answer.headers["set-cookie"]
        assert set_cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Path=/" in set_cookie
        assert _token(api) not in set_cookie  # sealed, not the key itself
        session = answer.json()
        assert session["tenant"] == "default" and "runs:read" in session["scopes"]
        assert session["actor"].startswith("key:") and session["csrf_token"] and session["expires_at"]
        assert (await browser.get("/v1/runs")).status_code == 200
        assert (await browser.get("/v1/session")).json() == session


async def test_a_change_with_the_cookie_needs_the_csrf_token(api: httpx.AsyncClient) -> None:
    browser, session = await _signed_in(api)
    async with contextlib.aclosing(browser):
        missing = f"/v1/runs/{uuid.uuid4()}/cancel"
        refused = assert_problem(await browser.post(missing, json={}), 403)
        assert "X-CSRF-Token" in refused["detail"]
        wrong = await browser.post(missing, json={}, headers={"X-CSRF-Token": "x" * 32})
        assert_problem(wrong, 403)
        right = await browser.post(missing, json={}, headers={"X-CSRF-Token": session["csrf_token"]})
        assert_problem(right, 404)  # through to the handler: no such run
        other_origin = await browser.get("/v1/runs", headers={"Origin": "https://evil.example"})
        assert "origin" in assert_problem(other_origin, 403)["detail"]
        # A bearer token needs no CSRF token (no browser sends it by itself).
        assert_problem(await api.post(missing, json={}), 404)


async def test_bad_sign_ins_are_clear_problems(api: httpx.AsyncClient) -> None:
    async with _browser(api) as browser:
        unknown = await browser.post("/v1/session", json={"token": "flk_abc_def"})
        assert assert_problem(unknown, 401)["detail"] and "set-cookie" not in unknown.headers
        assert_problem(await browser.post("/v1/session", json={"key": "x"}), 400)
        assert_problem(
            await browser.post("/v1/session", content=b"{", headers={"content-type": "application/json"}), 400
        )
        browser.cookies.set(COOKIE, "forged")
        forged = assert_problem(await browser.get("/v1/runs"), 401)
        assert "sign in again" in forged["detail"]
        assert_problem(await browser.get("/v1/session"), 401)  # a credential sent is checked


async def test_sign_out_clears_the_cookie(api: httpx.AsyncClient) -> None:
    browser, _session = await _signed_in(api)
    async with contextlib.aclosing(browser):
        answer = await browser.delete("/v1/session")
        assert answer.status_code == 204
        assert f'{COOKIE}=""' in answer.headers["set-cookie"] and "Max-Age=0" in answer.headers["set-cookie"]
        assert_problem(await browser.get("/v1/runs"), 401)


async def test_a_session_expires_and_dies_with_its_key(servers: Servers) -> None:
    async with serve_app(servers, auth=AuthSettings(session_ttl_s=1)) as api:
        browser, _ = await _signed_in(api)
        async with contextlib.aclosing(browser):
            assert (await browser.get("/v1/runs")).status_code == 200
            sealed = browser.cookies[COOKIE]
            await asyncio.sleep(2.1)  # the browser drops it (Max-Age); one kept anyway is refused:
            browser.cookies.set(COOKIE, sealed)
            expired = assert_problem(await browser.get("/v1/runs"), 401)
            assert "expired" in expired["detail"]
    async with serve_app(servers) as api:
        token = await api_key(api.database_url, "default", ["runs:read"])  # type: ignore[attr-defined]
        async with _browser(api) as browser:
            assert (await browser.post("/v1/session", json={"token": token})).status_code == 200
            assert (await browser.get("/v1/runs")).status_code == 200
            pool = await asyncpg.create_pool(api.database_url, min_size=1, max_size=1)  # type: ignore[attr-defined]
            try:
                assert await KeyStore(pool).revoke(token.split("_")[1]) is not None
            finally:
                await pool.close()
            for _ in range(200):  # the revocation reaches the key cache by NOTIFY
                if (await browser.get("/v1/runs")).status_code == 401:
                    break
                await asyncio.sleep(0.025)
            assert "revoked" in assert_problem(await browser.get("/v1/runs"), 401)["detail"]
