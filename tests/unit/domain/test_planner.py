"""The planner: what to do next for a run, as a pure function of graph, run state and live tasks.

The examples pin each rule with its exact plan; the properties drive whole runs through
``plan`` alone (node outcomes and the order in which live nodes finish are drawn) and check
them against an independent model of what must run and what must be skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.run_state import TERMINAL_NODE, NodeState, RunState
from schemas.events import NodeError
from schemas.workflow import EdgeSpec, NodeSpec, WorkflowSpec
from service.domain.planner import Plan, edge_taken, plan
from service.domain.workflow_spec import WorkflowGraph, build_graph

NOT_REACHED = "not reached: no incoming edge was taken"
Edge = tuple[str, str] | tuple[str, str, str]


def graph(
    nodes: Iterable[str], edges: Iterable[Edge] = (), *, on_failure: Literal["stop", "continue"] = "stop"
) -> WorkflowGraph:
    """Node ids (``check*`` ones are branch nodes) and ``(from, to)`` / ``(from, to, when)`` edges."""
    return build_graph(
        WorkflowSpec(
            id="wf",
            nodes=[NodeSpec(id=n, type="branch" if n.startswith("check") else "noop") for n in nodes],
            edges=[EdgeSpec(from_=e[0], to=e[1], when=e[2] if len(e) == 3 else None) for e in edges],
            on_failure=on_failure,
        )
    )


def succeeded(node_id: str, output: Any = None) -> NodeState:
    return NodeState(node_id, status="succeeded", attempts=1, output=output)


def chose(node_id: str, label: str) -> NodeState:
    """A branch node that succeeded and chose ``label``."""
    return succeeded(node_id, {"branch": label})


def failed(node_id: str, message: str = "boom") -> NodeState:
    return NodeState(
        node_id, status="failed", attempts=1, failures=1, error=NodeError(kind="test", message=message)
    )


def running(node_id: str) -> NodeState:
    return NodeState(node_id, status="running", attempts=1)


def state(*nodes: NodeState, cancel: str | None = None) -> RunState:
    """A started run whose nodes are ``nodes`` (every other node pending)."""
    return RunState(
        status="running",
        started=True,
        nodes={n.node_id: n for n in nodes},
        cancel_requested=cancel is not None,
        cancel_reason=cancel,
    )


# -- edges -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "upstream", "taken"),
    [
        (None, succeeded("a"), True),
        (None, failed("a"), False),
        (None, running("a"), False),
        (None, NodeState("a", status="skipped"), False),
        ("true", chose("a", "true"), True),
        ("true", chose("a", "false"), False),
        ("false", chose("a", "false"), True),
        ("true", succeeded("a", "true"), False),  # a label is only read from {"branch": ...}
        ("true", succeeded("a", None), False),
        ("true", NodeState("a", status="failed", output={"branch": "true"}), False),
    ],
)
def test_an_edge_is_taken_when_its_source_succeeded_with_its_label(
    when: str | None, upstream: NodeState, taken: bool
) -> None:
    assert edge_taken(EdgeSpec(from_="a", to="b", when=when), upstream) is taken


# -- one plan at a time --------------------------------------------------------------------------------


def test_a_new_run_starts_exactly_its_entry_nodes_in_topological_order() -> None:
    g = graph(["a", "b", "c", "d"], [("a", "c"), ("b", "c")])
    assert plan(g, state()) == Plan(start=("a", "b", "d"))


def test_a_join_waits_until_every_upstream_node_has_ended() -> None:
    g = graph(["a", "b", "c"], [("a", "c"), ("b", "c")], on_failure="continue")
    waiting = plan(g, state(succeeded("a"), running("b")), active={"b"})
    assert waiting == Plan() and waiting.idle
    assert plan(g, state(succeeded("a"), succeeded("b"))) == Plan(start=("c",))
    assert plan(g, state(succeeded("a"), failed("b"))) == Plan(skip=(("c", "upstream b failed"),))


def test_the_untaken_side_of_a_branch_is_skipped_and_the_skip_cascades_in_one_plan() -> None:
    g = graph(
        ["check", "yes", "no", "after_no", "after_both"],
        [
            ("check", "yes", "true"),
            ("check", "no", "false"),
            ("no", "after_no"),
            ("yes", "after_both"),
            ("after_no", "after_both"),
        ],
    )
    assert plan(g, state(chose("check", "true"))) == Plan(
        start=("yes",), skip=(("no", NOT_REACHED), ("after_no", NOT_REACHED))
    )
    # One taken incoming edge is enough for a join; skipped siblings do not hold it back.
    later = state(
        chose("check", "true"),
        succeeded("yes"),
        NodeState("no", status="skipped", skip_reason=NOT_REACHED),
        NodeState("after_no", status="skipped", skip_reason=NOT_REACHED),
    )
    assert plan(g, later) == Plan(start=("after_both",))


def test_a_join_fed_only_by_untaken_edges_is_skipped_and_the_run_can_finish() -> None:
    g = graph(["check", "yes", "join"], [("check", "yes", "false"), ("check", "join", "false")])
    assert plan(g, state(chose("check", "true"))) == Plan(skip=(("yes", NOT_REACHED), ("join", NOT_REACHED)))
    done = state(
        chose("check", "true"),
        NodeState("yes", status="skipped", skip_reason=NOT_REACHED),
        NodeState("join", status="skipped", skip_reason=NOT_REACHED),
    )
    assert plan(g, done) == Plan(finish="succeeded")


def test_under_continue_a_failure_skips_what_depends_on_it_and_the_rest_runs_on() -> None:
    g = graph(["a", "b", "c", "d"], [("a", "b"), ("b", "c")], on_failure="continue")
    assert plan(g, state(failed("a"), running("d")), active={"d"}) == Plan(
        # c's only upstream (b) is skipped, not failed: nothing reached it
        skip=(("b", "upstream a failed"), ("c", NOT_REACHED))
    )
    ended = state(
        failed("a", "disk full"),
        NodeState("b", status="skipped"),
        NodeState("c", status="skipped"),
        succeeded("d"),
    )
    assert plan(g, ended) == Plan(finish="failed", error="node a failed (test: disk full)")


def test_a_skip_names_every_failed_upstream() -> None:
    g = graph(["a", "b", "c", "d"], [("a", "d"), ("b", "d"), ("c", "d")], on_failure="continue")
    assert plan(g, state(failed("c"), succeeded("b"), failed("a"))) == Plan(
        skip=(("d", "upstream a, c failed"),)
    )


def test_under_stop_a_failure_cancels_live_nodes_first_then_skips_the_rest_and_fails_the_run() -> None:
    g = graph(["a", "b", "c", "d"], [("a", "c"), ("b", "d")], on_failure="stop")
    halted = plan(g, state(failed("a", "no"), running("b")), active={"b"})
    assert halted == Plan(
        cancel=("b",), skip=(("c", "run stopped: node a failed"), ("d", "run stopped: node a failed"))
    )
    # The cancelled node ends as a failure of its own; only then does the run finish.
    after = state(
        failed("a", "no"),
        failed("b", "cancelled"),
        NodeState("c", status="skipped"),
        NodeState("d", status="skipped"),
    )
    assert plan(g, after) == Plan(finish="failed", error="node a failed (test: no); 1 more failed")


def test_a_running_node_without_a_live_task_is_skipped_when_the_run_halts() -> None:
    g = graph(["a", "b"], on_failure="stop")
    assert plan(g, state(failed("a"), running("b"))) == Plan(
        skip=(("b", "run stopped: node a failed"),), finish="failed", error="node a failed (test: boom)"
    )


def test_a_cancel_request_cancels_live_nodes_then_skips_the_rest_and_cancels_the_run() -> None:
    g = graph(["a", "b", "c"], [("a", "b")])
    first = plan(g, state(running("a"), cancel="enough"), active={"a"})
    assert first.cancel == ("a",) and first.finish is None
    assert first.skip == (("b", "run cancelled: enough"), ("c", "run cancelled: enough"))
    last = plan(
        g,
        state(
            failed("a"), NodeState("b", status="skipped"), NodeState("c", status="skipped"), cancel="enough"
        ),
    )
    assert last.finish == "cancelled" and not last.start and not last.cancel
    assert last.error is not None and "enough" in last.error


def test_after_a_crash_interrupted_nodes_are_started_again_unless_still_live() -> None:
    g = graph(["a", "b", "c"], [("a", "c"), ("b", "c")])
    crashed = state(running("a"), NodeState("b", status="retry_wait", attempts=1, failures=1))
    assert plan(g, crashed) == Plan(start=("a", "b"))
    assert plan(g, crashed, active={"a"}) == Plan(start=("b",))
    assert plan(g, crashed, active={"a", "b"}) == Plan()


def test_a_run_whose_nodes_all_succeeded_finishes_succeeded() -> None:
    g = graph(["a", "b"], [("a", "b")])
    assert plan(g, state(succeeded("a"), succeeded("b"))) == Plan(finish="succeeded")


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_an_ended_run_has_nothing_left_to_do(status: Literal["succeeded", "failed", "cancelled"]) -> None:
    g = graph(["a", "b"], [("a", "b")])
    ended = msgspec.structs.replace(state(), status=status)
    assert plan(g, ended) == Plan() and plan(g, ended).idle


# -- whole runs driven by the planner alone --------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    graph: WorkflowGraph
    outcome: dict[str, str]
    """Per node: "failed", or the label it succeeds with ("true"/"false" for a branch, "" otherwise)."""


@st.composite
def cases(draw: st.DrawFn, on_failure: Literal["stop", "continue"]) -> Case:
    count = draw(st.integers(1, 9))
    ids = [f"check{i}" if draw(st.booleans()) else f"n{i}" for i in range(count)]
    edges: list[Edge] = []
    for j in range(1, count):
        for i in sorted(draw(st.sets(st.integers(0, j - 1), max_size=3))):
            when = draw(st.sampled_from([None, "true", "false"])) if ids[i].startswith("check") else None
            edges.append((ids[i], ids[j], when) if when else (ids[i], ids[j]))
    outcome = {
        n: draw(st.sampled_from(["failed", "true", "false"] if n.startswith("check") else ["failed", ""]))
        for n in ids
    }
    return Case(graph(ids, edges, on_failure=on_failure), outcome)


@dataclass
class Trace:
    started: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    finish: str | None = None
    error: str | None = None
    first_failure_at: int | None = None
    """How many nodes had started when the first failure was recorded."""
    final: dict[str, NodeState] = field(default_factory=dict)


def _ended(node: NodeState) -> bool:
    return node.status in TERMINAL_NODE


def drive(case: Case, data: st.DataObject) -> Trace:
    """Run ``case`` to its end with ``plan`` alone, checking every plan against the rules on the way.

    Started nodes stay live until drawn to finish, with their drawn outcome; a cancelled live
    node ends failed (as the executor records it).
    """
    g = case.graph
    nodes = {n: NodeState(n) for n in g.topo_order}
    active: set[str] = set()
    trace = Trace()
    for _ in range(10 * len(nodes) + 10):
        before = RunState(status="running", started=True, nodes=dict(nodes))
        step = plan(g, before, frozenset(active))
        # The executor appends a plan's skips before it starts its nodes.
        for node_id, reason in step.skip:
            assert node_id not in active and not _ended(nodes[node_id]), f"{node_id} skipped twice"
            nodes[node_id] = NodeState(node_id, status="skipped", skip_reason=reason)
            trace.skipped[node_id] = reason
        for node_id in step.start:
            assert nodes[node_id].status == "pending", f"{node_id} started again"
            ups = g.upstream[node_id]
            assert all(_ended(nodes[e.from_]) for e in ups), f"{node_id} started before its upstream ended"
            assert not any(nodes[e.from_].status == "failed" for e in ups), f"{node_id} after a failure"
            assert not ups or any(edge_taken(e, nodes[e.from_]) for e in ups), f"{node_id} not reached"
        for node_id in step.cancel:
            active.remove(node_id)
            nodes[node_id] = failed(node_id, "cancelled")
        if step.finish is not None:
            assert not active and all(_ended(n) for n in nodes.values())
            trace.finish, trace.error, trace.final = step.finish, step.error, nodes
            return trace
        for node_id in step.start:
            nodes[node_id] = running(node_id)
            active.add(node_id)
            trace.started.append(node_id)
        # Liveness: nothing is left pending whose upstream nodes have all ended.
        for node_id, node in nodes.items():
            if node.status == "pending":
                assert not all(_ended(nodes[e.from_]) for e in g.upstream[node_id]), f"{node_id} left waiting"
        if step.idle:
            assert active, "the planner is idle, but nothing runs and the run did not finish"
            done = data.draw(st.sampled_from(sorted(active)), label="finishes next")
            active.remove(done)
            result = case.outcome[done]
            if result == "failed":
                nodes[done] = failed(done)
                if trace.first_failure_at is None:
                    trace.first_failure_at = len(trace.started)
            else:
                nodes[done] = chose(done, result) if done.startswith("check") else succeeded(done)
    raise AssertionError("the run did not end")


def expected_statuses(case: Case) -> dict[str, str]:
    """What every node must end as under ``on_failure: continue`` (independent of timing)."""
    status: dict[str, str] = {}
    label: dict[str, str] = {}
    for node_id in case.graph.topo_order:
        ups = case.graph.upstream[node_id]
        if any(status[e.from_] == "failed" for e in ups):
            status[node_id] = "skipped"
            continue
        reached = not ups or any(
            status[e.from_] == "succeeded" and e.when in (None, label[e.from_]) for e in ups
        )
        if not reached:
            status[node_id] = "skipped"
            continue
        result = case.outcome[node_id]
        status[node_id] = "failed" if result == "failed" else "succeeded"
        label[node_id] = result
    return status


@given(case=cases("continue"), data=st.data())
def test_under_continue_every_node_ends_once_as_the_model_says_whatever_the_timing(
    case: Case, data: st.DataObject
) -> None:
    trace = drive(case, data)
    expected = expected_statuses(case)
    ran = [n for n in case.graph.topo_order if expected[n] != "skipped"]
    assert sorted(trace.started) == sorted(ran)  # each ran exactly once
    assert set(trace.skipped) == {n for n, s in expected.items() if s == "skipped"}
    for node_id, reason in trace.skipped.items():
        failed_up = sorted({e.from_ for e in case.graph.upstream[node_id] if expected[e.from_] == "failed"})
        assert reason == (f"upstream {', '.join(failed_up)} failed" if failed_up else NOT_REACHED)
    assert {n: s.status for n, s in trace.final.items()} == expected
    assert (trace.finish, trace.error) == _outcome(case, trace)


def _outcome(case: Case, trace: Trace) -> tuple[str, str | None]:
    """The run's end as the planner must report it: the first failed node (topological order)
    with its error, and how many more failed."""
    failures = [n for n in case.graph.topo_order if trace.final[n].status == "failed"]
    if not failures:
        return "succeeded", None
    error = trace.final[failures[0]].error
    assert error is not None
    more = f"; {len(failures) - 1} more failed" if len(failures) > 1 else ""
    return "failed", f"node {failures[0]} failed ({error.kind}: {error.message}){more}"


@given(case=cases("stop"), data=st.data())
def test_under_stop_nothing_starts_after_a_failure_and_every_node_still_ends_once(
    case: Case, data: st.DataObject
) -> None:
    trace = drive(case, data)
    assert len(trace.started) == len(set(trace.started))
    assert not set(trace.started) & set(trace.skipped)
    assert set(trace.started) | set(trace.skipped) == set(case.graph.topo_order)
    assert (trace.finish, trace.error) == _outcome(case, trace)
    if trace.first_failure_at is None:  # no failure: exactly what continue would do
        expected = expected_statuses(case)
        assert {n: s.status for n, s in trace.final.items()} == expected
        assert all(reason == NOT_REACHED for reason in trace.skipped.values())
        return
    assert len(trace.started) == trace.first_failure_at, "a node started after the run had to stop"
    failed_nodes = {n for n, s in trace.final.items() if s.status == "failed"}
    for node_id, reason in trace.skipped.items():
        # Under stop a failure halts the run before anything is skipped because of it.
        halted_by = reason.removeprefix("run stopped: node ").removesuffix(" failed")
        assert reason == NOT_REACHED or halted_by in failed_nodes, (node_id, reason)
