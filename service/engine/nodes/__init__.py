"""Node handlers: the registry of node types the engine executes, and the built-ins.

``registry`` knows nothing of the built-ins; ``builtins`` registers them into a
registry; ``default_registry`` (here) puts the two together with the plugins.
"""

from __future__ import annotations

from pathlib import Path

from service.config import DEFAULT_HOME, NodeSettings
from service.engine.nodes.builtins import register_builtins
from service.engine.nodes.egress import EgressPolicy
from service.engine.nodes.integrations import register_integrations
from service.engine.nodes.isolated import IsolatedPool
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
from service.engine.nodes.waiting import register_waiting

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


def default_registry(
    settings: NodeSettings | None = None, *, service_host: str = "127.0.0.1", home: Path | None = None
) -> NodeRegistry:
    """A fresh registry with every built-in node type and every ``flowledger.nodes`` plugin.

    ``settings`` size and limit the python worker pool and give the http node's egress rules;
    ``service_host`` is where the service's API is bound: loopback addresses are reachable by
    default only when that is a loopback address; ``home`` is the service's data home (vector
    indexes are under ``<home>/vectors``). ``ValueError`` for a malformed egress rule.
    """
    settings = settings or NodeSettings()
    registry = NodeRegistry(
        egress=EgressPolicy.from_settings(settings.http_allow, settings.http_deny, service_host=service_host),
        isolated=IsolatedPool(
            settings.python_workers,
            max_calls=settings.python_max_calls,
            memory_mb=settings.python_memory_mb,
            cpu_seconds=settings.python_cpu_seconds,
        ),
    )
    register_builtins(registry)
    register_integrations(registry, Path(DEFAULT_HOME) if home is None else home)
    register_waiting(registry)
    registry.load_entry_points()
    return registry
