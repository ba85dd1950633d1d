"""Hypothesis strategies shared by the tests: event bodies, envelopes, hash-chained runs, workflow runs.

``st.from_type`` is not used for events: it ignores msgspec ``Meta`` constraints
(it happily builds ``node_id="\\x00"`` for the ``Identifier`` pattern), so every
event type gets its own ``st.builds`` strategy over JSON-safe values.
"""

from __future__ import annotations

import string
from datetime import UTC
from typing import Any

from hypothesis import strategies as st

from schemas.envelope import Envelope, EventEnvelope, RawEnvelope
from schemas.events import (
    SCHEMA_VERSION,
    Event,
    LogLine,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeLog,
    NodeRetryScheduled,
    NodeSkipped,
    OutputMarker,
    RunCancelled,
    RunCancelRequested,
    RunFinished,
    RunQueued,
    RunRecovered,
    RunResumed,
    RunStarted,
    RunWaiting,
    event_tag,
)
from tests.helpers.hash_chains import build_chain

# -- event bodies ------------------------------------------------------------------------------------

# Characters that have broken JSON pipelines before: NUL, JS line separators, quotes and
# backslashes, DEL, BOM, astral-plane emoji.
_SPECIAL_CHARS = '\u0000\u2028\u2029"\\/\n\t\x7f\ufeff😀🎉é中'
texts = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(_SPECIAL_CHARS)), max_size=24
)
identifiers = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64)
int64s = st.integers(-(2**63), 2**63 - 1)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | int64s | finite_floats | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
sha256_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)
statuses = st.sampled_from(["succeeded", "failed"])
node_errors = st.builds(NodeError, kind=texts, message=texts, retryable=st.booleans())
output_markers = st.builds(
    OutputMarker, size_bytes=st.integers(0, 2**62), sha256=sha256_hex, truncated=st.booleans()
)

utc_datetimes = st.datetimes(timezones=st.just(UTC))

EVENT_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    RunQueued: st.builds(
        RunQueued,
        workflow_version=texts,
        inputs=json_objects,
        idempotency_key=st.none() | texts,
        parent_run_id=st.none() | st.uuids().map(str),
    ),
    RunStarted: st.builds(RunStarted, worker_id=texts),
    NodeExecuteBefore: st.builds(NodeExecuteBefore, node_id=identifiers, node_type=texts, attempt=int64s),
    NodeExecuteAfter: st.builds(
        NodeExecuteAfter,
        node_id=identifiers,
        node_type=texts,
        status=statuses,
        attempt=int64s,
        duration_ms=finite_floats,
        item_count=int64s,
        error=st.none() | node_errors,
    ),
    NodeExecuteAfterData: st.builds(
        NodeExecuteAfterData,
        node_id=identifiers,
        attempt=int64s,
        output=json_values,
        output_bytes=int64s,
        output_sha256=st.just("") | sha256_hex,
        marker=st.none() | output_markers,
    ),
    NodeRetryScheduled: st.builds(
        NodeRetryScheduled,
        node_id=identifiers,
        attempt=int64s,
        next_attempt=int64s,
        delay_ms=int64s,
        error=st.none() | node_errors,
        due_at=st.none() | utc_datetimes,
    ),
    NodeSkipped: st.builds(NodeSkipped, node_id=identifiers, reason=texts),
    RunWaiting: st.builds(
        RunWaiting,
        reason=texts,
        node_id=st.none() | identifiers,
        signal=st.none() | texts,
        wake_at=st.none() | utc_datetimes,
        child_run_id=st.none() | texts,
    ),
    RunResumed: st.builds(
        RunResumed,
        reason=texts,
        actor=texts,
        node_id=st.none() | identifiers,
        cause=st.sampled_from(["signal", "timer", "timeout", "child", "halt", ""]),
        signal=st.none() | texts,
    ),
    RunCancelRequested: st.builds(RunCancelRequested, reason=texts, requested_by=texts),
    RunCancelled: st.builds(RunCancelled, reason=texts),
    RunRecovered: st.builds(RunRecovered, worker_id=texts, completed_nodes=st.lists(identifiers, max_size=5)),
    RunFinished: st.builds(RunFinished, status=statuses, error=st.none() | texts, duration_ms=finite_floats),
    NodeLog: st.builds(
        NodeLog,
        node_id=identifiers,
        attempt=int64s,
        lines=st.lists(
            st.builds(
                LogLine,
                at=st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
                level=st.sampled_from(["debug", "info", "warning", "error"]),
                message=texts,
                fields=json_objects,
            ),
            max_size=3,
        ),
        dropped=int64s,
    ),
}
"""One strategy per event type, each building only valid bodies."""
events: st.SearchStrategy[Event] = st.one_of(*EVENT_STRATEGIES.values())

# -- envelopes and chains ---------------------------------------------------------------------------


@st.composite
def envelopes(draw: st.DrawFn) -> EventEnvelope:
    """A typed envelope around any event body (not part of a chain: its hashes are random)."""
    event = draw(events)
    return Envelope(
        event_id=draw(st.uuids()),
        run_id=draw(st.uuids()),
        seq=draw(st.integers(0, 2**31 - 1)),
        global_position=draw(st.integers(1, 2**63 - 1)),
        type=event_tag(event),
        tenant=draw(identifiers),
        workflow_id=draw(identifiers),
        recorded_at=draw(utc_datetimes),
        schema_version=SCHEMA_VERSION,
        prev_hash=draw(st.none() | sha256_hex),
        hash=draw(sha256_hex),
        data=event,
    )


@st.composite
def chains(draw: st.DrawFn, min_events: int = 1, max_events: int = 8) -> list[RawEnvelope]:
    """One run's stored envelopes, correctly hash-chained (the bodies need not be a legal history)."""
    bodies = draw(st.lists(events, min_size=min_events, max_size=max_events))
    event_ids = draw(st.lists(st.uuids(), min_size=len(bodies), max_size=len(bodies), unique=True))
    times = sorted(draw(st.lists(utc_datetimes, min_size=len(bodies), max_size=len(bodies))))
    return build_chain(
        draw(st.uuids()), draw(identifiers), draw(identifiers), zip(event_ids, times, bodies, strict=True)
    )


# -- workflow runs -----------------------------------------------------------------------------------


@st.composite
def random_runs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A random valid DAG (workflow ``random``) with random failures and branch outcomes, and the run inputs."""
    n = draw(st.integers(1, 8))
    nodes: list[dict[str, Any]] = []
    inputs: dict[str, Any] = {}
    kinds = [draw(st.sampled_from(["noop", "noop", "fail", "branch", "transform"])) for _ in range(n)]
    for i, kind in enumerate(kinds):
        node: dict[str, Any] = {"id": f"n{i}", "type": kind}
        if kind == "fail":
            node["config"] = {"times": draw(st.integers(0, 3))}
            node["retry"] = {
                "max_attempts": draw(st.integers(1, 3)),
                "initial_backoff_ms": 1,
                "max_backoff_ms": 2,
            }
        elif kind == "branch":
            inputs[f"b{i}"] = draw(st.booleans())
            node["config"] = {"expression": f"inputs.b{i}"}
        elif kind == "transform":
            node["config"] = {"expression": "keys(nodes)"}
        nodes.append(node)
    edges = []
    for j in range(1, n):
        for i in range(j):
            if draw(st.integers(0, 9)) < 4:
                edge: dict[str, Any] = {"from": f"n{i}", "to": f"n{j}"}
                if kinds[i] == "branch":
                    edge["when"] = draw(st.sampled_from(["true", "false"]))
                edges.append(edge)
    spec = {
        "id": "random",
        "nodes": nodes,
        "edges": edges,
        "on_failure": draw(st.sampled_from(["stop", "continue"])),
    }
    return spec, inputs
