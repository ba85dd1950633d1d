"""Stored histories still fold to the states they were recorded with (tests/golden/README.md)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from projections.run_state import fold
from service.domain.run_diff import json_diff
from service.domain.workflow_spec import build_graph
from service.history.time_travel import state_at
from tests.golden import expected_path, history_path, load_history, names

REGENERATE = (
    "If this change of meaning is intended, rewrite the expected state from the stored events with\n"
    "    .venv/bin/python -m tests.golden.record --refold {name}\n"
    "and review the diff of tests/golden/{name}.expected.json (see tests/golden/README.md)."
)

EXPECTED_SCENARIOS = {
    "parallel_branches",
    "retries",
    "branch_skip",
    "cancel_during_node",
    "crash_recovered",
    "fork",
    "node_logs",
}


def test_every_scenario_has_a_stored_history() -> None:
    assert EXPECTED_SCENARIOS <= set(names()), (
        f"missing golden histories: {EXPECTED_SCENARIOS - set(names())}"
    )


@pytest.mark.parametrize("name", names())
def test_history_folds_to_its_recorded_state(name: str) -> None:
    try:
        history = load_history(name)
    except msgspec.ValidationError as exc:
        pytest.fail(
            f"{history_path(name).name} no longer decodes with the current event schemas: {exc}.\n"
            "Stored events must stay readable forever (new fields need defaults; never rename or "
            "retype one). If the history itself is wrong, record it again: "
            f".venv/bin/python -m tests.golden.record {name}"
        )
    events = history.events
    assert [e.seq for e in events] == list(range(len(events))), f"{name}: seqs are not 0..n-1"
    assert {e.run_id for e in events} == {events[0].run_id}, f"{name}: events of more than one run"

    actual = msgspec.json.decode(msgspec.json.encode(msgspec.to_builtins(fold(events))))
    expected: Any = json.loads(expected_path(name).read_text())
    if actual != expected:
        changes, truncated = json_diff(expected, actual, limit=25)
        lines = "\n".join(
            f"  {c.op} {c.path}: expected {json.dumps(c.a)} -> now {json.dumps(c.b)}" for c in changes
        )
        more = "\n  ... more paths differ" if truncated else ""
        pytest.fail(
            f"golden history {name!r} folds to a different state than recorded:\n{lines}{more}\n"
            + REGENERATE.format(name=name)
        )

    # The stored history is a legal one, and folding is deterministic and idempotent on it.
    final = fold(events, strict=True)
    assert fold(events) == final
    assert fold(events, final) == final
    # Time travel over the whole history agrees with the fold and ends where the run ended.
    graph = build_graph(history.workflow)
    for event in events:
        assert state_at(events, event.seq, graph).at_seq == event.seq
    latest = state_at(events, None, graph)
    assert latest.status == final.status and latest.ready == [] and latest.would_finish is None
