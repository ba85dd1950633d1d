"""Properties of event bodies, envelopes and the per-run hash chain (pure, no I/O).

The strategies (one per event type, see ``tests.helpers.strategies``) and the tamperings
(``tests.helpers.hash_chains``) are shared with the bundle properties.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import envelope_hash, verify_chain
from schemas.codec import decode_event, encode, encode_event, envelope_decoder, raw_envelope_decoder
from schemas.envelope import EventEnvelope, RawEnvelope
from schemas.events import (
    EVENT_TYPE_BY_TAG,
    EVENT_TYPES,
    SCHEMA_VERSION,
    Event,
    NodeExecuteBefore,
    RunFinished,
    RunQueued,
    RunStarted,
)
from tests.helpers.hash_chains import (
    HEADER_FIELDS,
    Tampered,
    Verifier,
    build_chain,
    change_header,
    flip_data_byte,
    rehash_with_other_data,
    remove_event,
    replaced,
    swap_events,
)
from tests.helpers.strategies import (
    EVENT_STRATEGIES,
    chains,
    envelopes,
    events,
    identifiers,
    sha256_hex,
    texts,
    utc_datetimes,
)

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


@given(chain=chains())
def test_an_intact_chain_verifies(chain: list[RawEnvelope]) -> None:
    assert verify_chain(chain) == []
    # Every stored hash is what the envelope's own fields give (the check audit tools use).
    assert [envelope_hash(e).hex() for e in chain] == [e.hash for e in chain]
    assert [e.prev_hash for e in chain[1:]] == [e.hash for e in chain[:-1]]


# -- (d) tampering is detected -----------------------------------------------------------------------
#
# Each mutation (tests.helpers.hash_chains) returns the tampered events and the (run_id, seq) of the
# FIRST problem verify_chain must report, plus whether that must be the ONLY problem. ``assert_detected`` demands a non-empty
# report, so every check fails for a verifier that always returns [] — pinned by
# ``test_the_tamper_checks_fail_for_a_verifier_that_sees_nothing`` below.


def assert_detected(verifier: Verifier, tampered: Tampered) -> None:
    events_, first, only = tampered
    found = [(p.run_id, p.seq) for p in verifier(events_)]
    assert found, "tampering went undetected"
    assert found[0] == first, f"first problem {found[0]} where {first} was expected: {found}"
    if only:
        assert found == [first], f"expected only {first}, got {found}"


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
    tampered = replaced(chain, index, **{field: value})
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
