"""A body nested too deeply is a 400 naming the depth limit, never a 500 from a RecursionError.

The limit is a setting (``FLOWLEDGER_MAX_JSON_DEPTH``, ``serve --max-json-depth``, default 64)
and covers run inputs, workflow specs (JSON and YAML, whose depth is refused before the YAML
is built) and the WebSocket's messages, where it is an ``error`` frame on a connection that
stays open.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
import websockets

from tests.helpers.api import assert_problem
from tests.helpers.servers import Servers
from tests.helpers.serving import auth_headers, serve_app

DEFAULT_LIMIT = 64


def nested(depth: int) -> str:
    """A JSON (and YAML flow) array ``depth`` levels deep."""
    return "[" * depth + "]" * depth


def _spec(workflow_id: str, config: str = "{}") -> str:
    return f'{{"id": "{workflow_id}", "nodes": [{{"id": "a", "type": "noop", "config": {config}}}], "edges": []}}'


async def _workflow(api: httpx.AsyncClient) -> str:
    wid = f"deep-{uuid.uuid4().hex[:8]}"
    registered = await api.post(
        "/v1/workflows", content=_spec(wid), headers={"content-type": "application/json"}
    )
    assert registered.status_code == 201, registered.text
    return wid


def _names_limit(body: dict[str, Any], limit: int) -> None:
    assert f"{limit} levels" in body["detail"], body
    assert "FLOWLEDGER_MAX_JSON_DEPTH" in body["detail"], body


@pytest.mark.parametrize("depth", [990, 1000, 100_000])
async def test_deep_run_inputs_are_a_400_naming_the_limit(api: httpx.AsyncClient, depth: int) -> None:
    wid = await _workflow(api)
    body = f'{{"inputs": {{"x": {nested(depth)}}}}}'
    response = await api.post(
        f"/v1/workflows/{wid}/runs", content=body, headers={"content-type": "application/json"}
    )
    _names_limit(assert_problem(response, 400), DEFAULT_LIMIT)


async def test_deep_bodies_of_cancel_and_replay_are_a_400(api: httpx.AsyncClient) -> None:
    run = uuid.uuid4()
    for path, body in [
        (f"/v1/runs/{run}/cancel", f'{{"reason": {nested(1000)}}}'),
        (f"/v1/runs/{run}/replay", f'{{"overrides": {{"a": {nested(1000)}}}}}'),
    ]:
        response = await api.post(path, content=body, headers={"content-type": "application/json"})
        _names_limit(assert_problem(response, 400), DEFAULT_LIMIT)


@pytest.mark.parametrize("content_type", ["application/json", None])
async def test_deep_workflow_config_is_a_400_naming_the_limit(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    wid = f"deep-{uuid.uuid4().hex[:8]}"
    response = await api.post(
        "/v1/workflows", content=_spec(wid, f'{{"x": {nested(1000)}}}'), headers=headers
    )
    _names_limit(assert_problem(response, 400), DEFAULT_LIMIT)
    assert (await api.get(f"/v1/workflows/{wid}")).status_code == 404


@pytest.mark.parametrize(
    "document",
    [
        # flow style, as in the report: 5000 levels of [
        "id: w\nnodes:\n- id: a\n  type: noop\n  config:\n    x: " + nested(5000) + "\n",
        # block style: 200 levels of indentation
        "id: w\nnodes:\n- id: a\n  type: noop\n  config:\n"
        + "".join("    " + "  " * i + "k:\n" for i in range(200))
        + "    "
        + "  " * 200
        + "k: 1\n",
    ],
    ids=["flow", "block"],
)
async def test_deep_yaml_is_refused_before_it_is_built(api: httpx.AsyncClient, document: str) -> None:
    started = time.perf_counter()
    response = await api.post("/v1/workflows", content=document, headers={"content-type": "application/yaml"})
    elapsed = time.perf_counter() - started
    _names_limit(assert_problem(response, 400), DEFAULT_LIMIT)
    assert elapsed < 1.0, f"a deep YAML document took {elapsed:.2f} s to refuse"


async def test_the_depth_limit_is_a_setting(servers: Servers) -> None:
    async with serve_app(servers, max_json_depth=8) as api:
        wid = await _workflow(api)

        def start(depth: int) -> str:  # the body is 2 levels ({"inputs": {"x": ...}}) plus the value's
            return f'{{"inputs": {{"x": {nested(depth - 2)}}}}}'

        headers = {"content-type": "application/json"}
        accepted = await api.post(f"/v1/workflows/{wid}/runs", content=start(8), headers=headers)
        assert accepted.status_code == 202, accepted.text
        refused = await api.post(f"/v1/workflows/{wid}/runs", content=start(9), headers=headers)
        _names_limit(assert_problem(refused, 400), 8)


async def test_a_deep_websocket_message_is_an_error_frame_and_the_connection_stays(
    api: httpx.AsyncClient,
) -> None:
    url = str(api.base_url).replace("http://", "ws://") + "/v1/push?pushRef=deep"
    async with websockets.connect(url, additional_headers=auth_headers(api)) as ws:
        await ws.send(f'{{"type": "subscribe", "data": {{"executionId": {nested(5000)}}}}}')
        error = json.loads(await ws.recv())
        assert error["type"] == "error", error
        assert f"{DEFAULT_LIMIT} levels" in error["data"]["message"], error
        # Still connected: the next message is answered.
        await ws.send(json.dumps({"type": "subscribe", "data": {"executionId": str(uuid.uuid4())}}))
        unknown = json.loads(await ws.recv())
        assert unknown["type"] == "error" and "no run" in unknown["data"]["message"], unknown
