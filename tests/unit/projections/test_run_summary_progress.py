"""``progress`` is the share of nodes whose fate the run settled (issue 10, defect 3): a failed or
cancelled run stays at its real share instead of jumping to 100."""

from __future__ import annotations

from functools import reduce

from projections import run_summaries
from projections.run_summaries import RunSummary
from schemas.envelope import EventEnvelope
from tests.golden import load_history


def _summary(events: list[EventEnvelope]) -> RunSummary:
    view = reduce(run_summaries.apply, events, None)
    assert view is not None
    return view


def _progress_after_each(events: list[EventEnvelope]) -> list[int]:
    return [_summary(events[: i + 1]).progress for i in range(len(events))]


def test_a_run_cancelled_after_one_of_three_nodes_is_not_at_100() -> None:
    # prepare succeeded, slow was cancelled mid-run (it counts: it ran), publish was skipped by the halt
    summary = _summary(load_history("cancel_during_node").events)
    assert summary.status == "cancelled"
    assert summary.halted_nodes == ("publish",)
    assert summary.progress == 66


def test_a_succeeded_run_is_at_100_even_with_branch_skips() -> None:
    summary = _summary(load_history("branch_skip").events)
    assert summary.status == "succeeded" and summary.skipped_nodes and not summary.halted_nodes
    assert summary.progress == 100


def test_halting_adds_nothing_and_only_a_retry_takes_progress_back() -> None:
    for name in ("cancel_during_node", "branch_skip", "retries", "parallel_branches", "crash_recovered"):
        events = load_history(name).events
        steps = _progress_after_each(events)
        for event, before, after in zip(events[1:], steps, steps[1:], strict=False):
            if after < before:  # a failed attempt counted as settled until its retry was scheduled
                assert event.type == "node_retry_scheduled", (name, event.seq)
        for event, before, after in zip(events[1:], steps, steps[1:], strict=False):
            if event.type == "node_skipped" and event.data.halted:  # type: ignore[union-attr]
                assert after == before, (name, event.seq)
