"""Names are per tenant: two tenants register the same workflow id, and use the same idempotency key,
without ever meeting. Each sees its own workflow, runs, node history and figures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.config import ALL_SCOPES
from tests.helpers.api import wait_ended
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app
from tests.helpers.tenants import api_keys, bearer, wait_projected

SAME_ID = "same-id"


@dataclass
class Tenants:
    a: httpx.AsyncClient
    b: httpx.AsyncClient


@pytest.fixture(scope="module")
async def tenants(servers: Servers) -> AsyncIterator[Tenants]:
    async with serve_app(servers, own_database=True) as admin:
        database_url: str = admin.database_url  # type: ignore[attr-defined]
        a_token = (await api_keys(database_url, "acme", {"all": ALL_SCOPES}))["all"]
        b_token = (await api_keys(database_url, "globex", {"all": ALL_SCOPES}))["all"]
        base = admin.base_url
        async with (
            httpx.AsyncClient(base_url=base, headers=bearer(a_token), timeout=10) as a,
            httpx.AsyncClient(base_url=base, headers=bearer(b_token), timeout=10) as b,
        ):
            yield Tenants(a, b)


def _spec(node_id: str, expression: str) -> dict[str, Any]:
    return {
        "id": SAME_ID,
        "name": f"the {node_id} flavour",
        "nodes": [{"id": node_id, "type": "transform", "config": {"expression": expression}}],
        "edges": [],
    }


async def test_the_same_workflow_id_in_two_tenants(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    registered_a = await a.post("/v1/workflows", json=_spec("acme_node", "inputs.x"))
    registered_b = await b.post("/v1/workflows", json=_spec("globex_node", "inputs.y"))
    assert registered_a.status_code == 201 and registered_b.status_code == 201, (
        registered_a.text,
        registered_b.text,
    )
    assert registered_a.json()["created"] and registered_b.json()["created"]
    version_a, version_b = registered_a.json()["version"], registered_b.json()["version"]
    assert version_a != version_b

    for client, node, version, other_version in [
        (a, "acme_node", version_a, version_b),
        (b, "globex_node", version_b, version_a),
    ]:
        detail = (await client.get(f"/v1/workflows/{SAME_ID}")).json()
        assert [n["id"] for n in detail["spec"]["nodes"]] == [node]
        assert [v["version"] for v in detail["versions"]] == [version]
        assert (
            await client.get(f"/v1/workflows/{SAME_ID}", params={"version": other_version})
        ).status_code == 404
        listed = (await client.get("/v1/workflows")).json()["items"]
        assert [(w["id"], w["version"]) for w in listed] == [(SAME_ID, version)]

    run_a = (await a.post(f"/v1/workflows/{SAME_ID}/runs", json={"inputs": {"x": "from-a"}})).json()["run_id"]
    run_b = (await b.post(f"/v1/workflows/{SAME_ID}/runs", json={"inputs": {"y": "from-b"}})).json()["run_id"]
    events_a, events_b = await wait_ended(a, run_a), await wait_ended(b, run_b)
    assert events_a[0]["data"]["workflow_version"] == version_a and events_a[-1]["type"] == "run_finished"
    assert events_b[0]["data"]["workflow_version"] == version_b and events_b[-1]["type"] == "run_finished"
    await wait_projected(a, run_a)
    await wait_projected(b, run_b)

    for client, node, own, other in [(a, "acme_node", run_a, run_b), (b, "globex_node", run_b, run_a)]:
        runs = (await client.get("/v1/runs", params={"workflow_id": SAME_ID})).json()["items"]
        assert [r["run_id"] for r in runs] == [own]
        history = (await client.get(f"/v1/workflows/{SAME_ID}/nodes/{node}/history")).json()["items"]
        assert [h["run_id"] for h in history] == [own]
        lineage = (await client.get(f"/v1/runs/{own}/lineage")).json()
        assert [n["id"] for n in lineage["nodes"]] == [node]
        summary = (await client.get("/v1/metrics/summary", params={"workflow_id": SAME_ID})).json()
        assert [(w["workflow_id"], w["runs"]) for w in summary["workflows"]] == [(SAME_ID, 1)]
        assert (await client.get(f"/v1/runs/{other}")).status_code == 404
    # The other tenant's node is unknown in this tenant's workflow of the same id.
    assert (await a.get(f"/v1/workflows/{SAME_ID}/nodes/globex_node/history")).status_code == 404


async def test_the_same_idempotency_key_in_two_tenants_gives_two_runs(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    wid = f"idem-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": [{"id": "n", "type": "noop"}], "edges": []}
    for client in (a, b):
        assert (await client.post("/v1/workflows", json=spec)).status_code == 201
    key = f"order-{uuid.uuid4().hex[:8]}"

    async def start(client: httpx.AsyncClient, inputs: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(
            f"/v1/workflows/{wid}/runs", json={"inputs": inputs, "idempotency_key": key}
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    first_a = await start(a, {"n": 1})
    first_b = await start(b, {"n": 2})  # other inputs: another tenant's key is not a reuse (no 409)
    assert first_a["created"] and first_b["created"]
    assert first_a["run_id"] != first_b["run_id"]
    again_a, again_b = await start(a, {"n": 1}), await start(b, {"n": 2})
    assert (again_a["run_id"], again_a["created"]) == (first_a["run_id"], False)
    assert (again_b["run_id"], again_b["created"]) == (first_b["run_id"], False)
    # A's key is still A's: B repeating A's request does not get A's run.
    crossed = await b.post(f"/v1/workflows/{wid}/runs", json={"inputs": {"n": 1}, "idempotency_key": key})
    assert crossed.status_code == 409 and first_a["run_id"] not in crossed.text
    assert first_b["run_id"] in crossed.text
    for client, own, other in [(a, first_a, first_b), (b, first_b, first_a)]:
        events = await wait_ended(client, own["run_id"])
        assert events[0]["data"]["idempotency_key"] == key
        assert (await client.get(f"/v1/runs/{other['run_id']}/events")).status_code == 404
