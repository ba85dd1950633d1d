"""``node_log`` in the audit's legality check: lines belong to an attempt that is running."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest

from projections.run_state import IllegalEvent, fold
from schemas.codec import to_typed
from schemas.events import (
    Event,
    LogLine,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeLog,
    NodeRetryScheduled,
    RunFinished,
    RunQueued,
    RunStarted,
)
from tests.helpers.hash_chains import build_chain

LINE = LogLine(at="2025-01-02T03:04:05.000Z", level="info", message="working")


def _fold(bodies: list[Event]) -> None:
    at = datetime(2025, 1, 2, tzinfo=UTC)
    chain = build_chain(uuid.uuid4(), "default", "wf", [(uuid.uuid4(), at, b) for b in bodies])
    fold((to_typed(e) for e in chain), strict=True)


def _start(attempt: int = 1) -> list[Event]:
    return [NodeExecuteBefore(node_id="a", node_type="python", attempt=attempt)]


def _end(status: str = "succeeded", attempt: int = 1) -> list[Event]:
    return [
        NodeExecuteAfter(node_id="a", node_type="python", status=status, attempt=attempt),  # type: ignore[arg-type]
        NodeExecuteAfterData(node_id="a", attempt=attempt),
    ]


HEAD: list[Event] = [RunQueued(workflow_version="v"), RunStarted()]


def test_lines_while_running_and_just_before_the_end_are_legal() -> None:
    log = NodeLog(node_id="a", lines=[LINE])
    _fold([*HEAD, *_start(), log, log, *_end(), RunFinished(status="succeeded")])


def test_lines_of_a_retried_attempt_name_that_attempt() -> None:
    retry = NodeRetryScheduled(node_id="a", attempt=1, next_attempt=2, delay_ms=1)
    _fold(
        [
            *HEAD,
            *_start(1),
            NodeLog(node_id="a", attempt=1, lines=[LINE]),
            *_end("failed", 1),
            retry,
            *_start(2),
            NodeLog(node_id="a", attempt=2, lines=[LINE]),
            *_end("succeeded", 2),
        ]
    )


@pytest.mark.parametrize(
    ("bodies", "problem"),
    [
        ([*HEAD, NodeLog(node_id="a", lines=[LINE])], "not running (pending"),
        ([*HEAD, *_start(), *_end(), NodeLog(node_id="a", lines=[LINE])], "not running (succeeded"),
        ([*HEAD, *_start(1), NodeLog(node_id="a", attempt=2, lines=[LINE])], "attempt 2 but"),
        # between node_execute_after and its data: the output must directly follow the after
        (
            [*HEAD, *_start(), _end()[0], NodeLog(node_id="a", lines=[LINE]), _end()[1]],
            "not running (succeeded",
        ),
    ],
)
def test_lines_outside_a_running_attempt_are_illegal(bodies: list[Event], problem: str) -> None:
    with pytest.raises(IllegalEvent, match=re.escape(problem)):
        _fold(bodies)
