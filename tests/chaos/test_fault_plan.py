"""The drill's fault plan (pure) and its node check: a seed names one plan, the first round has
every kind, durations stay in their ranges; a node that ran again after it succeeded is caught."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import EventEnvelope
from schemas.events import NodeExecuteAfter, NodeExecuteBefore
from tests.chaos.checks import _node_problems
from tests.chaos.faults import FULL, KINDS, NATS_ALL, PG_STOP, SHORT, plan_faults


@given(seed=st.integers(0, 2**32), duration=st.floats(0, 900))
def test_a_seed_names_one_plan_with_every_kind_first(seed: int, duration: float) -> None:
    plan = plan_faults(seed, duration)
    assert plan == plan_faults(seed, duration)
    assert {f.kind for f in plan[: len(KINDS)]} == set(KINDS)
    assert all(f.at < duration for f in plan[len(KINDS) :])
    assert [f.at for f in plan] == sorted(f.at for f in plan)
    for fault in plan:
        if fault.kind == PG_STOP:
            assert 5 <= fault.seconds <= 40
        if fault.kind == NATS_ALL:
            assert fault.seconds == 20


def test_the_short_limits_are_shorter() -> None:
    short = plan_faults(7, 40, SHORT)
    assert {f.kind for f in short} == set(KINDS)
    assert sum(f.seconds for f in short) < sum(f.seconds for f in plan_faults(7, 40, FULL))


def _event(seq: int, body: NodeExecuteBefore | NodeExecuteAfter) -> EventEnvelope:
    return EventEnvelope(
        event_id=uuid.uuid4(),
        run_id=uuid.UUID(int=1),
        seq=seq,
        global_position=seq + 1,
        type=str(body.__struct_config__.tag),
        tenant="default",
        workflow_id="chaos-retry",
        recorded_at=datetime.now(UTC),
        schema_version=1,
        prev_hash=None,
        hash="",
        data=body,
    )


def test_a_node_started_after_it_succeeded_is_a_violation() -> None:
    ok: list[NodeExecuteBefore | NodeExecuteAfter] = [
        NodeExecuteBefore(node_id="flaky", node_type="fail", attempt=1),
        NodeExecuteAfter(node_id="flaky", node_type="fail", status="failed", attempt=1),
        NodeExecuteBefore(node_id="flaky", node_type="fail", attempt=2),
        NodeExecuteAfter(node_id="flaky", node_type="fail", status="succeeded", attempt=2),
        NodeExecuteBefore(node_id="after", node_type="noop", attempt=1),
        NodeExecuteAfter(node_id="after", node_type="noop", status="succeeded", attempt=1),
    ]
    run = uuid.UUID(int=1)
    assert _node_problems(run, "chaos-retry", [_event(i, b) for i, b in enumerate(ok)]) == []
    again: list[NodeExecuteBefore | NodeExecuteAfter] = [
        *ok,
        NodeExecuteBefore(node_id="flaky", node_type="fail", attempt=3),
    ]
    problems = _node_problems(run, "chaos-retry", [_event(i, b) for i, b in enumerate(again)])
    assert problems == [f"run {run}: node flaky ran again (attempt 3) after it succeeded"]
    twice: list[NodeExecuteBefore | NodeExecuteAfter] = [
        *ok,
        NodeExecuteBefore(node_id="after", node_type="noop", attempt=1),
    ]
    assert len(_node_problems(run, "chaos-retry", [_event(i, b) for i, b in enumerate(twice)])) == 2
