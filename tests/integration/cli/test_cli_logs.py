"""``flowledger logs``: a run's node log lines from a running service, and ``--follow`` of a live run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from typing import Any

import httpx

from tests.helpers.api import wait_ended
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.serving import cli_env

NODES = "tests.helpers.log_nodes"


def _env(api: httpx.AsyncClient) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(cli_env(api), COLUMNS="120")
    return env


async def _cli(api: httpx.AsyncClient, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER, *args, env=_env(api), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def _start(api: httpx.AsyncClient, node: str, inputs: dict[str, Any]) -> str:
    wid = f"logs-cli-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": [{"id": "py", "type": "python", "config": {"callable": f"{NODES}:{node}"}}]}
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    run_id: str = (await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": inputs})).json()["run_id"]
    return run_id


async def test_logs_prints_lines_filters_and_formats(api: httpx.AsyncClient) -> None:
    run_id = await _start(api, "chatty", {})
    await wait_ended(api, run_id)
    code, out, err = await _cli(api, "logs", run_id)
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} py INFO    printed to stdout", lines[0]), lines[0]
    assert lines[2].endswith('logged at info logger="tests.log_nodes"')
    assert len(lines) == 6  # no token input: chatty prints no token line

    code, out, _ = await _cli(api, "logs", run_id, "--level", "warning", "--format", "ndjson")
    assert code == 0
    parsed = [json.loads(line) for line in out.splitlines()]
    assert [(p["level"], p["message"]) for p in parsed] == [
        ("warning", "printed to stderr"),
        ("warning", "logged at warning"),
    ]
    code, out, _ = await _cli(api, "logs", run_id, "--node", "nobody", "--format", "json")
    assert code == 0 and json.loads(out) == {"run_id": run_id, "lines": [], "dropped": {}}

    code, _, err = await _cli(api, "logs", run_id, "--level", "loud")
    assert code == 2 and "'loud' is not one of" in err
    code, _, err = await _cli(api, "logs", str(uuid.uuid4()))
    assert code != 0 and "no run" in err


async def test_follow_prints_lines_while_the_run_runs_and_stops_when_it_ends(api: httpx.AsyncClient) -> None:
    run_id = await _start(api, "slow_progress", {"steps": 4, "pause_s": 1.1})
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER, "logs", run_id, "--follow", env=_env(api), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    seen_at = time.monotonic()
    assert first.decode().rstrip().endswith("py INFO    step 1 of 4")
    status = (await api.get(f"/v1/runs/{run_id}")).json()["status"]
    assert status == "running", "the first line should arrive while the node still runs"
    rest = await asyncio.wait_for(proc.stdout.read(), 30)
    assert await proc.wait() == 0
    assert time.monotonic() - seen_at > 1.0
    assert [line.split("INFO", 1)[1].strip() for line in rest.decode().splitlines()] == [
        "step 2 of 4",
        "step 3 of 4",
        "step 4 of 4",
    ]
    events = await wait_ended(api, run_id)
    assert events[-1]["type"] == "run_finished"
