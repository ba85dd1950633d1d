"""``bench load`` against a running service (``--url``): the bench workflow registered under a
fresh id, runs started with ``POST /v1/workflows/{id}/runs`` from many concurrent HTTP clients,
and the figures read back from ``GET /v1/runs`` (the service's read model)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import msgspec

from service.bench.load_cpu import local_postgres_pids
from service.bench.load_local import POLL_S, Window
from service.bench.runs import EVENTS_PER_RUN, Stalled, bench_spec

PAGE = 500
TERMINAL = ("succeeded", "failed", "cancelled")


class LoadError(RuntimeError):
    """The load cannot be offered (the service unreachable, a start refused): one line."""


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body.get("title") or response.text)
    except ValueError:
        return response.text[:200]


class HttpTarget:
    label = "service at --url"

    def __init__(self, client: httpx.AsyncClient, workflow_id: str) -> None:
        self._client = client
        self._workflow_id = workflow_id

    async def start_run(self, i: int) -> None:
        try:
            response = await self._client.post(
                f"/v1/workflows/{self._workflow_id}/runs", json={"inputs": {"i": i}}
            )
        except httpx.TransportError as exc:
            raise LoadError(f"starting a run at {self._client.base_url} failed: {exc!r}") from exc
        if response.status_code != 202:
            raise LoadError(f"starting a run: {response.status_code}: {_problem(response)}")

    def check_alive(self) -> None:
        return None

    async def _runs(self) -> list[dict[str, Any]]:
        """Every run of the bench workflow, from the read model."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"workflow_id": self._workflow_id, "limit": PAGE}
            if cursor:
                params["cursor"] = cursor
            response = await self._client.get("/v1/runs", params=params)
            if response.status_code != 200:
                raise LoadError(f"listing runs: {response.status_code}: {_problem(response)}")
            page = response.json()
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    async def window(self, since: datetime, until: datetime) -> Window:
        """Runs whose ``finished_at`` lies in the window (the service's clock: same machine, or
        synchronised); events are counted as 18 per finished run."""
        latencies = []
        for run in await self._runs():
            if run.get("finished_at") is None or run.get("queued_at") is None:
                continue
            finished = datetime.fromisoformat(run["finished_at"])
            if since <= finished < until:
                queued = datetime.fromisoformat(run["queued_at"])
                latencies.append((finished - queued).total_seconds() * 1000)
        return Window(len(latencies), len(latencies) * EVENTS_PER_RUN, tuple(latencies))

    async def unfinished(self) -> int:
        return sum(1 for run in await self._runs() if run["status"] not in TERMINAL)

    async def postgres_pids(self) -> list[int]:
        return local_postgres_pids()

    def service_pids(self) -> list[int] | None:
        return None

    async def drain(self, issued: int, stall_s: float) -> None:
        """Wait until every started run is terminal in the read model; all must have succeeded."""
        last, changed = -1, time.monotonic()
        while True:
            runs = await self._runs()
            ended = [run for run in runs if run["status"] in TERMINAL]
            if len(runs) >= issued and len(ended) == len(runs):
                break
            if len(ended) != last:
                last, changed = len(ended), time.monotonic()
            elif time.monotonic() - changed > stall_s:
                raise Stalled(f"no run finished for {stall_s:.0f} s ({len(ended)} of {issued})")
            await asyncio.sleep(max(POLL_S, 0.5))
        failed = [run["run_id"] for run in runs if run["status"] != "succeeded"]
        if len(runs) != issued or failed:
            raise LoadError(f"{issued - len(failed)} of {issued} runs succeeded ({len(runs)} listed)")


@contextlib.asynccontextmanager
async def http_target(url: str, api_key: str | None, clients: int) -> AsyncIterator[HttpTarget]:
    """The service at ``url``, reachable and ready, with the bench workflow registered anew."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), headers=headers, limits=limits, timeout=60
    ) as client:
        try:
            ready = await client.get("/ready")
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise LoadError(f"cannot reach the Flowledger API at {url} ({exc})") from exc
        if ready.status_code != 200:
            raise LoadError(f"the service at {url} is not ready: {ready.status_code}: {_problem(ready)}")
        spec = msgspec.to_builtins(bench_spec("noop"))
        workflow_id = f"bench-load-{uuid.uuid4().hex[:10]}"
        spec["id"] = workflow_id
        registered = await client.post("/v1/workflows", json=spec)
        if registered.status_code not in (200, 201):
            raise LoadError(
                f"registering the bench workflow: {registered.status_code}: {_problem(registered)}"
            )
        yield HttpTarget(client, workflow_id)
