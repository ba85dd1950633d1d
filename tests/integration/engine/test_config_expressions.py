"""``{"$expr": ...}`` config values (issue 10, defect 5, and DESIGN's configuration expressions):
resolved over the node document when the node runs; checked as far as possible at registration;
a value that resolves to a bad config fails the node once, never the run's executor."""

from __future__ import annotations

import uuid

import httpx
import pytest

from service.engine.nodes import default_registry
from service.engine.nodes.config_values import dynamic_values, resolve_config
from service.engine.nodes.expressions import ExpressionError
from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.paths import EXAMPLES, FLOWLEDGER
from tests.helpers.serving import cli_env


def test_expressions_are_found_anywhere_and_resolved_over_the_document() -> None:
    config = {
        "url": {"$expr": "inputs.u"},
        "headers": {"x": {"$expr": "nodes.a.token"}},
        "list": [{"$expr": "`1`"}],
    }
    assert [where for where, _kind, _arg in dynamic_values(config)] == [
        "config.url",
        "config.headers.x",
        "config.list[0]",
    ]
    document = {"inputs": {"u": "http://h/"}, "nodes": {"a": {"token": "t"}}}
    assert resolve_config(config, document) == {"url": "http://h/", "headers": {"x": "t"}, "list": [1]}
    assert resolve_config({"plain": {"a": 1}}, document) == {"plain": {"a": 1}}


def test_a_bad_expression_is_named_with_where_it_is() -> None:
    with pytest.raises(ExpressionError, match=r"config\.url: invalid JMESPath expression"):
        dynamic_values({"url": {"$expr": "inputs.["}})
    with pytest.raises(ExpressionError, match="takes a JMESPath expression string"):
        dynamic_values({"url": {"$expr": 3}})


def test_registration_checks_what_it_can_of_a_dynamic_config() -> None:
    registry = default_registry()
    assert registry.check_config("http", {"method": "GET", "url": {"$expr": "inputs.url"}}) is None
    with pytest.raises(ValueError, match="unknown field"):
        registry.check_config("http", {"method": "GET", "url": {"$expr": "inputs.url"}, "bogus": 1})


def _wid() -> str:
    return f"expr-{uuid.uuid4().hex[:8]}"


async def test_an_http_url_from_the_inputs_calls_this_service(api: httpx.AsyncClient) -> None:
    wid = _wid()
    spec = {
        "id": wid,
        "nodes": [
            {
                "id": "get",
                "type": "http",
                "config": {"method": "GET", "url": {"$expr": "join('', [inputs.base, '/health'])"}},
            }
        ],
    }
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    run = (await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": {"base": str(api.base_url)}})).json()
    events = await wait_ended(api, run["run_id"])
    assert events[-1]["data"]["status"] == "succeeded"
    output = next(e for e in events if e["type"] == "node_execute_after_data")["data"]["output"]
    assert output["status_code"] == 200 and output["body"] == {"status": "ok"}


async def test_a_value_that_resolves_to_a_bad_config_fails_the_node_once(api: httpx.AsyncClient) -> None:
    wid = _wid()
    spec = {
        "id": wid,
        "nodes": [
            {
                "id": "wait",
                "type": "delay",
                "config": {"ms": {"$expr": "inputs.ms"}},
                "retry": {"max_attempts": 3},
            }
        ],
    }
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    run = (await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": {"ms": "soon"}})).json()
    events = await wait_ended(api, run["run_id"])
    failed = [e for e in events if e["type"] == "node_execute_after"]
    assert len(failed) == 1 and failed[0]["data"]["error"]["kind"] == "invalid_config"
    assert "wait" in failed[0]["data"]["error"]["message"]
    assert events[-1]["data"]["status"] == "failed"


async def test_a_bad_expression_is_refused_at_registration(api: httpx.AsyncClient) -> None:
    spec = {"id": _wid(), "nodes": [{"id": "t", "type": "delay", "config": {"ms": {"$expr": "inputs.["}}}]}
    problem = assert_problem(await api.post("/v1/workflows", json=spec), 400)
    assert "config.ms" in problem["detail"] and "'t'" in problem["detail"]


async def test_the_http_health_example_runs_as_written_on_any_port(api: httpx.AsyncClient) -> None:
    import asyncio

    env = {**cli_env(api), "PATH": "/usr/bin:/bin"}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            FLOWLEDGER, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()

    assert (await cli("workflows", "add", str(EXAMPLES / "http_health.yaml")))[0] == 0
    code, out = await cli("run", "http-health", "--input", f"base_url={api.base_url}", "--follow")
    assert code == 0, out
    assert '"healthy": true' in out
