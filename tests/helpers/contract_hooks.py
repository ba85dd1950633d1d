"""Schemathesis hooks of the contract run (``schemathesis.toml`` loads them, so both the CLI run
and ``tests/integration/api/test_contract_schemathesis.py`` use them).

A workflow spec the OpenAPI schema allows is nearly always one the service refuses: node types,
their configs and the graph are beyond what JSON Schema says. Left alone, a stateful run would
almost never get past ``POST /v1/workflows``, and the links from a registered workflow to its
runs (start, read, cancel, fork) would go untested. So half of the schema-valid spec bodies
generated are made registrable: the generated id keeps a chain of built-in nodes, the first a delay of a second (so
a run lives long enough for a linked cancel to find it running).
Bodies that do not match the schema (negative tests) are never touched: they must be refused.
"""

from __future__ import annotations

from typing import Any

import msgspec
import schemathesis
from hypothesis import strategies as st

from schemas.workflow import WorkflowSpec

FIRST = {"type": "delay", "config": {"ms": 1000}}
"""Keeps a run alive long enough for a linked cancel to find it running."""
NODES = [
    {"type": "noop", "config": {}},
    {"type": "delay", "config": {"ms": 10}},
    {"type": "transform", "config": {"expression": "inputs"}},
]


def _schema_valid(body: Any) -> bool:
    """The body decodes as a ``WorkflowSpec``, the type the document's schema is generated from."""
    try:
        msgspec.convert(body, WorkflowSpec)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _registrable(workflow_id: str, kinds: list[dict[str, Any]]) -> dict[str, Any]:
    nodes = [{"id": f"n{i}", **kind} for i, kind in enumerate([FIRST, *kinds])]
    edges = [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(len(nodes) - 1)]
    return {"id": workflow_id, "nodes": nodes, "edges": edges}


@schemathesis.hook.apply_to(operation_id="register_workflow")
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    if not isinstance(body, dict) or not _schema_valid(body):
        return st.just(body)
    registrable = st.lists(st.sampled_from(NODES), max_size=2).map(
        lambda kinds: _registrable(body["id"], kinds)
    )
    return st.one_of(st.just(body), registrable)
