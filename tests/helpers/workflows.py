"""Workflow specs (as the JSON/YAML a user registers) that several tests build."""

from __future__ import annotations

from typing import Any


def wf(
    workflow_id: str,
    nodes: list[dict[str, Any]],
    edges: list[tuple[str, str] | tuple[str, str, str]],
    **kw: Any,
) -> dict[str, Any]:
    """A spec from nodes and ``(from, to)`` / ``(from, to, when)`` edge tuples; ``kw``: further spec fields."""
    return {
        "id": workflow_id,
        "nodes": nodes,
        "edges": [{"from": e[0], "to": e[1], **({"when": e[2]} if len(e) == 3 else {})} for e in edges],
        **kw,
    }


def steps(n: int, ms: int) -> dict[str, Any]:
    """Nodes and edges (no id) of a linear workflow of ``n`` delay nodes: a run that stays live for a while."""
    nodes = [{"id": f"s{i}", "type": "delay", "config": {"ms": ms}} for i in range(n)]
    edges = [{"from": f"s{i}", "to": f"s{i + 1}"} for i in range(n - 1)]
    return {"nodes": nodes, "edges": edges}
