"""Node registry and the built-in node types (all but ``http``, which needs a server).

Everything runs the real registry and the real handlers; the ``python`` node
imports real modules (``examples.python_nodes`` and this test module).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from collections.abc import AsyncIterator
from typing import Any

import jmespath
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import NodeError
from service.engine.nodes import (
    InvalidNodeConfig,
    NodeContext,
    NodeFailure,
    NodeRegistry,
    NodeType,
    UnknownNodeType,
    default_registry,
)
from service.engine.nodes.builtins import DelayConfig, NoopConfig, TransformConfig
from service.engine.nodes.expressions import is_truthy

BUILTINS = ["branch", "delay", "fail", "http", "noop", "python", "transform"]


@pytest.fixture
async def registry() -> AsyncIterator[NodeRegistry]:
    registry = default_registry()
    yield registry
    await registry.aclose()  # its python worker processes


def ctx(
    node_type: str = "noop",
    *,
    inputs: Any = None,
    nodes: dict[str, Any] | None = None,
    attempt: int = 1,
) -> NodeContext:
    return NodeContext(
        run_id="run-1",
        node_id="n1",
        node_type=node_type,
        attempt=attempt,
        document={"inputs": inputs if inputs is not None else {}, "nodes": nodes or {}},
    )


async def run(registry: NodeRegistry, name: str, config: dict[str, Any], context: NodeContext) -> Any:
    return await registry.execute(name, registry.parse_config(name, config), context)


def config_error(registry: NodeRegistry, name: str, config: dict[str, Any]) -> str:
    with pytest.raises(InvalidNodeConfig) as info:
        registry.parse_config(name, config)
    assert info.value.node_type == name
    return str(info.value)


# -- registry ------------------------------------------------------------------


def test_default_registry_has_every_builtin_with_a_description(registry: NodeRegistry) -> None:
    assert set(BUILTINS) <= set(registry.names())
    assert registry.names() == sorted(registry.names())
    for name in BUILTINS:
        node_type = registry.get(name)
        assert node_type.name == name
        assert node_type.description, name
        assert node_type.config_type.__struct_config__.forbid_unknown_fields, name
        assert node_type.config_type.__struct_config__.frozen, name


def test_default_registries_are_independent() -> None:
    first, second = default_registry(), default_registry()

    @first.node("only_in_first", NoopConfig)
    async def handler(config: NoopConfig, context: NodeContext) -> int:
        return 1

    assert "only_in_first" in first.names()
    assert "only_in_first" not in second.names()


def test_unknown_node_type_names_it_and_lists_the_known_ones(registry: NodeRegistry) -> None:
    with pytest.raises(UnknownNodeType) as info:
        registry.get("sendmail")
    message = str(info.value)
    assert message.startswith("unknown node type 'sendmail'; known types: ")
    assert message.endswith(", ".join(registry.names()))
    with pytest.raises(UnknownNodeType, match="'sendmail'"):
        registry.parse_config("sendmail", {})


async def test_decorator_registers_a_custom_node() -> None:
    registry = NodeRegistry()

    class ScaleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        factor: int

    @registry.node("scale", ScaleConfig)
    async def scale(config: ScaleConfig, context: NodeContext) -> dict[str, int]:
        """Multiply inputs.value by factor."""
        return {"value": context.document["inputs"]["value"] * config.factor}

    assert registry.names() == ["scale"]
    node_type = registry.get("scale")
    assert node_type.handler is scale  # the decorator hands the function back unchanged
    assert node_type.config_type is ScaleConfig
    assert node_type.description == "Multiply inputs.value by factor."
    assert await run(registry, "scale", {"factor": 3}, ctx("scale", inputs={"value": 7})) == {"value": 21}

    with pytest.raises(ValueError, match="node type 'scale' is already registered"):
        registry.node("scale", ScaleConfig)(scale)


def test_register_refuses_sync_handlers_and_lenient_configs() -> None:
    registry = NodeRegistry()

    def sync_handler(config: NoopConfig, context: NodeContext) -> None:
        return None

    with pytest.raises(TypeError, match="must be an async function"):
        registry.register(NodeType("sync", NoopConfig, sync_handler))  # type: ignore[arg-type]

    class Lenient(msgspec.Struct, frozen=True):
        x: int = 0

    async def handler(config: Lenient, context: NodeContext) -> None:
        return None

    with pytest.raises(TypeError, match="forbid_unknown_fields=True"):
        registry.register(NodeType("lenient", Lenient, handler))
    with pytest.raises(ValueError, match="invalid node type name"):
        registry.register(NodeType("", NoopConfig, handler))
    assert registry.names() == []


# -- config validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config", "problem"),
    [
        ("delay", {"ms": 5, "seconds": 1}, "Object contains unknown field `seconds`"),
        ("delay", {"ms": "5"}, "Expected `int`, got `str` - at `$.ms`"),
        ("delay", {"ms": 1.5}, "Expected `int`, got `float` - at `$.ms`"),
        ("delay", {"ms": -1}, "Expected `int` >= 0 - at `$.ms`"),
        ("delay", {}, "Object missing required field `ms`"),
        ("noop", {"x": 1}, "Object contains unknown field `x`"),
        (
            "transform",
            {"expression": "a.["},
            "invalid JMESPath expression 'a.[': the expression is incomplete",
        ),
        (
            "transform",
            {"expression": "foo bar"},
            "invalid JMESPath expression 'foo bar': Unexpected token: bar at column 4 (token 'bar')",
        ),
        ("transform", {"expression": ""}, "invalid JMESPath expression '': the expression is empty"),
        ("transform", {"expression": 3}, "Expected `str`, got `int` - at `$.expression`"),
        (
            "branch",
            {"expression": "`{unclosed"},
            "invalid JMESPath expression '`{unclosed': Unclosed ` delimiter at column 0",
        ),
        (
            "transform",
            {"expression": "length(a, b)"},
            "invalid JMESPath expression 'length(a, b)': length() takes 1 argument, got 2",
        ),
        (
            "python",
            {"callable": "os.path.join"},
            "callable must look like 'package.module:function', got 'os.path.join'",
        ),
        ("python", {"callable": "pkg:"}, "callable must look like 'package.module:function', got 'pkg:'"),
        ("python", {}, "Object missing required field `callable`"),
        ("http", {"method": "FETCH", "url": "http://x"}, "Invalid enum value 'FETCH' - at `$.method`"),
        ("http", {"method": "get", "url": "http://x"}, "Invalid enum value 'get' - at `$.method`"),
        (
            "http",
            {"method": "GET", "url": "http://x", "timeout_ms": 0},
            "Expected `int` >= 1 - at `$.timeout_ms`",
        ),
        (
            "http",
            {"method": "GET", "url": "ftp://example.com/f"},
            "url must be an absolute http:// or https:// URL, got 'ftp://example.com/f'",
        ),
        (
            "http",
            {"method": "GET", "url": "http://x", "headers": {"x-n": 1}},
            "Expected `str`, got `int` - at `$.headers[...]`",
        ),
        ("fail", {"times": "2"}, "Expected `int | null`, got `str` - at `$.times`"),
        ("fail", {"times": -1}, "Expected `int` >= 0 - at `$.times`"),
    ],
)
def test_invalid_configs_name_the_node_type_and_the_problem(
    registry: NodeRegistry, name: str, config: dict[str, Any], problem: str
) -> None:
    assert config_error(registry, name, config) == f"invalid config for node type {name!r}: {problem}"


def test_unknown_jmespath_function_is_refused_at_parse_time(registry: NodeRegistry) -> None:
    message = config_error(registry, "branch", {"expression": "shout(inputs.name)"})
    assert message.startswith(
        "invalid config for node type 'branch': invalid JMESPath expression 'shout(inputs.name)': "
        "unknown function shout(); known functions: abs, avg, ceil,"
    )


def test_config_validation_also_applies_when_a_struct_is_built_directly() -> None:
    # __post_init__ runs on construction too, so code cannot bypass the check.
    with pytest.raises(ValueError, match=r"invalid JMESPath expression 'a\.\['"):
        TransformConfig(expression="a.[")


def test_valid_configs_parse_to_their_typed_structs(registry: NodeRegistry) -> None:
    http = registry.parse_config(
        "http", {"method": "POST", "url": "https://example.com/x", "json": {"a": [1]}}
    )
    assert msgspec.to_builtins(http) == {
        "method": "POST",
        "url": "https://example.com/x",
        "headers": {},
        "json": {"a": [1]},
        "timeout_ms": 10_000,
    }
    assert registry.parse_config("delay", {"ms": 0}) == DelayConfig(ms=0)
    fail = registry.parse_config("fail", {})
    assert msgspec.to_builtins(fail) == {"message": "failed on purpose", "times": None}
    python = registry.parse_config("python", {"callable": "examples.python_nodes:order_total"})
    assert msgspec.to_builtins(python) == {
        "callable": "examples.python_nodes:order_total",
        "memory_mb": None,
        "cpu_seconds": None,
    }


# -- execute -------------------------------------------------------------------


async def test_execute_turns_a_plain_exception_into_a_node_failure_named_after_its_class() -> None:
    registry = NodeRegistry()

    @registry.node("divide", NoopConfig)
    async def divide(config: NoopConfig, context: NodeContext) -> float:
        divisor: int = context.document["inputs"]["by"]
        return 1 / divisor

    with pytest.raises(NodeFailure) as info:
        await run(registry, "divide", {}, ctx("divide", inputs={"by": 0}))
    failure = info.value
    assert (failure.kind, failure.message, failure.retryable) == (
        "ZeroDivisionError",
        "division by zero",
        True,
    )
    assert isinstance(failure.__cause__, ZeroDivisionError)
    assert await run(registry, "divide", {}, ctx("divide", inputs={"by": 4})) == 0.25


async def test_execute_passes_node_failures_and_cancellation_through_untouched() -> None:
    registry = NodeRegistry()
    raised = NodeFailure("quota", "over quota", retryable=False)

    @registry.node("quota", NoopConfig)
    async def quota(config: NoopConfig, context: NodeContext) -> None:
        raise raised

    @registry.node("cancelled", NoopConfig)
    async def cancelled(config: NoopConfig, context: NodeContext) -> None:
        raise asyncio.CancelledError("stop")

    with pytest.raises(NodeFailure) as info:
        await run(registry, "quota", {}, ctx("quota"))
    assert info.value is raised
    with pytest.raises(asyncio.CancelledError):
        await run(registry, "cancelled", {}, ctx("cancelled"))


async def test_execute_returns_outputs_as_the_log_would_store_them_and_refuses_others() -> None:
    registry = NodeRegistry()

    class Point(msgspec.Struct):
        x: int
        y: int

    outputs: dict[str, Any] = {
        "ok": {"point": Point(1, 2), "pair": (1, "a"), "by_id": {7: "seven"}},
        "bad": {"handle": object()},
    }

    @registry.node("emit", NoopConfig)
    async def emit(config: NoopConfig, context: NodeContext) -> Any:
        return outputs[context.document["inputs"]["which"]]

    assert await run(registry, "emit", {}, ctx("emit", inputs={"which": "ok"})) == {
        "point": {"x": 1, "y": 2},
        "pair": [1, "a"],
        "by_id": {"7": "seven"},  # what the event log would give back
    }
    with pytest.raises(NodeFailure) as info:
        await run(registry, "emit", {}, ctx("emit", inputs={"which": "bad"}))
    assert info.value.kind == "invalid_output"
    assert not info.value.retryable
    assert "'emit' returned a value that is not JSON-serializable" in info.value.message


async def test_execute_fails_an_unknown_type_or_a_config_of_the_wrong_type(registry: NodeRegistry) -> None:
    with pytest.raises(NodeFailure) as info:
        await registry.execute("sendmail", NoopConfig(), ctx())
    assert (info.value.kind, info.value.retryable) == ("unknown_node_type", False)
    assert "unknown node type 'sendmail'" in info.value.message
    with pytest.raises(NodeFailure) as info:
        await registry.execute("delay", NoopConfig(), ctx())
    assert (info.value.kind, info.value.retryable) == ("invalid_config", False)
    assert info.value.message == "node type 'delay' expects a DelayConfig config, got NoopConfig"


def test_node_failure_round_trips_through_pickle_and_becomes_an_event_error() -> None:
    failure = NodeFailure("http_status", "GET x answered 404: nope", retryable=False)
    copy = pickle.loads(pickle.dumps(failure))
    assert (copy.kind, copy.message, copy.retryable) == ("http_status", "GET x answered 404: nope", False)
    assert str(copy) == "GET x answered 404: nope"
    assert failure.to_error() == NodeError(
        kind="http_status", message="GET x answered 404: nope", retryable=False
    )


# -- built-ins -------------------------------------------------------------------


async def test_noop_returns_null(registry: NodeRegistry) -> None:
    assert await run(registry, "noop", {}, ctx()) is None


async def test_transform_evaluates_over_inputs_and_upstream_outputs(registry: NodeRegistry) -> None:
    context = ctx(
        "transform",
        inputs={"order_id": "o-7"},
        nodes={
            "fetch": {"status_code": 200, "body": {"items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]}}
        },
    )
    expression = "{order: inputs.order_id, skus: nodes.fetch.body.items[?qty > `1`].sku, n: length(nodes.fetch.body.items)}"
    assert await run(registry, "transform", {"expression": expression}, context) == {
        "order": "o-7",
        "skus": ["a"],
        "n": 2,
    }
    assert await run(registry, "transform", {"expression": "nodes.missing.x"}, context) is None


async def test_transform_evaluation_error_is_a_non_retryable_expression_error(registry: NodeRegistry) -> None:
    with pytest.raises(NodeFailure) as info:
        await run(registry, "transform", {"expression": "abs(inputs.name)"}, ctx(inputs={"name": "ada"}))
    failure = info.value
    assert failure.kind == "expression_error"
    assert failure.retryable is False
    assert failure.message.startswith("'abs(inputs.name)': In function abs(), invalid type for value: ada")


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (None, "false"),
        (False, "false"),
        ("", "false"),
        ([], "false"),
        ({}, "false"),
        (True, "true"),
        (0, "true"),  # JMESPath: numbers are always truthy
        (0.0, "true"),
        ("no", "true"),
        ([None], "true"),
        ({"a": None}, "true"),
    ],
)
async def test_branch_labels_follow_jmespath_truthiness(
    registry: NodeRegistry, value: Any, label: str
) -> None:
    assert await run(registry, "branch", {"expression": "inputs.v"}, ctx(inputs={"v": value})) == {
        "branch": label
    }


async def test_branch_on_a_comparison_and_on_a_missing_field(registry: NodeRegistry) -> None:
    context = ctx(nodes={"fetch": {"status_code": 200}})
    assert await run(registry, "branch", {"expression": "nodes.fetch.status_code == `200`"}, context) == {
        "branch": "true"
    }
    assert await run(registry, "branch", {"expression": "nodes.fetch.status_code == `201`"}, context) == {
        "branch": "false"
    }
    assert await run(registry, "branch", {"expression": "nodes.nothing"}, context) == {"branch": "false"}
    with pytest.raises(NodeFailure) as info:
        await run(registry, "branch", {"expression": "length(nodes.fetch.status_code)"}, context)
    assert (info.value.kind, info.value.retryable) == ("expression_error", False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@given(json_values)
def test_truthiness_matches_jmespaths_own_not_operator(value: Any) -> None:
    # JMESPath's interpreter is the oracle: `!!v` is its boolean of v.
    assert is_truthy(value) is jmespath.search("!!v", {"v": value})


async def test_delay_sleeps_and_reports_its_duration(registry: NodeRegistry) -> None:
    started = time.monotonic()
    assert await run(registry, "delay", {"ms": 30}, ctx()) == {"delayed_ms": 30}
    assert time.monotonic() - started >= 0.025  # the loop may wake a tick early
    assert await run(registry, "delay", {"ms": 0}, ctx()) == {"delayed_ms": 0}


async def test_cancelling_a_delay_propagates_cancelled_error_promptly(registry: NodeRegistry) -> None:
    task = asyncio.create_task(run(registry, "delay", {"ms": 60_000}, ctx()))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5
    assert task.cancelled()


async def test_delay_under_a_timeout_raises_timeout_not_node_failure(registry: NodeRegistry) -> None:
    # The engine's per-node timeout cancels the handler; execute must not swallow that.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await run(registry, "delay", {"ms": 60_000}, ctx())


async def test_fail_always_fails_without_times(registry: NodeRegistry) -> None:
    for attempt in (1, 2, 50):
        with pytest.raises(NodeFailure) as info:
            await run(registry, "fail", {}, ctx(attempt=attempt))
        assert (info.value.kind, info.value.message, info.value.retryable) == (
            "fail",
            "failed on purpose",
            True,
        )


async def test_fail_fails_the_first_times_attempts_then_succeeds(registry: NodeRegistry) -> None:
    config = {"message": "flaky upstream", "times": 2}
    for attempt in (1, 2):
        with pytest.raises(NodeFailure, match=r"^flaky upstream$"):
            await run(registry, "fail", config, ctx(attempt=attempt))
    assert await run(registry, "fail", config, ctx(attempt=3)) == {"attempt": 3}
    assert await run(registry, "fail", {"times": 0}, ctx(attempt=1)) == {"attempt": 1}


# Callables for the python node tests below; importable as tests.unit.engine.test_nodes:<name>.


def record_process(document: dict[str, Any]) -> dict[str, Any]:
    document["inputs"]["mutated"] = True  # must not leak into the caller's document
    return {"seen": sorted(document["inputs"]), "pid": os.getpid()}


class AsyncCallable:
    async def __call__(self, document: dict[str, Any]) -> str:
        return "async object"


async_callable = AsyncCallable()
NOT_CALLABLE = 42


async def test_python_runs_a_sync_function_in_a_worker_process_on_a_copy(registry: NodeRegistry) -> None:
    context = ctx("python", inputs={"a": 1})
    output = await run(
        registry, "python", {"callable": "tests.unit.engine.test_nodes:record_process"}, context
    )
    assert output == {"seen": ["a", "mutated"], "pid": output["pid"]}
    assert output["pid"] != os.getpid()  # isolated: see tests/unit/engine/test_isolated.py
    assert context.document["inputs"] == {"a": 1}


async def test_python_awaits_coroutine_functions(registry: NodeRegistry) -> None:
    context = ctx("python", inputs={"name": "Ada"})
    assert (
        await run(registry, "python", {"callable": "examples.python_nodes:greeting"}, context)
        == "Hello, Ada!"
    )
    obj = {"callable": "tests.unit.engine.test_nodes:async_callable"}
    assert await run(registry, "python", obj, context) == "async object"


async def test_python_example_callables(registry: NodeRegistry) -> None:
    items = [{"price": 2.5, "quantity": 2}, {"price": 1.25}]
    context = ctx("python", inputs={"items": items})
    config = {"callable": "examples.python_nodes:order_total"}
    assert await run(registry, "python", config, context) == {"total": 6.25, "count": 2}
    with pytest.raises(NodeFailure) as info:
        await run(registry, "python", {"callable": "examples.python_nodes:reject_empty"}, ctx(inputs={}))
    assert (info.value.kind, info.value.message, info.value.retryable) == (
        "ValueError",
        "the order has no items",
        True,
    )


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (
            "flowledger_no_such_module:run",
            "cannot import 'flowledger_no_such_module:run': "
            "ModuleNotFoundError: No module named 'flowledger_no_such_module'",
        ),
        (
            "examples.python_nodes:no_such_function",
            "cannot import 'examples.python_nodes:no_such_function': AttributeError: "
            "module 'examples.python_nodes' has no attribute 'no_such_function'",
        ),
        (
            "tests.unit.engine.test_nodes:NOT_CALLABLE",
            "'tests.unit.engine.test_nodes:NOT_CALLABLE' is a int, not a callable",
        ),
    ],
)
async def test_python_import_failures_are_not_retryable(
    registry: NodeRegistry, path: str, detail: str
) -> None:
    with pytest.raises(NodeFailure) as info:
        await run(registry, "python", {"callable": path}, ctx())
    assert (info.value.kind, info.value.message, info.value.retryable) == ("python_import", detail, False)
