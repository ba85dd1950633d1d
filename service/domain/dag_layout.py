"""Where to draw a workflow's DAG: a layered (Sugiyama) layout by grandalf, top to bottom.

grandalf ranks the nodes into layers, orders each layer to reduce edge crossings and routes
an edge that spans layers through dummy points, so it bends around the nodes between. Each
connected part of the graph is laid out on its own and the parts are placed side by side.
Pure: the same spec always gives the same drawing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

from schemas.api import DagLayout, EdgeRoute, NodePlacement
from schemas.workflow import WorkflowSpec

NODE_WIDTH: Final = 168.0
NODE_HEIGHT: Final = 48.0
LAYER_GAP: Final = 56.0
"""Vertical space between two layers' boxes (room for edge labels)."""
NODE_GAP: Final = 28.0
"""Horizontal space between two boxes of a layer, and between the graph's separate parts."""
MARGIN: Final = 16.0
CROSSING_PASSES: Final = 4


class _Box:
    """The ``view`` grandalf reads a vertex's size from and writes its position to."""

    def __init__(self) -> None:
        self.w = NODE_WIDTH + NODE_GAP
        self.h = NODE_HEIGHT + LAYER_GAP
        self.xy: tuple[float, float] = (0.0, 0.0)


class _Route:
    """The ``view`` grandalf writes an edge's polyline to."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = [(float(x), float(y)) for x, y in points]


def dag_layout(spec: WorkflowSpec) -> DagLayout:
    """The layout of ``spec``'s nodes and edges (edges in the spec's order)."""
    return layout_of([n.id for n in spec.nodes], [(e.from_, e.to) for e in spec.edges])


def layout_of(node_ids: Sequence[str], edges: Sequence[tuple[str, str]]) -> DagLayout:
    vertices = {node_id: Vertex(node_id) for node_id in node_ids}
    for vertex in vertices.values():
        vertex.view = _Box()
    links: list[Any] = []
    for source, target in edges:
        link = Edge(vertices[source], vertices[target])
        link.view = _Route()
        links.append(link)
    graph = Graph(list(vertices.values()), links)
    ranks: dict[str, int] = {}
    left = 0.0
    for part in graph.C:  # connected parts, in the order of their first node in the spec
        sugiyama = SugiyamaLayout(part)
        sugiyama.init_all()
        sugiyama.draw(CROSSING_PASSES)
        members = list(part.sV)
        xs = [v.view.xy[0] for v in members]
        shift = left - min(xs) + NODE_WIDTH / 2
        for v in members:
            v.view.xy = (v.view.xy[0] + shift, v.view.xy[1])
            ranks[v.data] = sugiyama.grx[v].rank
        for link in part.sE:
            link.view.points = [(x + shift, y) for x, y in link.view.points]
        left = max(v.view.xy[0] for v in members) + NODE_WIDTH / 2 + NODE_GAP
    return _placed(vertices, links, ranks, edges)


def _placed(
    vertices: dict[str, Any], links: list[Any], ranks: dict[str, int], edges: Sequence[tuple[str, str]]
) -> DagLayout:
    """Moved so the drawing starts at (MARGIN, MARGIN) and every layer sits on one row."""
    if not vertices:
        return DagLayout(0.0, 0.0, NODE_WIDTH, NODE_HEIGHT, {}, [])

    def row(rank: int) -> float:
        return MARGIN + NODE_HEIGHT / 2 + rank * (NODE_HEIGHT + LAYER_GAP)

    min_x = min(v.view.xy[0] for v in vertices.values()) - NODE_WIDTH / 2
    dx = MARGIN - min_x
    placements = {
        node_id: NodePlacement(x=round(v.view.xy[0] + dx, 1), y=row(ranks[node_id]), layer=ranks[node_id])
        for node_id, v in vertices.items()
    }
    routes = []
    for (source, target), link in zip(edges, links, strict=True):
        start, end = placements[source], placements[target]
        # grandalf's points run through its own y for each layer crossed; put them on our rows
        bends = [(round(x + dx, 1), row(ranks[source] + i)) for i, (x, _y) in enumerate(link.view.points)][
            1:-1
        ]
        routes.append(EdgeRoute(from_=source, to=target, points=[(start.x, start.y), *bends, (end.x, end.y)]))
    width = max(p.x for p in placements.values()) + NODE_WIDTH / 2 + MARGIN
    height = max(p.y for p in placements.values()) + NODE_HEIGHT / 2 + MARGIN
    return DagLayout(
        width=width,
        height=height,
        node_width=NODE_WIDTH,
        node_height=NODE_HEIGHT,
        nodes=placements,
        edges=routes,
    )
