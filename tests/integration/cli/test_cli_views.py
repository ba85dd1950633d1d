"""Every view of the API has a CLI command, and every listing speaks table, json and ndjson
(issue 10): lineage, metrics, node history; piped tables that never wrap; run --follow ending
with the outputs or the error; events with their times."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers.api import wait_ended
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.serving import cli_env


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def _cli(api: httpx.AsyncClient, *args: str) -> Ran:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(cli_env(api), COLUMNS="80")
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return Ran(proc.returncode or 0, out.decode(), err.decode())


async def _workflow(api: httpx.AsyncClient) -> str:
    wid = f"views-{uuid.uuid4().hex[:8]}"
    spec = {
        "id": wid,
        "nodes": [
            {"id": "pick", "type": "branch", "config": {"expression": "inputs.go"}},
            {"id": "yes", "type": "transform", "config": {"expression": "{answer: inputs.text}"}},
            {"id": "no", "type": "noop"},
        ],
        "edges": [
            {"from": "pick", "to": "yes", "when": "true"},
            {"from": "pick", "to": "no", "when": "false"},
        ],
    }
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    return wid


async def _run(api: httpx.AsyncClient, wid: str, text: str) -> str:
    body = {"inputs": {"go": True, "text": text}}
    run_id = str((await api.post(f"/v1/workflows/{wid}/runs", json=body)).json()["run_id"])
    await wait_ended(api, run_id)
    return run_id


async def test_run_follow_ends_with_the_outputs(api: httpx.AsyncClient) -> None:
    wid = await _workflow(api)
    ran = await _cli(api, "run", wid, "--input", "go=true", "--input", "text=hello world", "--follow")
    assert ran.code == 0, ran
    tail = ran.out[ran.out.index("outputs:") :]
    assert json.loads(tail.removeprefix("outputs:")) == {"yes": {"answer": "hello world"}}


async def test_run_follow_ends_with_the_error_of_a_failed_run(api: httpx.AsyncClient) -> None:
    wid = f"views-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": [{"id": "boom", "type": "fail", "config": {"message": "no luck today"}}]}
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    ran = await _cli(api, "run", wid, "--follow")
    assert ran.code == 1
    assert ran.out.rstrip().splitlines()[-1].startswith("failed: node boom failed")
    assert "no luck today" in ran.out.rstrip().splitlines()[-1]


async def _summary_finished(api: httpx.AsyncClient, run_id: str) -> None:
    """The projection (what listings read) lags the log a little: wait until it has the end too."""
    for _ in range(400):
        if (await api.get(f"/v1/runs/{run_id}")).json().get("finished_at"):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"run {run_id}'s summary never showed its end")


@pytest.mark.parametrize("command", [["runs", "list"], ["workflows", "list"]])
async def test_listings_speak_json_and_ndjson(api: httpx.AsyncClient, command: list[str]) -> None:
    wid = await _workflow(api)
    run_id = await _run(api, wid, "x")
    await _summary_finished(api, run_id)
    if command == ["runs", "list"]:
        command = [*command, "--workflow", wid]  # runs of other tests may still change between the calls
    as_json = await _cli(api, *command, "--format", "json")
    as_ndjson = await _cli(api, *command, "--format", "ndjson")
    assert as_json.code == 0 and as_ndjson.code == 0
    items = json.loads(as_json.out)
    assert isinstance(items, list) and items
    assert [json.loads(line) for line in as_ndjson.out.splitlines()] == items


async def test_a_piped_table_keeps_each_row_on_one_line(api: httpx.AsyncClient) -> None:
    wid = await _workflow(api)
    run_id = await _run(api, wid, "y" * 300)
    ran = await _cli(api, "runs", "list", "--workflow", wid)
    lines = ran.out.splitlines()
    assert lines[0].split()[:3] == ["run", "workflow", "status"]
    (row,) = [line for line in lines if run_id in line]
    assert wid in row and "succeeded" in row and "100%" in row


async def test_lineage_shows_nodes_and_edges_taken_or_not(api: httpx.AsyncClient) -> None:
    run_id = await _run(api, await _workflow(api), "x")
    await asyncio.sleep(0.5)  # the lineage read model catches up
    ran = await _cli(api, "lineage", run_id)
    assert ran.code == 0, ran
    edges = ran.out[ran.out.index("edges") :]
    assert re.search(r"pick\s+yes\s+true\s+taken", edges) and re.search(
        r"pick\s+no\s+false\s+not taken", edges
    )
    body = json.loads((await _cli(api, "lineage", run_id, "--format", "json")).out)[0]
    assert {n["id"]: n["status"] for n in body["nodes"]} == {
        "pick": "succeeded",
        "yes": "succeeded",
        "no": "skipped",
    }


async def test_metrics_and_node_history(api: httpx.AsyncClient) -> None:
    wid = await _workflow(api)
    runs = [await _run(api, wid, str(i)) for i in range(3)]
    await asyncio.sleep(0.5)
    metrics = await _cli(api, "metrics", "--workflow", wid)
    assert metrics.code == 0, metrics
    assert re.search(rf"{wid}\s+3\s+0\s+0\s+3\s+0\s+0\s+100.0%", metrics.out), metrics.out
    figures = json.loads((await _cli(api, "metrics", "--workflow", wid, "--format", "json")).out)
    assert figures[0]["workflow_id"] == wid and figures[0]["succeeded"] == 3
    history = json.loads((await _cli(api, "history", wid, "yes", "--format", "json")).out)
    assert {h["run_id"] for h in history} == set(runs)
    unknown = await _cli(api, "history", "no-such-workflow", "yes")
    assert unknown.code == 1 and "404" in unknown.err


async def test_events_show_when_each_was_recorded(api: httpx.AsyncClient) -> None:
    run_id = await _run(api, await _workflow(api), "x")
    ran = await _cli(api, "events", run_id)
    assert ran.code == 0
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line) for line in ran.out.splitlines()), ran.out
    assert re.search(r"run queued version \w+ by key:\w+", ran.out.splitlines()[0]), ran.out  # who started it
