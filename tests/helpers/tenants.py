"""Tenants for the authorization tests: API keys in bulk, and a tenant's objects (a workflow and
finished runs) whose ids and inputs another tenant must never see."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from service.store.keys import KeyStore
from tests.helpers.api import wait_ended


async def api_keys(database_url: str, tenant: str, scope_sets: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """One new API key of ``tenant`` per entry of ``scope_sets`` (name -> scopes): name -> token."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        keys = KeyStore(pool)
        tokens = {}
        for name, scopes in scope_sets.items():
            _key, tokens[name] = await keys.create(tenant=tenant, scopes=list(scopes), created_by="test")
    finally:
        await pool.close()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class TenantObjects:
    """A workflow of one tenant and two finished runs of it (``run_id``, ``other_run_id``)."""

    tenant: str
    token: str
    """A key of the tenant with every scope."""
    workflow_id: str
    node_id: str
    run_id: str
    other_run_id: str
    secret_input: str
    """A value in the runs' inputs (and so in their outputs)."""
    schedule_id: str = ""
    """A schedule of the workflow (one that fires only on 1 January)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path_values(self) -> dict[str, str]:
        """Values for the path parameters of the API's routes."""
        return {
            "workflow_id": self.workflow_id,
            "node_id": self.node_id,
            "run_id": self.run_id,
            "other_run_id": self.other_run_id,
            "schedule_id": self.schedule_id,
            "name": "approve",  # a signal's name
        }

    @property
    def markers(self) -> list[str]:
        """Everything of this tenant another tenant must not learn."""
        return [
            self.workflow_id,
            self.node_id,
            self.run_id,
            self.other_run_id,
            self.secret_input,
            self.schedule_id,
        ]


async def make_objects(client: httpx.AsyncClient, tenant: str, token: str, label: str) -> TenantObjects:
    """Register a workflow as ``tenant`` (with ``token``, a key having every scope), run it
    twice to the end and schedule it; ids carry ``label`` and a random part, so they are unique
    in any body."""
    tag = f"{label}{uuid.uuid4().hex[:8]}"
    workflow_id, node_id, secret = f"wf-{tag}", f"echo-{tag}", f"secret-{tag}"
    spec = {
        "id": workflow_id,
        "nodes": [{"id": node_id, "type": "transform", "config": {"expression": "inputs"}}],
        "edges": [],
    }
    headers = bearer(token)
    registered = await client.post("/v1/workflows", json=spec, headers=headers)
    assert registered.status_code == 201, registered.text
    runs = []
    for i in range(2):
        started = await client.post(
            f"/v1/workflows/{workflow_id}/runs", json={"inputs": {"card": secret, "i": i}}, headers=headers
        )
        assert started.status_code == 202, started.text
        runs.append(started.json()["run_id"])
    scoped = httpx.AsyncClient(base_url=client.base_url, headers=headers, timeout=10)
    async with scoped:
        for run_id in runs:
            await wait_ended(scoped, run_id)
            await wait_projected(scoped, run_id)
    scheduled = await client.post(
        f"/v1/workflows/{workflow_id}/schedules",
        json={"cron": "0 0 1 1 *", "inputs": {"card": secret}},
        headers=headers,
    )
    assert scheduled.status_code == 201, scheduled.text
    return TenantObjects(
        tenant, token, workflow_id, node_id, runs[0], runs[1], secret, scheduled.json()["id"]
    )


async def wait_projected(client: httpx.AsyncClient, run_id: str, timeout: float = 20.0) -> None:
    """Wait until the run's summary (a read model) shows it ended."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/v1/runs/{run_id}")
        if response.status_code == 200 and response.json()["status"] in ("succeeded", "failed", "cancelled"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} not projected as ended within {timeout:g} s: {response.text}")
        await asyncio.sleep(0.025)
