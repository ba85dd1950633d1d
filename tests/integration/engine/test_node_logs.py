"""Node logs on real runs (real PostgreSQL, real worker processes): what a handler's ``ctx.log``
and a python node's ``print`` / ``logging`` leave in the log, and where."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from projections.run_state import fold
from schemas.events import NodeLog
from schemas.workflow import WorkflowSpec
from service.domain.workflow_spec import build_graph
from service.engine.nodes import NodeContext, NodeFailure, NodeType
from service.history.time_travel import state_at
from tests.helpers.engine_harness import Engine, engine_on, node_events
from tests.helpers.workflows import wf

NODES = "tests.helpers.log_nodes"


class LoggingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lines: int = 3
    fail: bool = False


async def logging_handler(config: LoggingConfig, ctx: NodeContext) -> dict[str, int]:
    for i in range(config.lines):
        ctx.log("debug" if i % 2 else "info", f"step {i}", step=i)
    if config.fail:
        ctx.log("error", "giving up")
        raise NodeFailure("broken", "it broke", retryable=False)
    return {"steps": config.lines}


@pytest.fixture
async def engine(pool: asyncpg.Pool, schema: str) -> AsyncIterator[Engine]:
    async with engine_on(pool, schema) as e:
        e.registry.register(NodeType("logging", LoggingConfig, logging_handler))
        yield e


def lines_of(events: list[Any], node_id: str) -> list[tuple[int, str, str]]:
    return [
        (e.data.attempt, line.level, line.message)
        for e in events
        if isinstance(e.data, NodeLog) and e.data.node_id == node_id
        for line in e.data.lines
    ]


async def test_a_handlers_lines_are_recorded_in_order_just_before_its_result(engine: Engine) -> None:
    await engine.register(wf("logs", [{"id": "a", "type": "logging", "config": {"lines": 4}}], []))
    events = await engine.wait_ended(await engine.start("logs"))
    assert node_events(events, "a") == [
        "node_execute_before#1",
        "node_log#1",
        "node_execute_after#1",
        "node_execute_after_data#1",
    ]
    assert lines_of(events, "a") == [
        (1, "info", "step 0"),
        (1, "debug", "step 1"),
        (1, "info", "step 2"),
        (1, "debug", "step 3"),
    ]
    log = next(e for e in events if e.type == "node_log")
    assert log.data.lines[3].fields == {"step": 3}
    fold(events, strict=True)  # the audit's legality check accepts it


async def test_a_failed_attempt_keeps_its_lines_and_each_retry_has_its_own(engine: Engine) -> None:
    spec = wf(
        "flaky",
        [
            {
                "id": "p",
                "type": "python",
                "config": {"callable": f"{NODES}:log_then_fail"},
                "retry": {"max_attempts": 2, "initial_backoff_ms": 10},
            },
            {"id": "q", "type": "logging", "config": {"lines": 1, "fail": True}},
        ],
        [],
        on_failure="continue",
    )
    await engine.register(spec)
    events = await engine.wait_ended(await engine.start("flaky"))
    p = lines_of(events, "p")
    assert [(attempt, message) for attempt, _, message in p if not message.startswith("lookup")] == [
        (1, "about to fail"),
        (2, "about to fail"),
    ]
    assert [level for _, level, m in p if m.startswith("lookup failed")] == ["error", "error"]
    assert lines_of(events, "q") == [(1, "info", "step 0"), (1, "error", "giving up")]
    assert node_events(events, "q")[:3] == ["node_execute_before#1", "node_log#1", "node_execute_after#1"]
    fold(events, strict=True)


async def test_a_long_python_node_records_lines_while_it_runs(engine: Engine) -> None:
    spec = wf("slow", [{"id": "s", "type": "python", "config": {"callable": f"{NODES}:slow_progress"}}], [])
    await engine.register(spec)
    run_id = await engine.start("slow", {"steps": 3, "pause_s": 1.1})
    early = await engine.wait_for(run_id, lambda ev: any(e.type == "node_log" for e in ev), timeout=15)
    assert "node_execute_after" not in [e.type for e in early], "lines only came with the result"
    events = await engine.wait_ended(run_id)
    assert [m for _, _, m in lines_of(events, "s")] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
    assert node_events(events, "s").count("node_log#1") >= 2
    fold(events, strict=True)


async def test_time_travel_counts_the_lines_a_node_had_logged_at_each_event(engine: Engine) -> None:
    spec = wf(
        "travel",
        [{"id": "a", "type": "logging", "config": {"lines": 3}}, {"id": "b", "type": "noop"}],
        [("a", "b")],
    )
    await engine.register(spec)
    events = await engine.wait_ended(await engine.start("travel"))
    graph = build_graph(msgspec.convert(spec, WorkflowSpec))
    log_seq = next(e.seq for e in events if e.type == "node_log")
    before = state_at(events, log_seq - 1, graph)
    at_log = state_at(events, log_seq, graph)
    assert at_log.event_type == "node_log"
    assert before.nodes["a"].log_lines == 0 and at_log.nodes["a"].log_lines == 3
    assert at_log.nodes["a"].status == "running"  # the lines come before the result
    end = state_at(events, None, graph)
    assert end.nodes["a"].log_lines == 3 and end.nodes["b"].log_lines == 0
    assert end.nodes["a"].status == "succeeded" and end.status == "succeeded"


class TokenConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: str


async def token_handler(config: TokenConfig, ctx: NodeContext) -> str:
    ctx.log(
        "info", f"calling with {config.token}", auth=f"Bearer {config.token}", nested={"t": [config.token]}
    )
    return "ok"


async def test_secret_values_never_reach_the_recorded_lines(engine: Engine) -> None:
    secret = "s3cr3t-4f9a"

    async def reveal(tenant: str, names: set[str]) -> dict[str, str]:
        assert tenant == "default" and names == {"API_TOKEN"}
        return {"API_TOKEN": secret}

    assert engine.worker is not None
    engine.worker.secrets = reveal
    engine.registry.register(NodeType("token", TokenConfig, token_handler))
    await engine.register(
        wf("secretive", [{"id": "t", "type": "token", "config": {"token": {"$secret": "API_TOKEN"}}}], [])
    )
    run_id = await engine.start("secretive")
    events = await engine.wait_ended(run_id)
    assert events[-1].data.status == "succeeded"  # type: ignore[union-attr]
    (log,) = [e.data for e in events if isinstance(e.data, NodeLog)]
    assert log.lines[0].message == "calling with [secret API_TOKEN]"
    assert log.lines[0].fields == {
        "auth": "Bearer [secret API_TOKEN]",
        "nested": {"t": ["[secret API_TOKEN]"]},
    }
    stored = b"".join(bytes(raw.data) for raw in await engine.store.read_run(run_id))
    assert secret.encode() not in stored
