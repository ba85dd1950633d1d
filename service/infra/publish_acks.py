"""JetStream publish acks collected per batch: one inbox, one future per batch.

nats-py's ``publish_async`` pays, for every message, a semaphore wait, a future
with a done-callback, a dict entry and a JSON parse through ``json.loads``. A
relay publishing thousands of events per batch only needs to know how many of
each batch were stored, in order. Here every publish of a batch replies to
``<inbox>.<batch>.<index>``, one subscription records each ack in the batch's
slots, and the batch's single future completes when the last ack arrives.
"""

from __future__ import annotations

import asyncio
import itertools

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

PENDING, STORED, REFUSED = 0, 1, 2


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAckReply(msgspec.Struct):
    """The JSON body JetStream replies to a publish with (an ack or an error)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_reply = msgspec.json.Decoder(_PubAckReply).decode


class BatchAcks:
    """The acks of one batch of ``size`` publishes, slot ``i`` for the i-th publish."""

    def __init__(self, batch_id: int, size: int, reply_prefix: str) -> None:
        self.batch_id = batch_id
        self.reply_prefix = reply_prefix  # "<inbox>.<batch>." + index
        self.slots = bytearray(size)
        self.reasons: dict[int, str] = {}
        self.received = 0
        self.last_seq = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if size == 0:
            self.done.set_result(None)

    def record(self, index: int, outcome: int, reason: str = "", seq: int = 0) -> None:
        if not 0 <= index < len(self.slots) or self.slots[index] != PENDING:
            return  # a stray or repeated reply
        self.slots[index] = outcome
        if reason:
            self.reasons[index] = reason
        if seq > self.last_seq:
            self.last_seq = seq
        self.received += 1
        if self.received == len(self.slots) and not self.done.done():
            self.done.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Wait until every ack arrived, or ``timeout_s``; slots still pending count as lost."""
        if not self.done.done():
            await asyncio.wait((self.done,), timeout=timeout_s)

    def stored_in_order(self) -> int:
        """How many publishes, from the first, were stored (the first lost or refused one ends it)."""
        stored = self.slots.find(b"\x00")
        refused = self.slots.find(b"\x02")
        ends = [i for i in (stored, refused) if i >= 0]
        return min(ends) if ends else len(self.slots)

    def failure_reason(self, index: int) -> str:
        if index >= len(self.slots):
            return ""
        return "ack timeout" if self.slots[index] == PENDING else self.reasons.get(index, "refused")


class AckInbox:
    """One subscription on a fresh inbox receiving the acks of every batch published through it."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._batches: dict[int, BatchAcks] = {}
        self._ids = itertools.count(1)

    async def open(self) -> None:
        if self._sub is None:
            self._prefix = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(f"{self._prefix}.*.*", cb=self._on_reply)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        self._batches.clear()
        if sub is not None and not self.nc.is_closed:
            await sub.unsubscribe()

    def batch(self, size: int) -> BatchAcks:
        batch_id = next(self._ids)
        acks = BatchAcks(batch_id, size, f"{self._prefix}.{batch_id}.")
        if size:
            self._batches[batch_id] = acks
        return acks

    def forget(self, acks: BatchAcks) -> None:
        """Stop collecting for ``acks``: its acks were awaited, or its pipeline was abandoned."""
        self._batches.pop(acks.batch_id, None)

    async def _on_reply(self, msg: Msg) -> None:
        _, batch_part, index_part = msg.subject.rsplit(".", 2)
        acks = self._batches.get(int(batch_part))
        if acks is None:
            return
        index = int(index_part)
        if not msg.data:
            status = (msg.headers or {}).get("Status", "")
            acks.record(index, REFUSED, f"no stream answered (status {status or 'none'})")
            return
        try:
            reply = _decode_reply(msg.data)
        except msgspec.DecodeError:
            acks.record(index, REFUSED, f"unreadable ack {msg.data[:80]!r}")
            return
        if reply.error is not None:
            acks.record(index, REFUSED, f"{reply.error.description} (err_code {reply.error.err_code})")
        elif reply.duplicate:
            acks.record(index, REFUSED, "duplicate")
        else:
            acks.record(index, STORED, seq=reply.seq)
