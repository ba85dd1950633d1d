"""What a signal appends (pure): the resume, the node's end and the payload as its output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from projections.run_state import NodeState, RunState
from schemas.events import NodeExecuteAfter, NodeExecuteAfterData, RunResumed
from service.engine.control import NotWaitingForSignal, signal_events

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _state(**nodes: NodeState) -> RunState:
    return RunState(run_id="01a24150-bca4-7000-8000-000000000001", status="waiting", nodes=dict(nodes))


def _waiting(node_id: str, signal: str) -> NodeState:
    return NodeState(
        node_id,
        "wait",
        "waiting",
        attempts=1,
        signal=signal,
        started_at=NOW - timedelta(seconds=2),
        first_seq=3,
    )


def test_every_node_waiting_for_the_signal_is_resumed_with_the_payload() -> None:
    state = _state(a=_waiting("a", "go"), b=_waiting("b", "go"), c=_waiting("c", "other"))
    events = signal_events(state, "go", {"ok": 1}, "key:k1", NOW)
    assert [type(e) for e in events] == [RunResumed, NodeExecuteAfter, NodeExecuteAfterData] * 2
    resumed = [e for e in events if isinstance(e, RunResumed)]
    assert [(r.node_id, r.actor, r.signal, r.cause) for r in resumed] == [
        ("a", "key:k1", "go", "signal"),
        ("b", "key:k1", "go", "signal"),
    ]
    after = next(e for e in events if isinstance(e, NodeExecuteAfter))
    assert after.status == "succeeded" and after.duration_ms == 2000.0
    assert next(e for e in events if isinstance(e, NodeExecuteAfterData)).output == {"ok": 1}


def test_a_signal_nobody_waits_for_names_what_the_run_waits_for() -> None:
    with pytest.raises(NotWaitingForSignal, match=r"not waiting for signal 'stop': it waits for 'go'"):
        signal_events(_state(a=_waiting("a", "go")), "stop", None, "key:k1", NOW)
    with pytest.raises(NotWaitingForSignal, match="no node of it waits for a signal now"):
        signal_events(_state(), "go", None, "key:k1", NOW)


def test_a_payload_over_the_cap_is_refused_with_the_setting_to_change() -> None:
    with pytest.raises(ValueError, match=r"at most 100 bytes .*FLOWLEDGER_OUTPUT_CAP_BYTES"):
        signal_events(_state(a=_waiting("a", "go")), "go", "x" * 200, "key:k1", NOW, max_bytes=100)
