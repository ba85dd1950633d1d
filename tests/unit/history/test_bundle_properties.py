"""Properties of the audit checks and of audit bundles (pure: no database, no files).

Bundles are built from random *legal* run histories (an untouched bundle must verify
clean, legality included), then tampered with the way a forger would: a changed byte
anywhere, a removed line, two lines swapped, an event rewritten with a correct hash of
its own (with and without the digest recomputed). Every such bundle must fail.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import envelope_hash, verify_chain
from schemas.codec import encode, encode_event, raw_envelope_decoder
from schemas.envelope import RawEnvelope
from schemas.events import (
    Event,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeRetryScheduled,
    NodeSkipped,
    RunCancelled,
    RunCancelRequested,
    RunFinished,
    RunQueued,
    RunRecovered,
    RunResumed,
    RunStarted,
    RunWaiting,
)
from schemas.workflow import NodeSpec, WorkflowSpec, spec_version
from service.history.audit import AuditProblem, verify_run
from service.history.bundle import (
    BundleCheck,
    BundleRun,
    RunExport,
    bundle_digest,
    bundle_lines,
    verify_bundle,
)
from tests.golden import load_history
from tests.golden import names as golden_names
from tests.helpers.hash_chains import (
    build_chain,
    flip_data_byte,
    rehash_with_other_data,
    remove_event,
    swap_events,
)
from tests.helpers.strategies import EVENT_STRATEGIES, chains, events, identifiers, utc_datetimes

EXPORTED_AT = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

# -- strategies --------------------------------------------------------------------------------------


def _body(draw: st.DrawFn, cls: type[Any], **fixed: Any) -> Any:
    """A random body of ``cls`` with the fields that decide legality pinned."""
    return msgspec.structs.replace(draw(EVENT_STRATEGIES[cls]), **fixed)


@st.composite
def legal_histories(draw: st.DrawFn, end: str | None = None) -> list[Event]:
    """A history the strict fold accepts: queued, started, nodes run/failed/retried/skipped, an end."""
    history: list[Event] = [draw(EVENT_STRATEGIES[RunQueued]), draw(EVENT_STRATEGIES[RunStarted])]
    for node in draw(st.lists(identifiers, unique=True, max_size=3)):
        if draw(st.booleans()):
            history += [_body(draw, RunWaiting, node_id=None), _body(draw, RunResumed, node_id=None)]
        if draw(st.booleans()):
            history.append(draw(EVENT_STRATEGIES[RunRecovered]))
        kind = draw(st.sampled_from(["succeeded", "failed", "retried", "skipped", "waited"]))
        if kind == "skipped":
            history.append(_body(draw, NodeSkipped, node_id=node))
            continue
        if kind == "waited":  # a wait node: started, waiting, resumed (a signal or timer), done
            history += [
                _body(draw, NodeExecuteBefore, node_id=node, attempt=1),
                _body(draw, RunWaiting, node_id=node),
                _body(draw, RunResumed, node_id=node),
                _body(draw, NodeExecuteAfter, node_id=node, attempt=1, status="succeeded"),
                _body(draw, NodeExecuteAfterData, node_id=node, attempt=1),
            ]
            continue
        attempts = 2 if kind == "retried" else 1
        for attempt in range(1, attempts + 1):
            status = "failed" if attempt < attempts or kind == "failed" else "succeeded"
            history += [
                _body(draw, NodeExecuteBefore, node_id=node, attempt=attempt),
                _body(draw, NodeExecuteAfter, node_id=node, attempt=attempt, status=status),
                _body(draw, NodeExecuteAfterData, node_id=node, attempt=attempt),
            ]
            if attempt < attempts:
                history.append(
                    _body(draw, NodeRetryScheduled, node_id=node, attempt=attempt, next_attempt=attempt + 1)
                )
    if draw(st.booleans()):
        history.append(draw(EVENT_STRATEGIES[RunCancelRequested]))
    ending = end if end is not None else draw(st.sampled_from(["finished", "cancelled", "open"]))
    if ending == "finished":
        history.append(draw(EVENT_STRATEGIES[RunFinished]))
    elif ending == "cancelled":
        history.append(draw(EVENT_STRATEGIES[RunCancelled]))
    return history


def _nodes(history: list[Event]) -> list[str]:
    return list(dict.fromkeys(e.node_id for e in history if isinstance(e, NodeExecuteBefore | NodeSkipped)))


@st.composite
def chained_history(draw: st.DrawFn, history: list[Event]) -> list[RawEnvelope]:
    ids = draw(st.lists(st.uuids(), min_size=len(history), max_size=len(history), unique=True))
    times = sorted(draw(st.lists(utc_datetimes, min_size=len(history), max_size=len(history))))
    return build_chain(
        draw(st.uuids()), draw(identifiers), draw(identifiers), zip(ids, times, history, strict=True)
    )


@st.composite
def bundle_runs(draw: st.DrawFn) -> list[RunExport]:
    """1-3 runs, each with a legal history, some with their workflow spec."""
    count = draw(st.integers(1, 3))
    histories = [draw(legal_histories()) for _ in range(count)]
    total = sum(len(h) for h in histories)
    event_ids = iter(draw(st.lists(st.uuids(), min_size=total, max_size=total, unique=True)))
    run_ids = draw(st.lists(st.uuids(), min_size=count, max_size=count, unique=True))
    runs: list[RunExport] = []
    for run_id, history in zip(run_ids, histories, strict=True):
        tenant, workflow_id = draw(identifiers), draw(identifiers)
        spec: WorkflowSpec | None = None
        queued = history[0]
        assert isinstance(queued, RunQueued)
        version = queued.workflow_version
        if draw(st.booleans()):
            nodes = _nodes(history) or ["only"]
            spec = WorkflowSpec(id=workflow_id, nodes=[NodeSpec(id=n, type="noop") for n in nodes])
            version = spec_version(spec)
        history = [msgspec.structs.replace(queued, workflow_version=version), *history[1:]]
        times = sorted(draw(st.lists(utc_datetimes, min_size=len(history), max_size=len(history))))
        links = zip([next(event_ids) for _ in history], times, history, strict=True)
        chain = build_chain(run_id, tenant, workflow_id, links)
        runs.append(RunExport(BundleRun(run_id, tenant, workflow_id, version, spec), chain))
    return runs


def _bundle(runs: list[RunExport]) -> bytes:
    return b"".join(bundle_lines(runs, EXPORTED_AT))


def _lines(data: bytes) -> list[bytes]:
    """Split exactly as iterating a binary file does (only at ``\\n``, which is kept)."""
    return list(io.BytesIO(data))


def _verify(data: bytes, **kwargs: Any) -> BundleCheck:
    return verify_bundle(io.BytesIO(data), **kwargs)


def _where(problems: list[AuditProblem]) -> list[tuple[UUID | None, int | None]]:
    return [(p.run_id, p.seq) for p in problems]


BUNDLE_SETTINGS = settings(max_examples=40)

# -- the audit checks on one run ----------------------------------------------------------------------


@BUNDLE_SETTINGS
@given(data=st.data())
def test_a_legal_history_verifies(data: st.DataObject) -> None:
    chain = data.draw(chained_history(data.draw(legal_histories())))
    assert verify_run(chain) == []


@BUNDLE_SETTINGS
@given(data=st.data(), extra=events)
def test_any_event_after_the_end_is_illegal(data: st.DataObject, extra: Event) -> None:
    history = data.draw(legal_histories(end=data.draw(st.sampled_from(["finished", "cancelled"]))))
    chain = data.draw(chained_history([*history, extra, RunStarted()]))
    problems = verify_run(chain)
    assert [(p.kind, p.seq) for p in problems] == [("legality", len(history)), ("legality", len(history) + 1)]
    assert "after the run ended" in problems[0].problem
    assert all(p.run_id == chain[0].run_id for p in problems)


@given(chain=chains(), data=st.data())
def test_chain_problems_are_exactly_those_of_verify_chain(
    chain: list[RawEnvelope], data: st.DataObject
) -> None:
    """The incremental verifier reports the same chain defects as ``schemas.canonical.verify_chain``."""
    mutation = data.draw(st.sampled_from(["none", "flip", "remove", "swap", "rehash"]), label="mutation")
    tampered = chain
    if mutation == "flip":
        index = data.draw(st.integers(0, len(chain) - 1))
        body = bytes(chain[index].data)
        position = data.draw(st.integers(0, len(body) - 1))
        tampered = flip_data_byte(chain, index, position, body[position] ^ 0x20)[0]
    elif len(chain) >= 2 and mutation in ("remove", "swap", "rehash"):
        i = data.draw(st.integers(0, len(chain) - 2))
        if mutation == "remove":
            tampered = remove_event(chain, i)[0]
        elif mutation == "swap":
            tampered = swap_events(chain, i, data.draw(st.integers(i + 1, len(chain) - 1)))[0]
        else:
            old = bytes(chain[i].data)
            other = data.draw(events.map(encode_event).filter(lambda b: b != old))
            tampered = rehash_with_other_data(chain, i, other)[0]
    mine = [(p.run_id, p.seq, p.problem) for p in verify_run(tampered) if p.kind == "chain"]
    assert mine == [(p.run_id, p.seq, p.problem) for p in verify_chain(tampered)]


@pytest.mark.parametrize("name", golden_names())
def test_histories_recorded_from_the_engine_are_legal(name: str) -> None:
    """No false alarms on real runs: the golden histories (retries, skips, cancel, recovery, fork)."""
    history = load_history(name)
    first = history.events[0]
    links = [(e.event_id, e.recorded_at, e.data) for e in history.events]
    # Re-chained: the golden files keep the bodies pretty-printed, not as the stored bytes.
    chain = build_chain(first.run_id, first.tenant, first.workflow_id, links)
    assert verify_run(chain) == []


def _fixed_run(bodies: list[Event]) -> list[RawEnvelope]:
    at = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    return build_chain(
        UUID(int=7), "acme", "wf", [(UUID(int=100 + i), at, body) for i, body in enumerate(bodies)]
    )


def _rehashed(event: RawEnvelope, **changes: Any) -> RawEnvelope:
    changed = msgspec.structs.replace(event, **changes)
    return msgspec.structs.replace(changed, hash=envelope_hash(changed).hex())


QUEUED = RunQueued(workflow_version="v1")
BEFORE = NodeExecuteBefore(node_id="a", node_type="noop")
AFTER = NodeExecuteAfter(node_id="a", node_type="noop", status="succeeded")
DATA = NodeExecuteAfterData(node_id="a")
FINISHED = RunFinished(status="succeeded")


@pytest.mark.parametrize(
    ("bodies", "seq", "needle"),
    [
        ([QUEUED, RunStarted(), AFTER], 2, "finished but was not running"),
        ([QUEUED, RunStarted(), BEFORE, DATA], 3, "does not directly follow"),
        ([RunStarted(), BEFORE], 0, "must begin with run_queued"),
        ([QUEUED, RunStarted(), FINISHED, RunCancelled()], 3, "after the run ended (succeeded)"),
        ([QUEUED, QUEUED], 1, "run_queued may only be the first event"),
        ([QUEUED, RunStarted(), BEFORE, AFTER, DATA, BEFORE], 5, "started again after it ended"),
    ],
)
def test_illegal_histories_are_reported_at_their_seq(bodies: list[Event], seq: int, needle: str) -> None:
    problems = verify_run(_fixed_run(bodies))
    assert [(p.kind, p.seq) for p in problems] == [("legality", seq)], problems
    assert needle in problems[0].problem
    assert problems[0].run_id == UUID(int=7)


def test_a_legal_fixed_history_verifies() -> None:
    assert verify_run(_fixed_run([QUEUED, RunStarted(), BEFORE, AFTER, DATA, FINISHED])) == []


def test_a_type_column_that_differs_from_the_body_is_a_schema_problem() -> None:
    chain = _fixed_run([QUEUED, RunStarted(), FINISHED])
    chain[1] = _rehashed(chain[1], type="run_resumed")
    chain[2] = _rehashed(chain[2], prev_hash=chain[1].hash)
    problems = verify_run(chain)
    assert [(p.kind, p.seq) for p in problems] == [("schema", 1)], problems
    assert "run_resumed" in problems[0].problem


@pytest.mark.parametrize(
    "data",
    [b'{"type":"node_execute_before"}', b'{"node_id":"a","node_type":"noop"}', b'{"type":"nope"}', b"[1"],
)
def test_a_body_that_does_not_decode_is_a_schema_problem(data: bytes) -> None:
    chain = _fixed_run([QUEUED, RunStarted(), BEFORE, AFTER])
    chain[2] = _rehashed(chain[2], data=msgspec.Raw(data))
    chain[3] = _rehashed(chain[3], prev_hash=chain[2].hash)
    problems = verify_run(chain)
    # The undecodable event is reported; the fold then judges seq 3 without it.
    assert [(p.kind, p.seq) for p in problems] == [("schema", 2), ("legality", 3)], problems


def test_a_prev_hash_that_is_not_hex_is_a_chain_problem_not_a_crash() -> None:
    chain = _fixed_run([QUEUED, RunStarted(), FINISHED])
    chain[1] = msgspec.structs.replace(chain[1], prev_hash="zz" * 32)
    problems = verify_run(chain)
    assert [(p.kind, p.seq, p.problem) for p in problems] == [
        ("chain", 1, "prev_hash does not match the previous event's hash"),
        ("chain", 1, "prev_hash is not a hex SHA-256 digest"),
    ]


def test_an_unknown_schema_version_is_a_schema_problem() -> None:
    chain = _fixed_run([QUEUED, RunStarted()])
    chain[1] = _rehashed(chain[1], schema_version=99)
    assert [(p.kind, p.seq) for p in verify_run(chain)] == [("schema", 1)]


# -- bundles ------------------------------------------------------------------------------------------


@BUNDLE_SETTINGS
@given(runs=bundle_runs())
def test_an_untouched_bundle_verifies_and_keeps_every_event(runs: list[RunExport]) -> None:
    data = _bundle(runs)
    check = _verify(data)
    assert check.problems == []
    assert check.clean and check.summary().startswith("ok:")
    assert [(r.run, r.events) for r in check.runs] == [(r.run, r.events) for r in runs]
    for kept, original in zip(check.runs, runs, strict=True):
        assert [bytes(e.data) for e in kept.events] == [bytes(e.data) for e in original.events]
    lines = _lines(data)
    assert check.digest == bundle_digest(lines)
    assert msgspec.json.decode(lines[-1])["sha256"] == check.digest
    assert _verify(data, expect_digest=f"sha256:{check.digest}").problems == []


@BUNDLE_SETTINGS
@given(runs=bundle_runs(), data=st.data())
def test_any_changed_byte_fails(runs: list[RunExport], data: st.DataObject) -> None:
    bundle = bytearray(_bundle(runs))
    position = data.draw(st.integers(0, len(bundle) - 1), label="position")
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != bundle[position]), label="byte")
    bundle[position] = new_byte
    assert _verify(bytes(bundle)).problems


@BUNDLE_SETTINGS
@given(runs=bundle_runs(), data=st.data())
def test_any_removed_line_fails(runs: list[RunExport], data: st.DataObject) -> None:
    lines = _lines(_bundle(runs))
    index = data.draw(st.integers(0, len(lines) - 1), label="line")
    assert _verify(b"".join(lines[:index] + lines[index + 1 :])).problems


@BUNDLE_SETTINGS
@given(runs=bundle_runs(), data=st.data())
def test_any_two_swapped_lines_fail(runs: list[RunExport], data: st.DataObject) -> None:
    lines = _lines(_bundle(runs))
    i = data.draw(st.integers(0, len(lines) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(lines) - 1), label="j")
    lines[i], lines[j] = lines[j], lines[i]
    assert _verify(b"".join(lines)).problems


def _event_lines(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if not line.startswith(b'{"bundle":')]


def _forge(lines: list[bytes], index: int, other: bytes) -> tuple[list[bytes], RawEnvelope]:
    """Event line ``index`` gets another body and a correct hash of its own."""
    old = raw_envelope_decoder.decode(lines[index])
    forged = _rehashed(old, data=msgspec.Raw(other))
    out = list(lines)
    out[index] = encode(forged) + b"\n"
    return out, old


def _recompute_digest(lines: list[bytes]) -> list[bytes]:
    """What a forger who knows the format does next: a digest line that matches the new lines."""
    digest = msgspec.json.decode(lines[-1])
    digest["sha256"] = bundle_digest(lines)
    return [*lines[:-1], encode(digest) + b"\n"]


@BUNDLE_SETTINGS
@given(runs=bundle_runs(), data=st.data())
def test_an_event_rewritten_with_a_correct_own_hash_fails(runs: list[RunExport], data: st.DataObject) -> None:
    lines = _lines(_bundle(runs))
    index = data.draw(st.sampled_from(_event_lines(lines)), label="line")
    old_body = bytes(msgspec.json.decode(lines[index], type=RawEnvelope).data)
    other = data.draw(events.map(encode_event).filter(lambda b: b != old_body), label="body")
    forged, old = _forge(lines, index, other)

    # The digest still describes the original lines.
    problems = _verify(b"".join(forged)).problems
    assert any("digest does not match" in p.problem for p in problems), problems

    # Even with the digest recomputed the chain gives it away: the next event's prev_hash,
    # or, for a run's last event, the head hash the digest line records.
    problems = _verify(b"".join(_recompute_digest(forged))).problems
    run = next(r for r in runs if r.run.run_id == old.run_id)
    last = old.seq == len(run.events) - 1
    expected = (old.run_id, old.seq if last else old.seq + 1)
    assert expected in _where([p for p in problems if p.kind == "chain"]), problems


@BUNDLE_SETTINGS
@given(runs=bundle_runs(), data=st.data())
def test_a_consistently_rewritten_bundle_fails_against_the_exported_digest(
    runs: list[RunExport], data: st.DataObject
) -> None:
    """A forger who also rewrites the head hash defeats the bundle alone, not the recorded digest."""
    lines = _lines(_bundle(runs))
    original = _verify(b"".join(lines)).digest
    run = data.draw(st.sampled_from(runs), label="run")
    last = run.events[-1]
    index = next(
        i
        for i in _event_lines(lines)
        if msgspec.json.decode(lines[i], type=RawEnvelope).event_id == last.event_id
    )
    other = data.draw(events.map(encode_event).filter(lambda b: b != bytes(last.data)), label="body")
    forged, _ = _forge(lines, index, other)
    digest = msgspec.json.decode(forged[-1])
    new_last = msgspec.json.decode(forged[index], type=RawEnvelope)
    digest["runs"][str(run.run.run_id)]["head_hash"] = new_last.hash
    forged = [*forged[:-1], encode(digest) + b"\n"]
    forged = _recompute_digest(forged)
    # Legality may or may not catch the new body; the recorded digest always does.
    check = _verify(b"".join(forged), expect_digest=original)
    assert any("not the expected" in p.problem for p in check.problems), check.problems


def test_each_kind_of_tampering_of_a_fixed_bundle_fails() -> None:
    """One readable example of each tampering above, on a bundle that verifies untouched."""
    chain = _fixed_run([QUEUED, RunStarted(), BEFORE, AFTER, DATA, FINISHED])
    runs = [RunExport(BundleRun(UUID(int=7), "acme", "wf", "v1"), chain)]
    data = _bundle(runs)
    lines = _lines(data)
    assert _verify(data).problems == []
    assert len(lines) == 1 + 1 + len(chain) + 1
    tampered = [
        data.replace(b'"worker_id":""', b'"worker_id":"x"'),
        b"".join(lines[:3] + lines[4:]),
        b"".join([lines[0], lines[1], lines[3], lines[2], *lines[4:]]),
        b"".join(_forge(lines, 3, encode_event(RunStarted(worker_id="evil")))[0]),
        data[:-1],
    ]
    for bad in tampered:
        assert bad != data
        assert _verify(bad).problems


def test_a_reformatted_digest_line_is_reported_not_a_crash() -> None:
    """A digest line re-spaced by an editor (``{"bundle": "digest", ...}``) used to trip an
    assertion; it is a problem of the bundle like any other edit."""
    chain = _fixed_run([QUEUED, RunStarted(), BEFORE, AFTER, DATA, FINISHED])
    lines = _lines(_bundle([RunExport(BundleRun(UUID(int=7), "acme", "wf", "v1"), chain)]))
    respaced = lines[-1].replace(b'{"bundle":"digest"', b'{"bundle": "digest"')
    assert respaced != lines[-1]
    check = _verify(b"".join([*lines[:-1], respaced]))
    assert any("digest line is not in canonical form" in p.problem for p in check.problems), check.problems
