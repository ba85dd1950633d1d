"""Node plugins from the ``flowledger.nodes`` entry-point group.

Each test writes a real (tiny) installed distribution - a module plus a
``<name>.dist-info`` with ``METADATA`` and ``entry_points.txt`` - into a temp
directory on ``sys.path``, so ``importlib.metadata`` discovers it exactly as it
would a pip-installed plugin.
"""

from __future__ import annotations

import importlib.metadata
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from service.engine.nodes import ENTRY_POINT_GROUP, NodeContext, NodeRegistry, default_registry
from service.engine.nodes.builtins import register_builtins

PLUGIN_SOURCE = """
from __future__ import annotations

import msgspec

from service.engine.nodes import NodeContext, NodeType


class FieldConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    field: str


async def upper(config: FieldConfig, ctx: NodeContext) -> str:
    return ctx.document["inputs"][config.field].upper()


UPPER = NodeType("plugin_upper", FieldConfig, upper, "Upper-case an input field.")
DUPLICATE = NodeType("noop", FieldConfig, upper)
NOT_A_NODE = 42


def register(registry):
    @registry.node("plugin_echo", FieldConfig)
    async def echo(config: FieldConfig, ctx: NodeContext) -> object:
        return ctx.document["inputs"][config.field]

    @registry.node("plugin_length", FieldConfig)
    async def length(config: FieldConfig, ctx: NodeContext) -> int:
        return len(ctx.document["inputs"][config.field])


async def register_async(registry):
    registry.register(NodeType("plugin_async", FieldConfig, upper))


def register_half(registry):
    registry.register(NodeType("plugin_half", FieldConfig, upper))
    raise RuntimeError("plugin set-up failed after one node")
"""


@dataclass
class FakePlugin:
    module: str
    distribution: str
    group: str


def install_fake_plugin(root: Path, group: str, entry_points: dict[str, str]) -> FakePlugin:
    suffix = uuid.uuid4().hex[:8]
    module = f"flowledger_fake_plugin_{suffix}"
    distribution = f"flowledger-fake-plugin-{suffix}"
    (root / f"{module}.py").write_text(PLUGIN_SOURCE)
    dist_info = root / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value.format(module=module)}" for name, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")
    return FakePlugin(module, distribution, group)


@pytest.fixture
def plugin_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("flowledger_fake_plugin_")]:
        del sys.modules[name]


GOOD = {"upper": "{module}:UPPER", "multi": "{module}:register"}
BROKEN = {
    "half": "{module}:register_half",
    "async_register": "{module}:register_async",
    "missing_module": "flowledger_no_such_plugin_module:register",
    "missing_attr": "{module}:no_such_attr",
    "not_a_node": "{module}:NOT_A_NODE",
    "duplicate": "{module}:DUPLICATE",
}


def ctx(inputs: dict[str, object]) -> NodeContext:
    return NodeContext(
        run_id="r", node_id="n", node_type="t", attempt=1, document={"inputs": inputs, "nodes": {}}
    )


async def test_entry_points_register_node_types_and_callables(plugin_root: Path) -> None:
    group = f"flowledger.nodes.test{uuid.uuid4().hex[:6]}"
    plugin = install_fake_plugin(plugin_root, group, GOOD)
    # The fake distribution is visible to importlib.metadata like an installed one.
    discovered = importlib.metadata.entry_points(group=group)
    assert sorted(ep.name for ep in discovered) == ["multi", "upper"]
    assert {ep.dist.name for ep in discovered if ep.dist is not None} == {plugin.distribution}

    registry = NodeRegistry()
    with capture_logs() as logs:
        added = registry.load_entry_points(group)
    assert sorted(added) == ["plugin_echo", "plugin_length", "plugin_upper"]
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []
    assert registry.get("plugin_upper").description == "Upper-case an input field."

    config = registry.parse_config("plugin_upper", {"field": "name"})
    assert await registry.execute("plugin_upper", config, ctx({"name": "ada"})) == "ADA"
    config = registry.parse_config("plugin_length", {"field": "name"})
    assert await registry.execute("plugin_length", config, ctx({"name": "ada"})) == 3

    # Loading again adds nothing and does not trip over its own registrations.
    assert registry.load_entry_points(group) == []


def test_broken_entry_points_warn_and_never_half_register(plugin_root: Path) -> None:
    group = f"flowledger.nodes.test{uuid.uuid4().hex[:6]}"
    plugin = install_fake_plugin(plugin_root, group, {**BROKEN, **GOOD})
    registry = NodeRegistry()
    register_builtins(registry)

    with capture_logs() as logs:
        added = registry.load_entry_points(group)

    assert sorted(added) == ["plugin_echo", "plugin_length", "plugin_upper"]
    warnings = {entry["entry_point"]: entry for entry in logs if entry["log_level"] == "warning"}
    assert sorted(warnings) == sorted(BROKEN)
    for name, entry in warnings.items():
        assert entry["event"] == "node plugin failed to load; skipped"
        assert entry["group"] == group
        assert entry["value"] == BROKEN[name].format(module=plugin.module)
    assert warnings["missing_module"]["error"] == (
        "ModuleNotFoundError: No module named 'flowledger_no_such_plugin_module'"
    )
    assert warnings["missing_attr"]["error"].startswith("AttributeError:")
    assert warnings["missing_attr"]["distribution"] == plugin.distribution
    assert warnings["half"]["error"] == "RuntimeError: plugin set-up failed after one node"
    assert warnings["not_a_node"]["error"] == (
        "TypeError: entry point must name a NodeType or a register(registry) callable, got int"
    )
    assert (
        warnings["async_register"]["error"]
        == "TypeError: register(registry) must be a plain function, not async"
    )
    assert warnings["duplicate"]["error"] == "ValueError: node type 'noop' is already registered"
    # The failed register() call was rolled back; the built-in noop is still the built-in.
    assert "plugin_half" not in registry.names()
    assert registry.get("noop").config_type.__name__ == "NoopConfig"


def test_default_registry_includes_plugins_of_the_real_group(plugin_root: Path) -> None:
    install_fake_plugin(plugin_root, ENTRY_POINT_GROUP, {"upper": "{module}:UPPER", "gone": "{module}:gone"})
    with capture_logs() as logs:
        registry = default_registry()
    assert "plugin_upper" in registry.names()
    assert {"noop", "transform", "branch", "delay", "http", "python", "fail"} <= set(registry.names())
    assert [entry["entry_point"] for entry in logs if entry["log_level"] == "warning"] == ["gone"]
