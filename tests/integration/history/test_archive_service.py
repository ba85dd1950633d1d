"""Archiving under a running service: workflows run to their end through the API, the archive
takes the ended runs out of the log (small partitions, so some are detached), the API says
so for their events while their summaries stay listed, a waiting run is untouched and can
still finish, and ``flowledger import`` of the bundle makes every event readable again."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from service.infra.migrations import apply_migrations
from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.databases import scratch_database
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app

PARTITION_SIZE = 16


async def _flowledger(url: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER,
        "--database-url",
        url,
        "--log-level",
        "warning",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def _events(api: httpx.AsyncClient, run_id: str) -> httpx.Response:
    return await api.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})


async def _start(api: httpx.AsyncClient, wid: str) -> str:
    response = await api.post(f"/v1/workflows/{wid}/runs", json={})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def _waiting(api: httpx.AsyncClient, run_id: str) -> None:
    for _ in range(400):
        items = (await _events(api, run_id)).json()["items"]
        if any(e["type"] == "run_waiting" for e in items):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not wait")


async def test_archive_under_a_running_service_and_import_back(servers: Servers, tmp_path: Path) -> None:
    async with scratch_database(servers.database_url, prefix="archive") as url:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
            await conn.execute("UPDATE flowledger.event_partitioning SET partition_size = $1", PARTITION_SIZE)
        finally:
            await conn.close()
        async with serve_app(servers, database_url=url) as api:
            wid, gate = f"arc-{uuid.uuid4().hex[:8]}", f"gate-{uuid.uuid4().hex[:8]}"
            nodes: list[dict[str, Any]] = [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}]
            spec = {"id": wid, "nodes": nodes, "edges": [{"from": "a", "to": "b"}]}
            assert (await api.post("/v1/workflows", json=spec)).status_code == 201
            waiting = {
                "id": gate,
                "nodes": [{"id": "ask", "type": "wait", "config": {"signal": "go"}}],
                "edges": [],
            }
            assert (await api.post("/v1/workflows", json=waiting)).status_code == 201

            ended = []
            for _ in range(5):
                ended.append(await _start(api, wid))
                await wait_ended(api, ended[-1])
            held = await _start(api, gate)
            await _waiting(api, held)
            for _ in range(5):
                ended.append(await _start(api, wid))
                await wait_ended(api, ended[-1])
            before = {r: (await _events(api, r)).json()["items"] for r in [*ended, held]}

            tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
            code, out = await _flowledger(url, "archive", "--before", tomorrow, "-o", str(tmp_path))
            assert code == 0, out
            assert "detached and dropped partition" in out, out
            assert f"e.g. run {held}" in out, out  # the waiting run's partitions stay

            answers = {r: await _events(api, r) for r in ended}
            gone = [r for r, a in answers.items() if a.status_code == 404]
            partly = [r for r, a in answers.items() if a.status_code == 410]
            whole = [r for r, a in answers.items() if a.status_code == 200]
            assert gone and len(gone) + len(partly) + len(whole) == len(ended), answers
            for run_id in partly:
                assert "was archived" in assert_problem(answers[run_id], 410)["detail"]
            for run_id in whole:
                assert answers[run_id].json()["items"] == before[run_id]
            for run_id in ended:  # the summaries stay: listings still show archived runs
                summary = await api.get(f"/v1/runs/{run_id}")
                assert summary.status_code == 200 and summary.json()["status"] == "succeeded"

            # The waiting run was not archived: it is whole and can still finish.
            assert (await _events(api, held)).json()["items"] == before[held]
            assert (await api.post(f"/v1/runs/{held}/signals/go", json={})).status_code == 202
            finished = await wait_ended(api, held)
            assert finished[: len(before[held])] == before[held]

            code, out = await _flowledger(url, "audit", "verify", "--all", "--archive-dir", str(tmp_path))
            assert code == 0, out
            assert "archived run" in out

            (bundle,) = await asyncio.to_thread(lambda: list(tmp_path.glob("*.ndjson")))
            code, out = await _flowledger(url, "import", str(bundle))
            assert code == 0, out
            assert "restored" in out
            for run_id in ended:
                response = await _events(api, run_id)
                assert response.status_code == 200, response.text
                assert response.json()["items"] == before[run_id]
            code, out = await _flowledger(url, "audit", "verify", "--all")
            assert code == 0, out
            assert "archived run" not in out
