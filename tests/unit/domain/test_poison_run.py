"""Poison runs: the fold counts what took a worker or an executor down, and the planner ends a run
at the third such crash instead of running it again (pure: events in, plans out)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from msgspec.structs import replace

from projections.run_state import RunState, fold
from schemas.envelope import EventEnvelope
from schemas.events import (
    WORKER_CRASHED,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    RunQueued,
    RunRecovered,
    RunStarted,
)
from schemas.workflow import EdgeSpec, NodeSpec, WorkflowSpec
from service.domain.planner import POISON_LIMIT, Plan, plan, poison_reason
from service.domain.workflow_spec import WorkflowGraph, build_graph

RUN = uuid4()


def envelopes(*bodies: Any) -> list[EventEnvelope]:
    return [
        EventEnvelope(
            event_id=uuid4(),
            run_id=RUN,
            seq=seq,
            global_position=seq + 1,
            type=str(type(body).__struct_config__.tag),
            tenant="t",
            workflow_id="wf",
            recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
            schema_version=1,
            prev_hash="",
            hash="",
            data=body,
        )
        for seq, body in enumerate(bodies)
    ]


def graph(on_failure: str = "stop") -> WorkflowGraph:
    """``crash -> after``, and ``side`` on its own."""
    return build_graph(
        WorkflowSpec(
            id="wf",
            nodes=[
                NodeSpec(id="crash", type="python"),
                NodeSpec(id="after", type="noop"),
                NodeSpec(id="side", type="noop"),
            ],
            edges=[EdgeSpec(from_="crash", to="after")],
            on_failure=on_failure,  # type: ignore[arg-type]
        )
    )


def attempt(n: int, kind: str = WORKER_CRASHED) -> list[Any]:
    error = NodeError(kind=kind, message="worker process 1 crashed with SIGSEGV (a segmentation fault)")
    return [
        NodeExecuteBefore(node_id="crash", node_type="python", attempt=n),
        NodeExecuteAfter(node_id="crash", node_type="python", status="failed", attempt=n, error=error),
        NodeExecuteAfterData(node_id="crash", attempt=n),
    ]


def run(*bodies: Any) -> RunState:
    return fold(envelopes(RunQueued(workflow_version="v1"), RunStarted(worker_id="w1"), *bodies))


def test_the_fold_counts_worker_crashes_and_recoveries_after_an_expired_lease_only() -> None:
    state = run(
        *attempt(1),
        *attempt(2, kind="ValueError"),  # the code raised: not a crash
        RunRecovered(worker_id="w2", lease_expired=True),  # its executor died
        RunRecovered(worker_id="w3"),  # handed back on a shutdown: not a crash
    )
    assert (state.crashed_workers, state.crashed_executors, state.recoveries) == (1, 1, 2)
    assert state.crashes == 2
    assert poison_reason(state) is None


def test_a_third_worker_crash_ends_the_run_failed_with_poison_run() -> None:
    state = run(*attempt(1), *attempt(2), *attempt(3))
    reason = poison_reason(state)
    assert reason == (
        "poison_run: executing this run took down a worker or its executor 3 times "
        "(3 worker crash(es)); it is not retried or recovered again"
    )
    assert plan(graph(), state) == Plan(
        skip=(("after", "run stopped: poison_run"), ("side", "run stopped: poison_run")),
        finish="failed",
        error=reason,
    )


@pytest.mark.parametrize("on_failure", ["stop", "continue"])
def test_a_recovery_after_the_third_crash_runs_nothing_again(on_failure: str) -> None:
    """Two executor deaths and a worker crash: the recovering executor ends the run at once,
    even with the node interrupted mid-attempt and on_failure: continue."""
    state = run(
        NodeExecuteBefore(node_id="crash", node_type="python", attempt=1),
        RunRecovered(worker_id="w2", lease_expired=True),
        RunRecovered(worker_id="w3", lease_expired=True),
        NodeExecuteBefore(node_id="crash", node_type="python", attempt=2),
        NodeExecuteAfter(
            node_id="crash",
            node_type="python",
            status="failed",
            attempt=2,
            error=NodeError(kind=WORKER_CRASHED, message="killed"),
        ),
    )
    assert state.crashes == POISON_LIMIT
    step = plan(graph(on_failure), state)
    assert step.start == () and step.finish == "failed"
    assert step.error is not None and step.error.startswith("poison_run: ")
    assert "1 worker crash(es), 2 recovery(ies) after its executor died" in step.error


def test_live_nodes_are_cancelled_first_and_a_cancel_request_still_wins() -> None:
    state = run(*attempt(1), *attempt(2), *attempt(3), NodeExecuteBefore(node_id="side", node_type="noop"))
    assert plan(graph(), state, {"side"}) == Plan(
        cancel=("side",), skip=(("after", "run stopped: poison_run"),)
    )
    cancelled = replace(state, cancel_requested=True, cancel_reason="operator")
    assert plan(graph(), cancelled).finish == "cancelled"


def test_below_the_limit_the_run_goes_on() -> None:
    state = run(*attempt(1), *attempt(2))
    assert poison_reason(state) is None
    step = plan(graph(on_failure="continue"), state)
    assert step.finish is None and step.start == ("side",)
