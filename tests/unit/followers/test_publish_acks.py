"""A batch's acks: counted per slot, one future, stored-in-order up to the first lost or refused."""

from __future__ import annotations

import asyncio

from service.infra.publish_acks import REFUSED, STORED, BatchAcks


async def test_the_batch_completes_when_the_last_ack_arrives_in_any_order() -> None:
    acks = BatchAcks(1, 3, "_INBOX.x.1.")
    for index in (2, 0):
        acks.record(index, STORED, seq=10 + index)
    assert not acks.done.done()
    acks.record(1, STORED, seq=11)
    await acks.wait(0.1)
    assert acks.done.done() and acks.stored_in_order() == 3 and acks.last_seq == 12


async def test_a_lost_ack_ends_the_stored_prefix_and_says_why() -> None:
    acks = BatchAcks(1, 4, "p.")
    acks.record(0, STORED)
    acks.record(2, STORED)
    acks.record(3, STORED)
    await acks.wait(0.01)  # slot 1 never answers
    assert acks.stored_in_order() == 1
    assert acks.failure_reason(1) == "ack timeout"


async def test_a_refusal_ends_the_stored_prefix_even_when_later_ones_were_stored() -> None:
    acks = BatchAcks(1, 3, "p.")
    acks.record(0, STORED)
    acks.record(1, REFUSED, "wrong last sequence (err_code 10071)")
    acks.record(2, STORED)
    assert acks.done.done()
    assert acks.stored_in_order() == 1
    assert acks.failure_reason(1) == "wrong last sequence (err_code 10071)"


async def test_repeated_and_stray_replies_are_ignored() -> None:
    acks = BatchAcks(1, 2, "p.")
    acks.record(0, STORED)
    acks.record(0, REFUSED, "duplicate")  # a second reply for the same publish
    acks.record(7, STORED)  # no such slot
    assert acks.received == 1 and acks.stored_in_order() == 1
    acks.record(1, STORED)
    assert acks.stored_in_order() == 2


async def test_an_empty_batch_is_complete_at_once() -> None:
    acks = BatchAcks(1, 0, "p.")
    await asyncio.wait_for(acks.wait(5), 1)
    assert acks.stored_in_order() == 0
