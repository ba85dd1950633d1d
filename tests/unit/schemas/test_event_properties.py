"""Properties of event bodies, envelopes and the per-run hash chain (pure, no I/O).

``st.from_type`` is not used for events: it ignores msgspec ``Meta`` constraints
(it happily builds ``node_id="\\x00"`` for the ``Identifier`` pattern), so every
event type gets its own ``st.builds`` strategy over JSON-safe values.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import ChainProblem, canonical_header, chain_hash, envelope_hash, verify_chain
from schemas.codec import decode_event, encode, encode_event, envelope_decoder, raw_envelope_decoder
from schemas.envelope import Envelope, EventEnvelope, RawEnvelope
from schemas.events import (
    EVENT_TYPE_BY_TAG,
    EVENT_TYPES,
    SCHEMA_VERSION,
    Event,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
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

# -- strategies --------------------------------------------------------------------------------------

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
    ),
    NodeSkipped: st.builds(NodeSkipped, node_id=identifiers, reason=texts),
    RunWaiting: st.builds(RunWaiting, reason=texts, node_id=st.none() | texts),
    RunResumed: st.builds(RunResumed, reason=texts),
    RunCancelRequested: st.builds(RunCancelRequested, reason=texts, requested_by=texts),
    RunCancelled: st.builds(RunCancelled, reason=texts),
    RunRecovered: st.builds(RunRecovered, worker_id=texts, completed_nodes=st.lists(identifiers, max_size=5)),
    RunFinished: st.builds(RunFinished, status=statuses, error=st.none() | texts, duration_ms=finite_floats),
}
events: st.SearchStrategy[Event] = st.one_of(*EVENT_STRATEGIES.values())
utc_datetimes = st.datetimes(timezones=st.just(UTC))
TAGS = sorted(EVENT_TYPE_BY_TAG)


def test_there_is_a_strategy_for_every_event_type() -> None:
    assert set(EVENT_STRATEGIES) == set(EVENT_TYPES)


# -- (a) body round-trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS)
@settings(max_examples=40)
@given(data=st.data())
def test_every_event_round_trips(tag: str, data: st.DataObject) -> None:
    event = data.draw(EVENT_STRATEGIES[EVENT_TYPE_BY_TAG[tag]])
    body = encode_event(event)  # also validates: the strategy only builds valid bodies
    assert decode_event(body) == event
    assert decode_event(body, tag) == event
    assert decode_event(body.decode(), tag) == event
    # The stored bytes are canonical: decoding and encoding again reproduces them exactly.
    assert encode_event(decode_event(body)) == body
    # With the type given, the body may omit its own tag.
    untagged = msgspec.json.decode(body)
    assert untagged.pop("type") == tag
    assert decode_event(msgspec.json.encode(untagged), tag) == event


# -- (b) envelope round-trips ------------------------------------------------------------------------


@st.composite
def envelopes(draw: st.DrawFn) -> EventEnvelope:
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


@given(envelope=envelopes())
def test_envelope_round_trips_typed_and_raw(envelope: EventEnvelope) -> None:
    wire = encode(envelope)
    assert envelope_decoder.decode(wire) == envelope
    raw = raw_envelope_decoder.decode(wire)
    assert bytes(raw.data) == encode_event(envelope.data)
    assert decode_event(raw.data, raw.type) == envelope.data
    typed: EventEnvelope = msgspec.structs.replace(raw, data=envelope.data)  # type: ignore[arg-type]
    assert typed == envelope
    # A raw envelope re-encodes to the very same bytes (its body is never re-serialized).
    assert encode(raw) == wire


# -- (c) the hash chain ------------------------------------------------------------------------------


def build_chain(
    run_id: UUID, tenant: str, workflow_id: str, links: Iterable[tuple[UUID, datetime, Event]]
) -> list[RawEnvelope]:
    """A run's stored envelopes, linked exactly as ``EventStore._write_batch_txn`` links them."""
    chain: list[RawEnvelope] = []
    prev: bytes | None = None
    for seq, (event_id, recorded_at, event) in enumerate(links):
        data = encode_event(event)
        tag = event_tag(event)
        header = canonical_header(
            event_id, run_id, seq, tag, tenant, workflow_id, recorded_at, SCHEMA_VERSION
        )
        digest = chain_hash(prev, header, data)
        chain.append(
            RawEnvelope(
                event_id=event_id,
                run_id=run_id,
                seq=seq,
                global_position=seq + 1,
                type=tag,
                tenant=tenant,
                workflow_id=workflow_id,
                recorded_at=recorded_at,
                schema_version=SCHEMA_VERSION,
                prev_hash=prev.hex() if prev else None,
                hash=digest.hex(),
                data=msgspec.Raw(data),
            )
        )
        prev = digest
    return chain


@st.composite
def chains(draw: st.DrawFn, min_events: int = 1, max_events: int = 8) -> list[RawEnvelope]:
    bodies = draw(st.lists(events, min_size=min_events, max_size=max_events))
    event_ids = draw(st.lists(st.uuids(), min_size=len(bodies), max_size=len(bodies), unique=True))
    times = sorted(draw(st.lists(utc_datetimes, min_size=len(bodies), max_size=len(bodies))))
    return build_chain(
        draw(st.uuids()), draw(identifiers), draw(identifiers), zip(event_ids, times, bodies, strict=True)
    )


@given(chain=chains())
def test_an_intact_chain_verifies(chain: list[RawEnvelope]) -> None:
    assert verify_chain(chain) == []
    # Every stored hash is what the envelope's own fields give (the check audit tools use).
    assert [envelope_hash(e).hex() for e in chain] == [e.hash for e in chain]
    assert [e.prev_hash for e in chain[1:]] == [e.hash for e in chain[:-1]]


# -- (d) tampering is detected -----------------------------------------------------------------------
#
# Each mutation returns the tampered events and the (run_id, seq) of the FIRST problem verify_chain
# must report, plus whether that must be the ONLY problem. ``assert_detected`` demands a non-empty
# report, so every check fails for a verifier that always returns [] — pinned by
# ``test_the_tamper_checks_fail_for_a_verifier_that_sees_nothing`` below.

Verifier = Callable[[Iterable[RawEnvelope]], list[ChainProblem]]
Tampered = tuple[list[RawEnvelope], tuple[UUID, int], bool]


def assert_detected(verifier: Verifier, tampered: Tampered) -> None:
    events_, first, only = tampered
    found = [(p.run_id, p.seq) for p in verifier(events_)]
    assert found, "tampering went undetected"
    assert found[0] == first, f"first problem {found[0]} where {first} was expected: {found}"
    if only:
        assert found == [first], f"expected only {first}, got {found}"


def _replace(chain: list[RawEnvelope], index: int, **changes: Any) -> list[RawEnvelope]:
    out = list(chain)
    out[index] = msgspec.structs.replace(chain[index], **changes)
    return out


def flip_data_byte(chain: list[RawEnvelope], index: int, position: int, new_byte: int) -> Tampered:
    data = bytearray(chain[index].data)
    assert data[position] != new_byte
    data[position] = new_byte
    # Only this event's own hash no longer matches; the next link still names its stored hash.
    return _replace(chain, index, data=msgspec.Raw(bytes(data))), (chain[index].run_id, index), True


HEADER_FIELDS = (
    "seq",
    "type",
    "tenant",
    "workflow_id",
    "recorded_at",
    "event_id",
    "run_id",
    "schema_version",
)


def change_header(chain: list[RawEnvelope], index: int, field: str, value: Any) -> Tampered:
    old = chain[index]
    assert getattr(old, field) != value
    tampered = _replace(chain, index, **{field: value})
    if field == "seq":
        # Reported under the (forged) seq the event now carries; later events are off by then.
        return tampered, (old.run_id, value), False
    if field == "run_id":
        # Reported under the forged run; when it is the first event, all later ones look foreign.
        return tampered, (value, index), False
    # Every other covered header field changes only this event's own hash.
    return tampered, (old.run_id, index), True


def remove_event(chain: list[RawEnvelope], index: int) -> Tampered:
    # The event after the hole carries the next seq and names the removed event's hash.
    assert index < len(chain) - 1
    return chain[:index] + chain[index + 1 :], (chain[index].run_id, index + 1), False


def swap_events(chain: list[RawEnvelope], i: int, j: int) -> Tampered:
    assert i < j
    out = list(chain)
    out[i], out[j] = out[j], out[i]
    return out, (chain[i].run_id, j), False


def rehash_with_other_data(chain: list[RawEnvelope], index: int, data: bytes) -> Tampered:
    """Event ``index`` gets new contents and a correctly recomputed hash of its own."""
    assert index < len(chain) - 1
    assert bytes(chain[index].data) != data
    forged = msgspec.structs.replace(chain[index], data=msgspec.Raw(data))
    forged = msgspec.structs.replace(forged, hash=envelope_hash(forged).hex())
    out = list(chain)
    out[index] = forged
    # The forged event verifies on its own; only the following link exposes it.
    return out, (chain[index].run_id, index + 1), True


@given(chain=chains(), data=st.data())
def test_any_changed_data_byte_is_detected(chain: list[RawEnvelope], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1), label="index")
    body = bytes(chain[index].data)
    position = data.draw(st.integers(0, len(body) - 1), label="position")
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[position]), label="new_byte")
    assert_detected(verify_chain, flip_data_byte(chain, index, position, new_byte))


_HEADER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "seq": st.integers(0, 2**31 - 1),
    "type": st.sampled_from(TAGS) | texts,
    "tenant": identifiers,
    "workflow_id": identifiers,
    "recorded_at": utc_datetimes,
    "event_id": st.uuids(),
    "run_id": st.uuids(),
    "schema_version": st.integers(0, 2**15 - 1),
}


@given(chain=chains(), data=st.data())
def test_any_changed_header_field_is_detected(chain: list[RawEnvelope], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1), label="index")
    field = data.draw(st.sampled_from(HEADER_FIELDS), label="field")
    old = getattr(chain[index], field)
    value = data.draw(_HEADER_VALUES[field].filter(lambda v: v != old), label="value")
    assert_detected(verify_chain, change_header(chain, index, field, value))


@given(chain=chains(), data=st.data())
def test_changed_hash_links_are_detected(chain: list[RawEnvelope], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 1), label="index")
    field = data.draw(st.sampled_from(["hash", "prev_hash"]), label="field")
    old = getattr(chain[index], field)
    values = sha256_hex if field == "hash" else st.none() | sha256_hex
    value = data.draw(values.filter(lambda v: v != old), label="value")
    tampered = _replace(chain, index, **{field: value})
    assert_detected(verify_chain, (tampered, (chain[index].run_id, index), False))


# Removing the LAST event is deliberately not tested: a chain commits each event to its
# predecessors only, so a truncated tail is itself a valid, shorter chain. Catching it needs an
# anchor outside the run's own history (a recorded head seq/hash, a projection's event count, the
# copy on the NATS stream). The same holds for a forger who recomputes every hash from the changed
# event to the end. Any other removal leaves a seq gap and a dangling prev_hash.
@given(chain=chains(min_events=2), data=st.data())
def test_a_removed_event_is_detected(chain: list[RawEnvelope], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(chain) - 2), label="index")
    assert_detected(verify_chain, remove_event(chain, index))


@given(chain=chains(min_events=2), data=st.data())
def test_two_swapped_events_are_detected(chain: list[RawEnvelope], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(chain) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(chain) - 1), label="j")
    assert_detected(verify_chain, swap_events(chain, i, j))


@given(chain=chains(min_events=2), data=st.data())
def test_an_event_rehashed_with_other_contents_is_detected(
    chain: list[RawEnvelope], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(chain) - 2), label="index")
    old = bytes(chain[index].data)
    other = data.draw(events.map(encode_event).filter(lambda b: b != old), label="other")
    assert_detected(verify_chain, rehash_with_other_data(chain, index, other))


def _fixed_chain() -> list[RawEnvelope]:
    base = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    bodies: list[Event] = [
        RunQueued(workflow_version="v1", inputs={"order": "\u0000😀", "n": [1, 2.5, None]}),
        RunStarted(worker_id="w1"),
        NodeExecuteBefore(node_id="fetch", node_type="http"),
        RunFinished(status="succeeded", duration_ms=12.5),
    ]
    ids = [UUID(int=i + 1) for i in range(len(bodies))]
    return build_chain(UUID(int=99), "acme", "wf-1", zip(ids, [base] * len(bodies), bodies, strict=True))


def _all_tamperings(chain: list[RawEnvelope]) -> list[Tampered]:
    body = bytes(chain[1].data)
    out = [flip_data_byte(chain, 1, 3, body[3] ^ 1)]
    for field, value in [
        ("seq", 7),
        ("type", "run_resumed"),
        ("tenant", "evil"),
        ("workflow_id", "wf-2"),
        ("recorded_at", datetime(2030, 1, 1, tzinfo=UTC)),
        ("event_id", UUID(int=1234)),
        ("run_id", UUID(int=4321)),
        ("schema_version", SCHEMA_VERSION + 1),
    ]:
        out.append(change_header(chain, 2, field, value))
    out += [
        remove_event(chain, 0),
        remove_event(chain, 2),
        swap_events(chain, 1, 3),
        rehash_with_other_data(chain, 1, encode_event(RunStarted(worker_id="w2"))),
    ]
    return out


def test_the_tamper_checks_fail_for_a_verifier_that_sees_nothing() -> None:
    chain = _fixed_chain()
    assert verify_chain(chain) == []
    for tampered in _all_tamperings(chain):
        assert_detected(verify_chain, tampered)
        with pytest.raises(AssertionError):
            assert_detected(lambda _events: [], tampered)
