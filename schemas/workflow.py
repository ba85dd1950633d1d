"""Workflow spec: a DAG of typed nodes (JSON or YAML, same shape)."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from schemas.events import Identifier


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exponential backoff between attempts; ``max_attempts`` counts the first."""

    max_attempts: int = 1
    initial_backoff_ms: int = 100
    multiplier: float = 2.0
    max_backoff_ms: int = 5000
    non_retryable: list[str] = []


class NodeSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Identifier
    type: str
    config: dict[str, Any] = {}
    retry: RetryPolicy | None = None
    timeout_ms: int | None = None


class EdgeSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    from_: Identifier = msgspec.field(name="from")
    to: Identifier = msgspec.field()
    when: str | None = None


class WorkflowSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Identifier
    nodes: list[NodeSpec]
    edges: list[EdgeSpec] = []
    name: str | None = None
    on_failure: Literal["stop", "continue"] = "stop"


def spec_version(spec: WorkflowSpec) -> str:
    """Content hash of a spec: the first 16 hex chars of SHA-256 over its canonical JSON.

    Canonical = every field (defaults included) with object keys sorted at every
    level, so the same spec from YAML or JSON, in any key order, has the same
    version, and any change to any field gives a new one. List order (nodes,
    edges) is part of the content: node order decides the topological order.
    """
    return hashlib.sha256(msgspec.json.encode(spec, order="sorted")).hexdigest()[:16]
