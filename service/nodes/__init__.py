"""Node handlers: the registry of node types the engine executes, and the built-ins."""

from __future__ import annotations

from service.nodes.registry import (
    ENTRY_POINT_GROUP,
    Handler,
    InvalidNodeConfig,
    NodeContext,
    NodeFailure,
    NodeRegistry,
    NodeType,
    UnknownNodeType,
    default_registry,
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
