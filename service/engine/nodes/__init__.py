"""Node handlers: the registry of node types the engine executes, and the built-ins.

``registry`` knows nothing of the built-ins; ``builtins`` registers them into a
registry; ``default_registry`` (here) puts the two together with the plugins.
"""

from __future__ import annotations

from service.engine.nodes.builtins import register_builtins
from service.engine.nodes.registry import (
    ENTRY_POINT_GROUP,
    Handler,
    InvalidNodeConfig,
    NodeContext,
    NodeFailure,
    NodeRegistry,
    NodeType,
    UnknownNodeType,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Handler",
    "InvalidNodeConfig",
    "NodeContext",
    "NodeFailure",
    "NodeRegistry",
    "NodeType",
    "UnknownNodeType",
    "default_registry",
]


def default_registry() -> NodeRegistry:
    """A fresh registry with every built-in node type and every ``flowledger.nodes`` plugin."""
    registry = NodeRegistry()
    register_builtins(registry)
    registry.load_entry_points()
    return registry
