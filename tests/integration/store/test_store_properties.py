"""Hypothesis properties of the event store against a real PostgreSQL.

The ``store``/``schema`` fixtures are function-scoped, so every example of one test shares
one schema: examples therefore use fresh ``uuid4`` run ids (never drawn — Hypothesis replays
draws) and compare ``read_all`` only from the log head they started at.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import asyncpg
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import verify_chain
from schemas.codec import decode_event, encode_event
from schemas.envelope import RawEnvelope
from schemas.events import Event, RunQueued, RunStarted, event_tag
from service.store.event_store import EventStore
from tests.helpers.strategies import events, identifiers

STORE_SETTINGS = settings(max_examples=30)


class RunPlan(msgspec.Struct, frozen=True):
    tenant: str
    workflow_id: str
    batches: list[list[Event]]

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch]


@st.composite
def run_plans(draw: st.DrawFn) -> RunPlan:
    bodies = draw(st.lists(events, min_size=1, max_size=8))
    cuts = sorted(draw(st.sets(st.integers(1, len(bodies) - 1))) if len(bodies) > 1 else set())
    batches = [bodies[a:b] for a, b in pairwise([0, *cuts, len(bodies)])]
    return RunPlan(draw(identifiers), draw(identifiers), batches)


plans = st.lists(run_plans(), min_size=1, max_size=4)


async def _write(store: EventStore, plans_: list[RunPlan]) -> dict[uuid.UUID, list[RawEnvelope]]:
    """Append every plan's batches in order; the runs are written concurrently (group commit)."""

    async def write_run(run_id: uuid.UUID, plan: RunPlan) -> list[RawEnvelope]:
        stored: list[RawEnvelope] = []
        for batch in plan.batches:
            stored += await store.append(
                run_id, batch, len(stored), tenant=plan.tenant, workflow_id=plan.workflow_id
            )
        return stored

    run_ids = [uuid.uuid4() for _ in plans_]
    results = await asyncio.gather(*[write_run(r, p) for r, p in zip(run_ids, plans_, strict=True)])
    return dict(zip(run_ids, results, strict=True))


@STORE_SETTINGS
@given(plans_=plans)
async def test_every_appended_event_reads_back_byte_for_byte(
    store: EventStore, plans_: list[RunPlan]
) -> None:
    start = await store.head_position()
    written = await _write(store, plans_)

    for (run_id, stored), plan in zip(written.items(), plans_, strict=True):
        read = await store.read_run(run_id)
        assert read == stored
        assert [e.seq for e in read] == list(range(len(plan.events)))
        for envelope, original in zip(read, plan.events, strict=True):
            assert bytes(envelope.data) == encode_event(original)
            assert envelope.type == event_tag(original)
            assert (envelope.tenant, envelope.workflow_id) == (plan.tenant, plan.workflow_id)
            assert decode_event(envelope.data) == original
            assert decode_event(envelope.data, envelope.type) == original
        assert verify_chain(read) == []

    tail = await store.read_all(start, limit=100_000)
    positions = [e.global_position for e in tail]
    assert positions == sorted(set(positions))
    by_run: dict[uuid.UUID, list[RawEnvelope]] = defaultdict(list)
    for envelope in tail:
        by_run[envelope.run_id].append(envelope)
    assert by_run == written


def _tamper_value(body: dict[str, Any]) -> tuple[str, str, str]:
    """The first string field of an event body (besides its tag) and a forged value for it."""
    for key, value in body.items():
        if key != "type" and isinstance(value, str):
            return key, value, {"succeeded": "failed", "failed": "succeeded"}.get(value, value + "X")
    raise AssertionError(f"no string field to tamper with in {body}")


@settings(max_examples=10)
@given(plans_=plans, data=st.data())
async def test_a_row_changed_behind_the_trigger_is_reported_at_its_run_and_seq(
    store: EventStore, pool: asyncpg.Pool, schema: str, plans_: list[RunPlan], data: st.DataObject
) -> None:
    start = await store.head_position()
    written = await _write(store, plans_)
    run_ids = list(written)
    target_run = data.draw(st.sampled_from(run_ids), label="run")
    target_seq = data.draw(st.integers(0, len(written[target_run]) - 1), label="seq")
    original = bytes(written[target_run][target_seq].data)
    key, old, new = _tamper_value(msgspec.json.decode(original))
    # The exact text of that member as stored (msgspec writes compact JSON), so the UPDATE edits
    # the stored JSON text itself, the way someone with table access would.
    old_member = msgspec.json.encode({key: old})[1:-1].decode()
    new_member = msgspec.json.encode({key: new})[1:-1].decode()
    assert old_member in original.decode()

    table = f'"{schema}".events'
    async with pool.acquire() as conn:
        # One transaction: the append-only trigger is never seen disabled by anyone else, and it
        # is back even if the UPDATE fails.
        async with conn.transaction():
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            status = await conn.execute(
                f"UPDATE {table} SET data = replace(data::text, $1, $2)::json WHERE run_id = $3 AND seq = $4",
                old_member,
                new_member,
                target_run,
                target_seq,
            )
            await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        assert status == "UPDATE 1"
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute(f"UPDATE {table} SET data = data WHERE run_id = $1", target_run)

    tampered = await store.read_run(target_run)
    assert bytes(tampered[target_seq].data) == original.replace(old_member.encode(), new_member.encode(), 1)
    problems = verify_chain(tampered)
    assert [(p.run_id, p.seq) for p in problems] == [(target_run, target_seq)], problems
    assert "hash" in problems[0].problem

    # An audit of the whole log (as `flowledger audit verify --all` would do) blames only that event.
    by_run: dict[uuid.UUID, list[RawEnvelope]] = defaultdict(list)
    for envelope in await store.read_all(start, limit=100_000):
        by_run[envelope.run_id].append(envelope)
    assert set(by_run) == set(run_ids)
    reported = [(p.run_id, p.seq) for events_ in by_run.values() for p in verify_chain(events_)]
    assert reported == [(target_run, target_seq)]


async def test_a_clock_with_a_non_utc_offset_still_yields_a_verifiable_chain(
    pool: asyncpg.Pool, schema: str
) -> None:
    plus_two = timezone(timedelta(hours=2))
    store = EventStore(pool, schema=schema, clock=lambda: datetime.now(plus_two))
    await store.start()
    try:
        run = uuid.uuid4()
        await store.append(
            run, [RunQueued(workflow_version="v1"), RunStarted()], 0, tenant="t", workflow_id="wf"
        )
        assert verify_chain(await store.read_run(run)) == []
    finally:
        await store.close()
