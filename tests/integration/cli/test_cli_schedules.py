"""``flowledger schedules add|list|rm`` against a live service, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.paths import FLOWLEDGER, REPO_ROOT
from tests.helpers.servers import Servers
from tests.helpers.serving import cli_env, serve_app


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
async def app(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(servers, own_database=True) as client:
        yield client


async def _cli(api: httpx.AsyncClient, *args: str, cwd: Path | None = None) -> Ran:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(cli_env(api), COLUMNS="200")
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER, *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return Ran(proc.returncode or 0, out.decode(), err.decode())


async def test_add_list_and_rm(app: httpx.AsyncClient) -> None:
    wid = f"cli-sched-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": [{"id": "a", "type": "noop"}], "edges": []}
    assert (await app.post("/v1/workflows", json=spec)).status_code == 201

    added = await _cli(
        app, "schedules", "add", wid, "--cron", "0 9 * * 1-5", "--tz", "Europe/Paris",
        "--inputs", '{"report": "daily"}', "--catchup", "none", "--format", "json",
    )  # fmt: skip
    assert added.code == 0, added.err
    schedule = json.loads(added.out)
    assert schedule["cron"] == "0 9 * * 1-5" and schedule["timezone"] == "Europe/Paris"
    assert schedule["inputs"] == {"report": "daily"} and schedule["catchup"] == "none"

    every = await _cli(app, "schedules", "add", wid, "--every", "1h", "--overlap", "allow")
    assert every.code == 0, every.err
    assert every.out.startswith("schedule ") and f"of {wid}: every 1h; next fire " in every.out

    listed = await _cli(app, "schedules", "list", wid)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split()[:3] == ["schedule", "workflow", "when"] and len(lines) == 3
    assert schedule["id"] in lines[1] and "cron 0 9 * * 1-5" in lines[1] and "Europe/Paris" in lines[1]
    ndjson = await _cli(app, "schedules", "list", "--format", "ndjson")
    assert [json.loads(line)["workflow_id"] for line in ndjson.out.splitlines()] == [wid, wid]

    removed = await _cli(app, "schedules", "rm", schedule["id"])
    assert removed.code == 0 and f"deleted schedule {schedule['id']}" in removed.out, removed.err
    again = await _cli(app, "schedules", "rm", schedule["id"])
    assert again.code == 1 and f"404: no schedule {schedule['id']}" in again.err
    left = await _cli(app, "schedules", "list", wid, "--format", "json")
    assert len(json.loads(left.out)) == 1


async def test_bad_usage_is_explained(app: httpx.AsyncClient) -> None:
    neither = await _cli(app, "schedules", "add", "wf")
    assert neither.code == 2 and "exactly one of --cron and --every" in neither.err
    bad = await _cli(app, "schedules", "add", "nope", "--every", "5x")
    assert bad.code == 1 and "404" in bad.err  # the workflow is looked up first
    not_json = await _cli(app, "schedules", "add", "wf", "--every", "5m", "--inputs", "{")
    assert not_json.code == 2 and "--inputs" in not_json.err


async def test_the_docs_example_runs_as_written(app: httpx.AsyncClient) -> None:
    """The shell block of docs/workflows.md "Schedules", line by line (``<schedule-id>`` filled in)."""
    text = (REPO_ROOT / "docs" / "workflows.md").read_text()
    section = text[text.index("## Schedules") : text.index("## Large outputs")]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "docs/workflows.md: the Schedules section has no ```sh block"
    for line in block.group(1).splitlines():
        args = shlex.split(line, comments=True)
        assert args[0] == "flowledger", line
        if "<schedule-id>" in args:
            listed = (await app.get("/v1/workflows/delay-demo/schedules")).json()["items"]
            args[args.index("<schedule-id>")] = listed[0]["id"]
        ran = await _cli(app, *args[1:], cwd=REPO_ROOT)
        assert ran.code == 0, (line, ran.out, ran.err)
    left = (await app.get("/v1/workflows/delay-demo/schedules")).json()["items"]
    assert [s["cron"] for s in left] == ["0 9 * * 1-5"]  # the every-30s one was removed
    await app.delete(f"/v1/schedules/{left[0]['id']}")
