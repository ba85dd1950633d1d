"""Node logs: the per-attempt collector (order, cap, drop marker, redaction, levels), ``ctx.log``,
and the lines a ``python`` node's worker process captures (print, logging), streamed and final."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.events import NodeLog
from service.config import NodeSettings
from service.engine.nodes import NodeContext, NodeFailure, NodeRegistry, default_registry
from service.engine.nodes.isolated import LogRecord
from service.engine.nodes.node_logs import (
    MAX_MESSAGE_CHARS,
    NodeLogCollector,
    log_level,
    timestamp,
)

NODES = "tests.helpers.log_nodes"
AT = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def collector(**kw: Any) -> NodeLogCollector:
    return NodeLogCollector("n1", 2, clock=lambda: AT, **kw)


def messages(batch: NodeLog | None) -> list[str]:
    assert batch is not None
    return [line.message for line in batch.lines]


def test_lines_are_taken_in_order_once_with_node_attempt_and_time() -> None:
    logs = collector()
    logs.add("info", "one", {"n": 1})
    logs.add("warning", "two")
    batch = logs.take()
    assert batch == NodeLog(node_id="n1", attempt=2, lines=batch.lines, dropped=0) if batch else False
    assert messages(batch) == ["one", "two"]
    assert batch is not None and batch.lines[0].fields == {"n": 1}
    assert batch.lines[0].at == "2025-01-02T03:04:05.678Z" == timestamp(AT)
    assert logs.take() is None  # taken once
    logs.add("error", "three")
    assert messages(logs.take(final=True)) == ["three"]


def test_the_cap_counts_dropped_lines_and_the_last_batch_says_how_many() -> None:
    logs = collector(max_lines=3)
    for i in range(10):
        logs.add("info", f"line {i}")
    early = logs.take()
    assert messages(early) == ["line 0", "line 1", "line 2"] and early is not None and early.dropped == 7
    logs.add("info", "still dropped")
    last = logs.take(final=True)
    assert last is not None and last.dropped == 8
    (marker,) = last.lines
    assert marker.level == "warning" and marker.message.startswith("8 log lines dropped")
    assert marker.fields == {"dropped": 8}
    logs.add("info", "after the end")
    assert logs.take(final=True) is None and logs.take() is None  # the marker was said once
    assert logs.dropped == 9


def test_the_byte_cap_applies_to_messages_and_fields() -> None:
    logs = collector(max_bytes=100)
    logs.add("info", "x" * 60)
    logs.add("info", "y", {"big": "z" * 60})  # would pass 100 bytes: dropped
    logs.add("info", "small")
    last = logs.take(final=True)
    assert messages(last)[:2] == ["x" * 60, "small"] and last is not None and last.dropped == 1


def test_a_long_message_is_cut_and_says_so() -> None:
    logs = collector()
    logs.add("info", "a" * (MAX_MESSAGE_CHARS + 10))
    (line,) = messages(logs.take())
    assert line == "a" * MAX_MESSAGE_CHARS + "…[cut]"


def test_secret_values_are_redacted_from_messages_and_fields() -> None:
    logs = collector()
    secrets = {"API_KEY": "s3cr3t-value"}
    logs.add("info", "calling with s3cr3t-value", {"auth": "Bearer s3cr3t-value", "n": 1}, secrets=secrets)
    batch = logs.take()
    assert batch is not None
    assert batch.lines[0].message == "calling with [secret API_KEY]"
    assert batch.lines[0].fields == {"auth": "Bearer [secret API_KEY]", "n": 1}


def test_fields_that_are_not_json_are_recorded_as_their_repr() -> None:
    logs = collector()
    logs.add("debug", "odd", {"when": AT, "obj": object})
    batch = logs.take()
    assert batch is not None
    assert batch.lines[0].fields["when"] == "2025-01-02T03:04:05.678000Z"  # as msgspec encodes it
    assert batch.lines[0].fields["obj"] == repr(object)


@pytest.mark.parametrize(("given", "level"), [("INFO", "info"), ("warn", "warning"), ("critical", "error")])
def test_level_names(given: str, level: str) -> None:
    assert log_level(given) == level


def test_ctx_log_validates_the_level_and_redacts_the_attempts_secrets() -> None:
    logs = collector()
    ctx = NodeContext("r", "n1", "t", 1, {}, secrets={"TOKEN": "hunter2"}, log_sink=logs)
    ctx.log("info", "token hunter2", user="u1", token="hunter2")
    with pytest.raises(ValueError, match="unknown log level 'loud'; levels: debug, info, warning, error"):
        ctx.log("loud", "no")
    batch = logs.take()
    assert batch is not None and len(batch.lines) == 1
    assert batch.lines[0].message == "token [secret TOKEN]"
    assert batch.lines[0].fields == {"user": "u1", "token": "[secret TOKEN]"}
    assert "hunter2" not in repr(ctx)
    discarding = NodeContext("r", "n1", "t", 1, {})
    discarding.log("info", "nowhere")  # no sink: discarded
    with pytest.raises(ValueError):
        discarding.log("nope", "still checked")


# -- a python node's print and logging, from its worker process ------------------------------------


@pytest.fixture
async def registry() -> AsyncIterator[NodeRegistry]:
    registry = default_registry(NodeSettings(python_workers=1))
    try:
        yield registry
    finally:
        await registry.aclose()


async def run_python(
    registry: NodeRegistry,
    name: str,
    inputs: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
) -> tuple[Any, NodeLogCollector]:
    logs = NodeLogCollector("py", 1)
    ctx = NodeContext(
        "run-1",
        "py",
        "python",
        1,
        {"inputs": inputs or {}, "nodes": {}},
        secrets=secrets or {},
        log_sink=logs,
    )
    parsed = registry.parse_config("python", {"callable": f"{NODES}:{name}"})
    try:
        return await registry.execute("python", parsed, ctx), logs
    except NodeFailure as exc:
        return exc, logs


async def test_print_and_logging_of_a_python_node_are_its_log_lines(registry: NodeRegistry) -> None:
    output, logs = await run_python(registry, "chatty", {"token": "tok-123"}, secrets={"TOKEN": "tok-123"})
    assert output == "done"
    batch = logs.take(final=True)
    assert batch is not None
    assert [(line.level, line.message) for line in batch.lines] == [
        ("info", "printed to stdout"),
        ("warning", "printed to stderr"),
        ("info", "logged at info"),
        ("warning", "logged at warning"),
        ("info", "token is [secret TOKEN]"),
        ("info", "partial line"),
        ("info", "last line without newline"),  # the unfinished line, once the call is over
    ]
    assert batch.lines[2].fields == {"logger": "tests.log_nodes"}
    # the worker is fine afterwards, and the next call starts with no lines of this one
    again, more = await run_python(registry, "many", {"lines": 2})
    assert again == 2 and messages(more.take(final=True)) == ["line 0", "line 1"]


async def test_a_failing_python_node_keeps_its_lines_and_the_traceback_it_logged(
    registry: NodeRegistry,
) -> None:
    failure, logs = await run_python(registry, "log_then_fail")
    assert isinstance(failure, NodeFailure) and failure.kind == "ValueError"
    lines = messages(logs.take(final=True))
    assert lines[0] == "about to fail"
    assert lines[1].startswith("lookup failed\nTraceback") and "KeyError: 'missing'" in lines[1]


async def test_a_python_nodes_flood_is_capped_in_the_worker_and_counted(registry: NodeRegistry) -> None:
    output, logs = await run_python(registry, "many", {"lines": 1500})
    assert output == 1500
    last = logs.take(final=True)
    assert last is not None
    assert last.dropped == 500 and len(last.lines) == 1001
    assert last.lines[999].message == "line 999"
    assert last.lines[-1].message.startswith("500 log lines dropped")


async def test_a_long_python_node_streams_its_lines_while_it_runs(registry: NodeRegistry) -> None:
    arrived: list[tuple[float, list[str]]] = []
    started = time.monotonic()

    def on_logs(lines: list[LogRecord], dropped: int) -> None:
        arrived.append((time.monotonic() - started, [line.message for line in lines]))

    output = await registry.isolated.call(
        "service.engine.nodes.builtins:python",
        "service.engine.nodes.builtins:PythonConfig",
        {"callable": f"{NODES}:slow_progress"},
        {
            "run_id": "r",
            "node_id": "n",
            "node_type": "python",
            "attempt": 1,
            "document": {"inputs": {"steps": 3, "pause_s": 1.1}, "nodes": {}},
        },
        on_logs=on_logs,
    )
    elapsed = time.monotonic() - started
    assert output == 3
    assert [m for _, batch in arrived for m in batch] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
    assert len(arrived) >= 2 and arrived[0][0] < elapsed - 1.0, f"nothing streamed before the end: {arrived}"


async def test_a_blocking_python_nodes_line_arrives_before_it_returns(registry: NodeRegistry) -> None:
    arrived: list[float] = []
    started = time.monotonic()

    def on_logs(lines: list[LogRecord], dropped: int) -> None:
        arrived.extend(time.monotonic() - started for _ in lines)

    output = await registry.isolated.call(
        "service.engine.nodes.builtins:python",
        "service.engine.nodes.builtins:PythonConfig",
        {"callable": f"{NODES}:print_then_block"},
        {
            "run_id": "r",
            "node_id": "n",
            "node_type": "python",
            "attempt": 1,
            "document": {"inputs": {"block_s": 2.5}, "nodes": {}},
        },
        on_logs=on_logs,
    )
    elapsed = time.monotonic() - started
    assert output == "done" and len(arrived) == 1
    assert arrived[0] < elapsed - 0.8, f"the line waited for the end: {arrived[0]:.2f} of {elapsed:.2f} s"
