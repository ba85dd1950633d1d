"""CORS: a browser page on an origin named in ``FLOWLEDGER_CORS_ORIGINS`` (``serve --cors-origin``)
may call the API and follow its SSE streams; by default no origin may (no ``Access-Control-*``
header at all)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from service.config import Settings, parse_origins
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app

CONSOLE = "http://console.example:8080"
OTHER = "http://evil.example"


def _preflight(
    origin: str, method: str = "POST", headers: str = "authorization, content-type"
) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


async def _run(api: httpx.AsyncClient) -> str:
    wid = f"cors-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": [{"id": "a", "type": "noop"}]}
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    started = await api.post(f"/v1/workflows/{wid}/runs", json={})
    assert started.status_code == 202, started.text
    return str(started.json()["run_id"])


async def test_no_origin_is_allowed_by_default(api: httpx.AsyncClient) -> None:
    preflight = await api.options("/v1/workflows", headers=_preflight(CONSOLE))
    assert _cors_headers(preflight) == {}, preflight.headers
    listed = await api.get("/v1/workflows", headers={"Origin": CONSOLE})
    assert listed.status_code == 200 and _cors_headers(listed) == {}


async def test_a_configured_origin_may_call_the_api_and_follow_sse(servers: Servers) -> None:
    async with serve_app(servers, cors_origins=(CONSOLE,)) as api:
        preflight = await api.options("/v1/workflows/some-id/runs", headers=_preflight(CONSOLE))
        assert preflight.status_code == 204, preflight.text
        allowed = _cors_headers(preflight)
        assert allowed["access-control-allow-origin"] == CONSOLE
        assert "POST" in allowed["access-control-allow-methods"]
        assert {"authorization", "content-type"} <= {
            h.strip().lower() for h in allowed["access-control-allow-headers"].split(",")
        }

        run_id = await _run(api)
        read = await api.get(f"/v1/runs/{run_id}/events", headers={"Origin": CONSOLE})
        assert read.status_code == 200
        assert read.headers["access-control-allow-origin"] == CONSOLE

        # SSE: the stream a page's EventSource opens carries the header too.
        async with api.stream(
            "GET", f"/v1/runs/{run_id}/stream", headers={"Origin": CONSOLE}, timeout=30
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["access-control-allow-origin"] == CONSOLE

        # Any other origin gets no permission.
        refused = await api.options("/v1/workflows", headers=_preflight(OTHER))
        assert "access-control-allow-origin" not in _cors_headers(refused)
        other = await api.get("/v1/workflows", headers={"Origin": OTHER})
        assert "access-control-allow-origin" not in _cors_headers(other)


def test_origins_setting_reads_commas_and_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_origins(f" {CONSOLE}/, {OTHER} {CONSOLE}") == (CONSOLE, OTHER)
    assert parse_origins("") == ()
    monkeypatch.setenv("FLOWLEDGER_CORS_ORIGINS", f"{CONSOLE},{OTHER}")
    assert Settings.from_env().cors_origins == (CONSOLE, OTHER)
