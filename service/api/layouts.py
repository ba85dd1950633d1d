"""DAG layouts for the routes that return one (a workflow version, a run's lineage).

A version's layout never changes, so it is computed once (off the event loop: a large graph
takes grandalf most of a second) and kept, the most recently used few hundred of them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Final

from schemas.api import DagLayout
from schemas.workflow import WorkflowSpec
from service.domain.dag_layout import dag_layout

REMEMBERED: Final = 512
INLINE_NODES: Final = 64
"""Graphs up to this many nodes are laid out on the event loop (a few milliseconds)."""

_layouts: OrderedDict[tuple[str, str, str], DagLayout] = OrderedDict()


async def layout_of_version(tenant: str, workflow_id: str, version: str, spec: WorkflowSpec) -> DagLayout:
    key = (tenant, workflow_id, version)
    cached = _layouts.get(key)
    if cached is not None:
        _layouts.move_to_end(key)
        return cached
    if len(spec.nodes) <= INLINE_NODES:
        layout = dag_layout(spec)
    else:
        layout = await asyncio.to_thread(dag_layout, spec)
    _layouts[key] = layout
    if len(_layouts) > REMEMBERED:
        _layouts.popitem(last=False)
    return layout
