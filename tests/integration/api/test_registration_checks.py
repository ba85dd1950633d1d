"""Registration catches what would fail every run, and warns about what is probably not meant
(issue 10, defect 8)."""

from __future__ import annotations

import uuid

import httpx

from tests.helpers.api import assert_problem


def _wid() -> str:
    return f"reg-{uuid.uuid4().hex[:8]}"


async def test_a_python_node_whose_module_does_not_exist_is_refused_naming_the_node(
    api: httpx.AsyncClient,
) -> None:
    spec = {
        "id": _wid(),
        "nodes": [{"id": "calc", "type": "python", "config": {"callable": "no_such_mod_9f:run"}}],
    }
    problem = assert_problem(await api.post("/v1/workflows", json=spec), 400)
    assert "calc" in problem["detail"] and "no_such_mod_9f" in problem["detail"]
    assert [p["node_id"] for p in problem["problems"]] == ["calc"]


async def test_a_python_node_naming_a_missing_function_of_a_loaded_module_is_refused(
    api: httpx.AsyncClient,
) -> None:
    spec = {
        "id": _wid(),
        "nodes": [{"id": "calc", "type": "python", "config": {"callable": "json:no_such_function"}}],
    }
    problem = assert_problem(await api.post("/v1/workflows", json=spec), 400)
    assert "no attribute 'no_such_function'" in problem["detail"]


async def test_an_importable_callable_is_accepted(api: httpx.AsyncClient) -> None:
    spec = {"id": _wid(), "nodes": [{"id": "calc", "type": "python", "config": {"callable": "json:dumps"}}]}
    response = await api.post("/v1/workflows", json=spec)
    assert response.status_code == 201, response.text
    assert response.json()["warnings"] == []


async def test_a_node_no_edge_connects_gets_a_warning(api: httpx.AsyncClient) -> None:
    spec = {
        "id": _wid(),
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}, {"id": "lonely", "type": "noop"}],
        "edges": [{"from": "a", "to": "b"}],
    }
    response = await api.post("/v1/workflows", json=spec)
    assert response.status_code == 201, response.text
    (warning,) = response.json()["warnings"]
    assert "'lonely' is not connected" in warning


async def test_a_single_node_workflow_gets_no_warning(api: httpx.AsyncClient) -> None:
    spec = {"id": _wid(), "nodes": [{"id": "only", "type": "noop"}]}
    assert (await api.post("/v1/workflows", json=spec)).json()["warnings"] == []
