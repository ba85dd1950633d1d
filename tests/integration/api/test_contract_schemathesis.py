"""The API keeps the contract of its OpenAPI document, checked by schemathesis (its pytest
integration) against a real ``flowledger serve`` on real PostgreSQL (a fresh database) and NATS.

Every check runs: each operation gets a few schema-derived, boundary and schema-violating cases
(statuses, content types, problem documents, headers, 405 + Allow for undeclared methods, 401
without the credential), then a short stateful run follows the document's links from a
registered workflow to a started run and on to a cancel. Bounded and derandomized to take
seconds in ``make test``; the unbounded run is the CLI command in ``schemathesis.toml``, whose
settings (exclusions, per-operation expectations, hooks) both use. The SSE routes and the
WebSocket are left to their own tests (tests/integration/followers/test_push*.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.engine
from hypothesis import settings
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

import tests.helpers.contract_hooks  # noqa: F401  (registers the hooks schemathesis.toml names)
from tests.helpers.databases import scratch_database_sync
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.servers import Servers
from tests.helpers.serving import delete_stream, free_port

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "schemathesis.toml"
EXAMPLES = 5
"""Generated cases per operation and phase: enough to cross every declared status path."""
STATEFUL_EXAMPLES = 120
"""Walks of the stateful phase (each follows the document's links from whatever it got); the
cancel link is then followed explicitly (``_follow_the_cancel_link``): a walk takes it by chance."""
STATEFUL_STEPS = 15


@pytest.fixture(scope="module")
def service(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``flowledger serve`` on a free port with a fresh database and stream; its base URL. The
    admin token its first start writes is ``FLOWLEDGER_TOKEN`` for schemathesis.toml meanwhile."""
    home = tmp_path_factory.mktemp("contract")
    stream = f"CONTRACT_{uuid.uuid4().hex[:8]}"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with scratch_database_sync(servers.database_url, prefix="contract") as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
        env.update(
            FLOWLEDGER_DATABASE_URL=database_url,
            FLOWLEDGER_NATS_URL=servers.nats_url,
            FLOWLEDGER_NATS_STREAM=stream,
            FLOWLEDGER_NATS_SUBJECT_PREFIX=f"{stream.lower()}.events",
            FLOWLEDGER_HOME=str(home),
            FLOWLEDGER_LOG_FORMAT="json",
            FLOWLEDGER_PROCESSES="1",
        )
        log = home / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [FLOWLEDGER, "serve", "--port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        token = os.environ.get("FLOWLEDGER_TOKEN")
        try:
            _wait_ready(base_url, proc, log)
            os.environ["FLOWLEDGER_TOKEN"] = (home / "admin.token").read_text().strip()
            yield base_url
        finally:
            if token is None:
                os.environ.pop("FLOWLEDGER_TOKEN", None)
            else:
                os.environ["FLOWLEDGER_TOKEN"] = token
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            asyncio.run(delete_stream(servers.nats_url, stream))
        errors = [line for line in log.read_text(errors="replace").splitlines() if "unhandled_error" in line]
        assert not errors, "the service logged unhandled errors:\n" + "\n".join(errors[:5])


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"serve exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base_url}/ready never answered 200:\n{log.read_text(errors='replace')[-3000:]}")


def _settings() -> dict[str, Any]:
    settings_ = tomllib.loads(CONFIG.read_text())
    settings_.pop("hooks")  # a path relative to the repository: imported above instead
    return settings_


@pytest.fixture(scope="module")
def contract(service: str) -> Any:
    """The served document, with the settings of schemathesis.toml (read from the repository,
    wherever pytest runs)."""
    config = SchemathesisConfig.from_dict(_settings())
    return schemathesis.openapi.from_url(f"{service}/schema/openapi.json", config=config).exclude(
        path_regex="/stream$"
    )


schema = schemathesis.pytest.from_fixture("contract")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32 reads (and rewrites, to name each operation's subtest) the test item's
    # ``_nodeid``, which pytest 9 no longer has; give it one to read.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None)
def test_every_operation_keeps_the_contract(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_the_links_chain_a_workflow_a_run_and_a_cancel(service: str) -> None:
    """The stateful phase, run by the engine behind ``schemathesis run`` (which, unlike a bare
    Hypothesis state machine, copes with a live service answering a replayed scenario differently):
    no check fails, and the links carried it from a registered workflow to a run to a cancel."""
    config = SchemathesisConfig.from_dict(
        {
            **_settings(),
            "seed": 1,
            "phases": {
                "examples": {"enabled": False},
                "coverage": {"enabled": False},
                "fuzzing": {"enabled": False},
                "stateful": {"max-steps": STATEFUL_STEPS, "generation": {"max-examples": STATEFUL_EXAMPLES}},
            },
        }
    )
    contract = schemathesis.openapi.from_url(f"{service}/schema/openapi.json", config=config)
    problems: list[str] = []
    succeeded: set[tuple[str, int]] = set()
    seen: set[tuple[str, int]] = set()
    for event in schemathesis.engine.from_schema(contract).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                operation = recorder.cases[case_id].value.operation.label
                problems += [f"{operation}: {c.name}" for c in checks if c.status == Status.FAILURE]
            for case_id, interaction in recorder.interactions.items():
                operation_id = recorder.cases[case_id].value.operation.definition.raw["operationId"]
                status = interaction.response.status_code if interaction.response is not None else 0
                seen.add((operation_id, status))
                if 200 <= status < 300:
                    succeeded.add((operation_id, status))
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"error: {event.info.message if hasattr(event, 'info') else event!r}")
    assert not problems, problems
    chain = {("register_workflow", 201), ("start_run", 202)}
    assert chain <= succeeded, f"never succeeded: {sorted(chain - succeeded)}; seen: {sorted(seen)}"
    # Whether a random walk takes the cancel link among the six a started run offers is chance;
    # that the link leads from a started run to its cancel is not: follow it as the document says.
    _follow_the_cancel_link(service)


def _follow_the_cancel_link(service: str) -> None:
    document = httpx.get(f"{service}/schema/openapi.json").json()
    link = document["paths"]["/v1/workflows/{workflow_id}/runs"]["post"]["responses"]["202"]["links"][
        "CancelRun"
    ]
    assert link["operationId"] == "cancel_run" and link["parameters"] == {"run_id": "$response.body#/run_id"}
    headers = {"Authorization": f"Bearer {os.environ['FLOWLEDGER_TOKEN']}"}
    workflow = f"contract-cancel-{uuid.uuid4().hex[:8]}"
    spec = {
        "id": workflow,
        "nodes": [{"id": "w", "type": "wait", "config": {"signal": "never"}}],
        "edges": [],
    }
    with httpx.Client(base_url=service, headers=headers, timeout=30) as http:
        assert http.post("/v1/workflows", json=spec).status_code == 201
        started = http.post(f"/v1/workflows/{workflow}/runs", json={})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]  # $response.body#/run_id
        cancelled = http.post(f"/v1/runs/{run_id}/cancel", json={})
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json() == {"run_id": run_id, "status": "cancel_requested"}
