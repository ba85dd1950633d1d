"""The DAG layout (grandalf's Sugiyama): every edge points down a layer or more, no two boxes
overlap, every edge's polyline starts and ends at its nodes' centres, and it all fits the drawing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.domain.dag_layout import NODE_HEIGHT, NODE_WIDTH, layout_of


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    count = draw(st.integers(1, 14))
    ids = [f"n{i}" for i in range(count)]
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=20)) if pairs else []
    order = draw(st.permutations(ids))  # spec order is not topological order
    return list(order), [(ids[i], ids[j]) for i, j in chosen]


@given(dags())
def test_layers_point_down_and_boxes_never_overlap(dag: tuple[list[str], list[tuple[str, str]]]) -> None:
    ids, edges = dag
    layout = layout_of(ids, edges)
    assert set(layout.nodes) == set(ids)
    for source, target in edges:
        assert layout.nodes[source].layer < layout.nodes[target].layer
    placed = list(layout.nodes.values())
    for i, a in enumerate(placed):
        assert NODE_WIDTH / 2 <= a.x <= layout.width - NODE_WIDTH / 2
        assert NODE_HEIGHT / 2 <= a.y <= layout.height - NODE_HEIGHT / 2
        for b in placed[i + 1 :]:
            assert abs(a.x - b.x) >= NODE_WIDTH or abs(a.y - b.y) >= NODE_HEIGHT, (a, b)
    assert [(r.from_, r.to) for r in layout.edges] == edges
    for route in layout.edges:
        start, end = layout.nodes[route.from_], layout.nodes[route.to]
        assert route.points[0] == (start.x, start.y) and route.points[-1] == (end.x, end.y)
        assert [y for _x, y in route.points] == sorted(y for _x, y in route.points)  # always downward


def test_an_edge_spanning_layers_bends_around_the_layer_between() -> None:
    layout = layout_of(["a", "b", "c"], [("a", "b"), ("b", "c"), ("a", "c")])
    long_edge = layout.edges[2]
    assert len(long_edge.points) == 3  # a bend on b's row, beside b
    bend_x, bend_y = long_edge.points[1]
    assert bend_y == layout.nodes["b"].y and abs(bend_x - layout.nodes["b"].x) >= NODE_WIDTH / 2


def test_the_same_graph_always_gives_the_same_drawing() -> None:
    ids, edges = ["x", "y", "z", "w"], [("x", "y"), ("x", "z"), ("y", "w"), ("z", "w")]
    assert layout_of(ids, edges) == layout_of(ids, edges)
