"""The node types that wait: ``wait`` (for a signal) and ``workflow`` (for a child run).

With ``delay`` they are run by the executor itself (``service.engine.executor``), not by a
handler: waiting holds no node slot, is recorded in the log (``run_waiting`` with what the
node waits for and until when) and survives a restart. Their handlers here only answer a
direct call outside the engine, with an error that says so.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from schemas.events import Identifier
from service.engine.nodes.registry import NodeContext, NodeFailure, NodeRegistry, NodeType

SignalName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
"""A signal's name: also a URL path segment (``POST /v1/runs/{id}/signals/{name}``)."""


class WaitConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    signal: SignalName
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """Fail with ``wait_timeout`` when no signal came within this long (no limit by default)."""


class WorkflowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow_id: Identifier
    version: str | None = None
    """A version of the workflow (its content hash); the latest when absent."""
    inputs: dict[str, Any] = {}
    """The child run's inputs (values may be ``{"$expr": ...}`` over this node's document)."""


async def wait(config: WaitConfig, ctx: NodeContext) -> Any:
    """Waits for signal ``signal`` (optionally ``timeout_ms``); its output is the signal's payload."""
    raise NodeFailure(
        "engine_only", f"node {ctx.node_id}: a wait node runs inside a workflow run only", retryable=False
    )


async def workflow(config: WorkflowConfig, ctx: NodeContext) -> Any:
    """Starts a child run of ``workflow_id`` and waits for it; its output is the child's outputs."""
    raise NodeFailure(
        "engine_only", f"node {ctx.node_id}: a workflow node runs inside a workflow run only", retryable=False
    )


def waiting_node_types() -> list[NodeType]:
    return [
        NodeType("wait", WaitConfig, wait, (wait.__doc__ or "").splitlines()[0]),
        NodeType("workflow", WorkflowConfig, workflow, (workflow.__doc__ or "").splitlines()[0]),
    ]


def register_waiting(registry: NodeRegistry) -> None:
    for node_type in waiting_node_types():
        registry.register(node_type)
