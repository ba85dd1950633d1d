"""``GET /v1/runs/{id}/logs``: a run's node log lines over real HTTP, PostgreSQL and worker processes."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import yaml

from service.cli.logs import log_line_text
from tests.helpers.api import assert_problem, wait_ended
from tests.helpers.paths import REPO_ROOT
from tests.helpers.serving import api_key

NODES = "tests.helpers.log_nodes"


async def _run(api: httpx.AsyncClient, nodes: list[dict[str, Any]], inputs: dict[str, Any]) -> str:
    wid = f"logs-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": nodes, "edges": [], "on_failure": "continue"}
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    started = await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": inputs})
    run_id: str = started.json()["run_id"]
    await wait_ended(api, run_id)
    return run_id


def _python(node_id: str, name: str) -> dict[str, Any]:
    return {"id": node_id, "type": "python", "config": {"callable": f"{NODES}:{name}"}}


async def test_lines_filters_cap_and_errors(api: httpx.AsyncClient) -> None:
    run_id = await _run(
        api,
        [_python("chat", "chatty"), _python("flood", "many"), _python("fails", "log_then_fail")],
        {"lines": 1200},
    )
    everything = (await api.get(f"/v1/runs/{run_id}/logs")).json()
    assert everything["run_id"] == run_id and everything["ended"] is True and everything["more"] is False
    assert everything["dropped"] == {"flood": 200}
    chat = [line for line in everything["lines"] if line["node_id"] == "chat"]
    assert [line["message"] for line in chat][:4] == [
        "printed to stdout",
        "printed to stderr",
        "logged at info",
        "logged at warning",
    ]
    assert set(chat[0]) == {"node_id", "attempt", "seq", "at", "level", "message", "fields"}
    assert chat[0]["attempt"] == 1 and chat[0]["at"].endswith("Z")

    flood = (await api.get(f"/v1/runs/{run_id}/logs", params={"node_id": "flood"})).json()
    assert {line["node_id"] for line in flood["lines"]} == {"flood"}
    assert [line["message"] for line in flood["lines"][:1000]] == [f"line {i}" for i in range(1000)]
    assert flood["lines"][-1]["message"].startswith("200 log lines dropped")
    assert flood["dropped"] == {"flood": 200}

    warnings = (await api.get(f"/v1/runs/{run_id}/logs", params={"level": "warning"})).json()
    assert {line["level"] for line in warnings["lines"]} == {"warning", "error"}
    assert ("fails", "error") in {(line["node_id"], line["level"]) for line in warnings["lines"]}
    failed = [line["message"] for line in everything["lines"] if line["node_id"] == "fails"]
    assert failed[0] == "about to fail" and failed[1].startswith("lookup failed")

    # paging: after_seq and limit count node_log events
    first = (await api.get(f"/v1/runs/{run_id}/logs", params={"limit": 1})).json()
    assert first["more"] is True
    rest = (await api.get(f"/v1/runs/{run_id}/logs", params={"after_seq": first["last_seq"]})).json()
    assert first["lines"] + rest["lines"] == everything["lines"]

    bad = assert_problem(await api.get(f"/v1/runs/{run_id}/logs", params={"level": "loud"}), 400)
    assert "query parameter 'level': Invalid enum value 'loud'" in bad["detail"]
    assert_problem(await api.get(f"/v1/runs/{uuid.uuid4()}/logs"), 404)


async def test_another_tenants_run_logs_are_not_found(api: httpx.AsyncClient) -> None:
    run_id = await _run(api, [_python("chat", "chatty")], {})
    database_url: str = api.database_url  # type: ignore[attr-defined]
    other = await api_key(database_url, "other-tenant", ["runs:read"])
    answer = await api.get(f"/v1/runs/{run_id}/logs", headers={"Authorization": f"Bearer {other}"})
    assert_problem(answer, 404)
    no_scope = await api_key(database_url, "default", ["workflows:read"])
    assert (
        await api.get(f"/v1/runs/{run_id}/logs", headers={"Authorization": f"Bearer {no_scope}"})
    ).status_code == 403


async def test_the_docs_example_runs_as_written(api: httpx.AsyncClient) -> None:
    """docs/workflows.md "Node logs": its workflow with its inputs logs exactly the lines shown."""
    text = (REPO_ROOT / "docs" / "workflows.md").read_text()
    section = text[text.index("## Node logs") : text.index("## Your own node types")]
    spec = re.search(r"```yaml\n(.*?)```", section, re.S)
    inputs = re.search(r"--inputs-json '(.*?)'", section)
    shown = re.search(r"```text\n(.*?)```", section, re.S)
    assert spec and inputs and shown
    created = await api.post("/v1/workflows", content=spec[1], headers={"content-type": "application/yaml"})
    assert created.status_code in (200, 201), created.text
    wid = yaml.safe_load(spec[1])["id"]
    started = await api.post(f"/v1/workflows/{wid}/runs", json={"inputs": json.loads(inputs[1])})
    run_id = started.json()["run_id"]
    await wait_ended(api, run_id)
    lines = (await api.get(f"/v1/runs/{run_id}/logs")).json()["lines"]
    assert [log_line_text(line)[13:] for line in lines] == [line[13:] for line in shown[1].splitlines()]
