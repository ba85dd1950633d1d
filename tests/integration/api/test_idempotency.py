"""Idempotency keys follow Stripe's rule (issue 10, defect 2): a repeat of the same request returns
the first run with its current status; the same key with another request is a 409 naming the key."""

from __future__ import annotations

import uuid

import httpx

from tests.helpers.api import assert_problem, wait_ended

WORKFLOW = {"id": "idem", "nodes": [{"id": "a", "type": "noop"}]}


async def _start(api: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    return await api.post("/v1/workflows/idem/runs", json=body)


async def test_a_repeated_request_returns_the_first_run_with_its_current_status(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.post("/v1/workflows", json=WORKFLOW)).status_code in (200, 201)
    key = f"k-{uuid.uuid4()}"
    first = await _start(api, {"inputs": {"n": 1}, "idempotency_key": key})
    assert first.status_code == 202 and first.json()["created"] is True
    assert first.json()["status"] == "queued"
    run_id = first.json()["run_id"]
    await wait_ended(api, run_id)
    again = await _start(api, {"inputs": {"n": 1}, "idempotency_key": key})
    assert again.status_code == 202
    body = again.json()
    assert body["run_id"] == run_id and body["created"] is False
    assert body["status"] == "succeeded"  # its status now, not the stale "queued"


async def test_the_same_key_with_other_inputs_is_a_409_naming_the_key(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/workflows", json=WORKFLOW)).status_code in (200, 201)
    key = f"k-{uuid.uuid4()}"
    first = await _start(api, {"inputs": {"n": 1}, "idempotency_key": key})
    conflict = await _start(api, {"inputs": {"n": 2}, "idempotency_key": key})
    problem = assert_problem(conflict, 409)
    assert key in problem["detail"] and problem["run_id"] == first.json()["run_id"]
    # key order and number spelling do not make a request different
    same = await _start(api, {"idempotency_key": key, "inputs": {"n": 1.0}})
    assert same.status_code == 202 and same.json()["run_id"] == first.json()["run_id"]


async def test_the_same_key_naming_another_version_is_a_409(api: httpx.AsyncClient) -> None:
    v1 = (await api.post("/v1/workflows", json=WORKFLOW)).json()["version"]
    v2 = (await api.post("/v1/workflows", json={**WORKFLOW, "name": "changed"})).json()["version"]
    key = f"k-{uuid.uuid4()}"
    assert (await _start(api, {"idempotency_key": key, "version": v1})).status_code == 202
    assert_problem(await _start(api, {"idempotency_key": key, "version": v2}), 409)
    await api.post("/v1/workflows", json=WORKFLOW)  # v1 current again for the other tests
