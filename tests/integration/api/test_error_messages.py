"""Each error message names the thing that is wrong: the parameter or header a bad resume point
came in, the request body (and its field) when it is not what the operation reads, the query
parameter that failed validation; and ``/ready`` never reports a position it does not know."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from service.api.app import create_app
from service.config import Settings
from tests.helpers.api import assert_problem
from tests.helpers.databases import scratch_database
from tests.helpers.servers import Servers
from tests.helpers.serving import delete_stream, free_port, serve


async def _workflow(api: httpx.AsyncClient) -> str:
    wid = f"msg-{uuid.uuid4().hex[:8]}"
    assert (
        await api.post("/v1/workflows", json={"id": wid, "nodes": [{"id": "a", "type": "noop"}]})
    ).status_code == 201
    return wid


@pytest.mark.parametrize(
    ("path", "params", "headers", "named", "not_named"),
    [
        ("/v1/stream", {"after_position": "abc"}, {}, "after_position", "Last-Event-ID"),
        ("/v1/stream", {}, {"Last-Event-ID": "abc"}, "Last-Event-ID", "after_position"),
        ("/v1/runs/{run}/stream", {"after_seq": "abc"}, {}, "after_seq", "Last-Event-ID"),
        ("/v1/runs/{run}/stream", {}, {"Last-Event-ID": "abc"}, "Last-Event-ID", "after_seq"),
    ],
)
async def test_a_bad_resume_point_names_where_it_came_from(
    api: httpx.AsyncClient,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    named: str,
    not_named: str,
) -> None:
    run_id = (await api.post(f"/v1/workflows/{await _workflow(api)}/runs")).json()["run_id"]
    body = assert_problem(await api.get(path.format(run=run_id), params=params, headers=headers), 400)
    assert named in body["detail"] and not_named not in body["detail"], body


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"inputs":', ["request body", "not valid JSON"]),
        (b'{"inputs": 5}', ["request body", "$.inputs"]),
        (b'{"inputs": {}, "bogus": 1}', ["request body", "bogus"]),
    ],
)
async def test_a_bad_start_body_names_the_body_and_its_field(
    api: httpx.AsyncClient, content: bytes, words: list[str]
) -> None:
    wid = await _workflow(api)
    response = await api.post(
        f"/v1/workflows/{wid}/runs", content=content, headers={"content-type": "application/json"}
    )
    detail = assert_problem(response, 400)["detail"]
    assert all(word in detail for word in words), detail
    assert detail != "Input data was truncated"


async def test_a_body_of_another_media_type_is_a_415_naming_it(api: httpx.AsyncClient) -> None:
    wid = await _workflow(api)
    start = await api.post(
        f"/v1/workflows/{wid}/runs",
        content=b"inputs=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "application/x-www-form-urlencoded" in assert_problem(start, 415)["detail"]
    register = await api.post(
        "/v1/workflows", content=b"<workflow/>", headers={"content-type": "application/xml"}
    )
    assert "application/xml" in assert_problem(register, 415)["detail"]


@pytest.mark.parametrize(("params", "name"), [({"limit": "abc"}, "limit"), ({"status": "nope"}, "status")])
async def test_a_bad_query_parameter_is_named(
    api: httpx.AsyncClient, params: dict[str, str], name: str
) -> None:
    detail = assert_problem(await api.get("/v1/runs", params=params), 400)["detail"]
    assert f"query parameter {name!r}" in detail, detail


@contextlib.asynccontextmanager
async def _instance(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings), settings.http_port) as api:
        yield api


async def test_a_standby_relay_reports_no_position(servers: Servers) -> None:
    """Two instances on one log: only the one whose relay is active knows how far it has published."""
    token = uuid.uuid4().hex[:8]
    async with scratch_database(servers.database_url, prefix="standby") as database_url:
        shared = Settings(
            database_url=database_url,
            nats_url=servers.nats_url,
            nats_stream=f"STBY_{token}",
            nats_subject_prefix=f"stby{token}.events",
            home=servers.home,
        )
        try:
            async with (
                _instance(replace(shared, http_port=free_port())) as a,
                _instance(replace(shared, http_port=free_port())) as b,
            ):
                states: list[dict[str, Any]] = []
                for _ in range(200):
                    states = [(await i.get("/ready")).json() for i in (a, b)]
                    if any(s["relay_active"] for s in states):
                        break
                    await asyncio.sleep(0.05)
                active = [s for s in states if s["relay_active"]]
                standby = [s for s in states if not s["relay_active"]]
                assert len(active) == 1 and len(standby) == 1, states
                assert isinstance(active[0]["relay_position"], int)
                assert standby[0]["relay_position"] is None, standby
        finally:
            await delete_stream(servers.nats_url, shared.nats_stream)


async def test_not_ready_is_a_problem_whose_status_stays_the_http_status(
    tmp_path: Path, servers: Servers
) -> None:
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/none", nats_url=servers.nats_url, home=tmp_path
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == 503 and body["readiness"]["status"] in ("starting", "unavailable"), body
    assert body["readiness"]["postgres"] is False and body["readiness"]["relay_position"] is None
