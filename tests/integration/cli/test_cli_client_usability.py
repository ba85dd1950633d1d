"""The client commands as a user runs them: the installed ``flowledger`` against a live service.

Each test is about one thing a user sees: a typo in a run id, a table piped at
80 columns, a YAML file with no suffix, the port the service was started on,
stderr noise, a forked run's reused nodes and a replay prefix NATS would drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.infra.nats import connect_nats
from tests.helpers.api import wait_ended
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.servers import Servers
from tests.helpers.serving import cli_env


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def _flowledger(*args: str, env: dict[str, str] | None = None) -> Ran:
    """Run the installed command with only the given FLOWLEDGER_* settings (and 80 columns)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    base.pop("LINES", None)
    base.update(COLUMNS="80", **(env or {}))
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER, *args, env=base, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return Ran(proc.returncode or 0, out.decode(), err.decode())


async def _cli(api: httpx.AsyncClient, *args: str, **env: str) -> Ran:
    return await _flowledger(*args, env={**cli_env(api), **env})


async def _finished_run(api: httpx.AsyncClient, *, workflow_id: str | None = None) -> tuple[str, str]:
    """(workflow id, run id) of a succeeded run of a two-node workflow ``a -> b``."""
    wid = workflow_id or f"cli-{uuid.uuid4().hex[:8]}"
    spec = {
        "id": wid,
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}],
        "edges": [{"from": "a", "to": "b"}],
    }
    assert (await api.post("/v1/workflows", json=spec)).status_code in (200, 201)
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": {}})).json()["run_id"]
    await wait_ended(api, run_id)
    # The listings read the run summaries (a projection): wait until they show the end too.
    deadline = time.monotonic() + 20
    while True:
        listed = (await api.get("/v1/runs", params={"workflow_id": wid})).json()["items"]
        if [r["status"] for r in listed] == ["succeeded"] or time.monotonic() > deadline:
            return wid, run_id
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "args",
    [
        ("events", "xyz"),
        ("diff", str(uuid.UUID(int=1)), "xyz"),
        ("replay", "xyz", "--at-seq", "1"),
        ("runs", "show", "xyz"),
        ("cancel", "xyz"),
    ],
    ids=["events", "diff", "replay", "runs-show", "cancel"],
)
async def test_a_malformed_run_id_is_a_usage_error_before_any_request(
    api: httpx.AsyncClient, args: tuple[str, ...]
) -> None:
    ran = await _cli(api, *args)
    assert ran.code == 2, ran
    assert "'xyz' is not a valid run id" in ran.err
    assert "404" not in ran.err + ran.out and "no route" not in ran.err + ran.out


async def test_runs_list_at_80_columns_keeps_run_ids_whole(api: httpx.AsyncClient) -> None:
    wid, run_id = await _finished_run(api, workflow_id=f"cli-long-workflow-name-{uuid.uuid4().hex[:8]}")
    ran = await _cli(api, "runs", "list", "--workflow", wid)
    assert ran.code == 0, ran
    # Piped, a table is plain columns with one row per line (never wrapped, even past 80 columns),
    # so a script can cut the whole run id out of it.
    header, *rows = ran.out.splitlines()
    assert header.split()[:3] == ["run", "workflow", "status"], ran.out
    assert [row.split()[:3] for row in rows] == [[run_id, wid, "succeeded"]], ran.out
    shown = await _cli(api, "runs", "show", run_id)
    assert shown.code == 0 and "succeeded" in shown.out, shown


async def test_workflows_add_detects_yaml_without_a_suffix(api: httpx.AsyncClient, tmp_path: Path) -> None:
    wid = f"cli-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "spec"  # no .yaml: the content decides
    spec.write_text(f"id: {wid}\nnodes:\n  - id: a\n    type: noop\n")
    ran = await _cli(api, "workflows", "add", str(spec))
    assert ran.code == 0, ran
    assert f"{wid} version" in ran.out and "registered" in ran.out

    as_json = tmp_path / "spec.txt"
    as_json.write_text(f'{{"id": "{wid}-j", "nodes": [{{"id": "a", "type": "noop"}}]}}')
    ran = await _cli(api, "workflows", "add", str(as_json))
    assert ran.code == 0 and f"{wid}-j version" in ran.out, ran

    broken = tmp_path / "broken"
    broken.write_text("id: x\nnodes: [\n")
    ran = await _cli(api, "workflows", "add", str(broken))
    assert ran.code == 1, ran
    assert "YAML is malformed" in ran.err and "JSON" not in ran.err, ran.err


async def test_client_commands_find_the_service_by_its_http_port(api: httpx.AsyncClient) -> None:
    port = str(api.base_url.port)
    token = {"FLOWLEDGER_TOKEN": cli_env(api)["FLOWLEDGER_TOKEN"]}
    ran = await _flowledger(
        "workflows", "list", env={"FLOWLEDGER_HTTP_PORT": port, "FLOWLEDGER_HTTP_HOST": "0.0.0.0", **token}
    )
    assert ran.code == 0, ran
    given = await _flowledger(
        "--api-url", str(api.base_url), "workflows", "list", env={"FLOWLEDGER_HTTP_PORT": "1", **token}
    )
    assert given.code == 0, given  # an explicit --api-url still wins


async def test_a_401_says_where_a_key_comes_from(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """Run from elsewhere than the service's directory: no admin.token is found, and the
    answer says how to give a key instead of only "401"."""
    ran = await _flowledger(
        "--api-url", str(api.base_url), "workflows", "list", env={"FLOWLEDGER_HOME": str(tmp_path / "none")}
    )
    assert ran.code != 0
    said = ran.out + ran.err
    assert "401" in said and "--token" in said and "FLOWLEDGER_TOKEN" in said and "FLOWLEDGER_HOME" in said


async def test_client_commands_do_not_log_each_request(api: httpx.AsyncClient) -> None:
    _, run_id = await _finished_run(api)
    ran = await _cli(api, "events", run_id)  # the default log level: info
    assert ran.code == 0, ran
    assert "HTTP Request" not in ran.err and ran.err == "", ran.err
    debug = await _cli(api, "--log-level", "debug", "events", run_id)
    assert debug.code == 0 and "HTTP Request" in debug.err


async def test_forked_runs_show_reused_nodes_as_reused(api: httpx.AsyncClient) -> None:
    _, parent = await _finished_run(api)
    parent_events = await wait_ended(api, parent)
    a_after = next(
        e for e in parent_events if e["type"] == "node_execute_after" and e["data"]["node_id"] == "a"
    )
    reused_line = f"↺ a reused from run {parent} seq {a_after['seq']}"

    forked = await _cli(api, "replay", parent, "--fork", "--from-node", "b", "--follow")
    assert forked.code == 0, forked
    assert reused_line in forked.out, forked.out
    assert "▶ a " not in forked.out and "✓ a" not in forked.out
    assert "▶ b (noop) attempt 1" in forked.out

    fork_id = forked.out.split()[1]
    shown = await _cli(api, "events", fork_id)
    assert shown.code == 0, shown
    assert reused_line in shown.out and "▶ a " not in shown.out, shown.out


async def _republish(servers: Servers, run_id: str, prefix: str) -> Ran:
    """``replay RUN --republish --prefix PREFIX`` on the servers' log, with a stream of its own."""
    token = uuid.uuid4().hex[:8]
    try:
        return await _flowledger(
            *("--database-url", servers.database_url, "--nats-url", servers.nats_url),
            *("--nats-stream", f"CLI_{token}", "--nats-subject-prefix", f"cli{token}.events"),
            *("replay", run_id, "--republish", "--prefix", prefix),
        )
    finally:
        nc = await connect_nats(servers.nats_url)
        with contextlib.suppress(Exception):  # the stream exists only if the command connected
            await nc.jetstream().delete_stream(f"CLI_{token}")
        await nc.close()


@pytest.mark.parametrize("prefix", ["bad prefix", "a..b", "x.*", ">", "replay.", ""])
async def test_replay_republish_refuses_prefixes_nats_cannot_publish_to(
    api: httpx.AsyncClient, servers: Servers, prefix: str
) -> None:
    _, run_id = await _finished_run(api)  # a run of the servers' log: only the prefix is wrong
    ran = await _republish(servers, run_id, prefix)
    assert ran.code == 2, ran
    assert "Invalid value for '--prefix'" in ran.err and "Traceback" not in ran.err, ran.err
    assert "republished" not in ran.out


async def test_replay_republish_accepts_a_literal_prefix(api: httpx.AsyncClient, servers: Servers) -> None:
    _, run_id = await _finished_run(api)
    ran = await _republish(servers, run_id, "cli-replay.v1")
    assert ran.code == 0, ran
    assert f"cli-replay.v1.*.*.{run_id}.<type>" in ran.out
