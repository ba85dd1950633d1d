"""Big node outputs on real PostgreSQL: stored whole as blobs, seen whole everywhere.

A ``python`` node returns 6 MiB (over the 1 MiB event cap): its event carries a ``$blob``
reference, the blob is in ``blobs``, and the next node gets the value itself (it reports the
length and SHA-256 it saw). Then time travel, a fork that reuses the big node, the diff, the
audit, and an export -> import into a fresh schema (a tampered blob refused); and an output over
``max_output_bytes`` fails its node with ``output_too_large``.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from projections.run_state import fold
from schemas.events import NodeExecuteAfter, NodeExecuteAfterData
from service.bench.scratch import scratch_schema
from service.config import WorkerSettings
from service.domain.outputs import state_blob_refs
from service.domain.run_diff import diff_runs
from service.domain.workflow_spec import build_graph
from service.engine.fork import start_fork
from service.history.audit import audit_runs
from service.history.bundle import (
    ImportRefused,
    bundle_lines,
    collect_runs,
    import_bundle,
    verify_bundle_file,
    write_bundle,
)
from service.history.time_travel import fold_at, view_at
from service.store.blobs import BlobStore, BlobUnavailable
from service.store.event_store import EventStore
from tests.helpers.api import wait_ended
from tests.helpers.big_outputs import big_text, expected
from tests.helpers.engine_harness import Engine, engine_on
from tests.helpers.workflows import wf

BIG = 6 * 1024 * 1024
SPEC = wf(
    "big",
    [
        {"id": "make", "type": "python", "config": {"callable": "tests.helpers.big_outputs:make"}},
        {"id": "measure", "type": "python", "config": {"callable": "tests.helpers.big_outputs:measure"}},
    ],
    [("make", "measure")],
)


def _data(events: list[Any], node_id: str) -> NodeExecuteAfterData:
    (data,) = [
        e.data
        for e in events
        if isinstance(e.data, NodeExecuteAfterData) and e.data.node_id == node_id and e.data.output_sha256
    ]
    return data


async def _blob_rows(pool: asyncpg.Pool, schema: str) -> list[tuple[str, int]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(f'SELECT sha256, size_bytes FROM "{schema}".blobs ORDER BY sha256')
    return [(r[0], r[1]) for r in rows]


async def test_a_6_mib_output_is_stored_whole_and_seen_whole_everywhere(
    pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    async with engine_on(pool, schema) as engine:
        await engine.register(SPEC)
        run_id = await engine.start("big", {"size": BIG})
        events = await engine.wait_ended(run_id, timeout=60)
        assert events[-1].data.status == "succeeded"

        # The event holds the reference; the blob holds the JSON bytes of the string.
        encoded = msgspec.json.encode(big_text(BIG))
        sha = hashlib.sha256(encoded).hexdigest()
        made = _data(events, "make")
        assert made.output == {"$blob": {"sha256": sha, "size_bytes": len(encoded)}}
        assert (made.output_bytes, made.output_sha256, made.marker) == (len(encoded), sha, None)
        assert await _blob_rows(pool, schema) == [(sha, len(encoded))]
        assert max(len(bytes(e.data)) for e in await engine.store.read_run(run_id)) < 64 * 1024

        # The next node got the value itself.
        assert _data(events, "measure").output == expected(BIG)
        after = next(
            e.data for e in events if isinstance(e.data, NodeExecuteAfter) and e.data.node_id == "make"
        )
        assert after.item_count == 1

        # Time travel, right after make's output: the real value, as output and in measure's document.
        typed = await engine.events(run_id)
        at = next(
            e.seq for e in typed if isinstance(e.data, NodeExecuteAfterData) and e.data.node_id == "make"
        )
        state = fold_at(typed, at)
        refs = state_blob_refs(state)
        blobs = await BlobStore(pool, schema=schema).load({s: r.size_bytes for s, r in refs.items()})
        graph = build_graph((await engine.workflows.get("big")).spec)
        view = view_at(state, typed, graph, blobs)
        assert view.nodes["make"].output == big_text(BIG)
        assert view.nodes["measure"].inputs is not None
        assert view.nodes["measure"].inputs["nodes"]["make"] == big_text(BIG)
        assert view.ready == ["measure"]

        # A fork from measure reuses make's reference (no second blob), and measure sees the value.
        fork, _, _ = await start_fork(engine.queue, engine.workflows, run_id, from_node="measure")
        fork_events = await engine.wait_ended(fork.run_id, timeout=60)
        assert fork_events[-1].data.status == "succeeded"
        reused = _data(fork_events, "make")
        assert reused.reused_from is not None and reused.output == made.output
        assert _data(fork_events, "measure").output == expected(BIG)
        assert await _blob_rows(pool, schema) == [(sha, len(encoded))]

        # The diff compares by hash: equal to the fork, changed against a run of another size.
        other = await engine.start("big", {"size": BIG, "seed": "other"})
        other_events = await engine.wait_ended(other, timeout=60)
        diff_fork = diff_runs(fold(typed), fold(fork_events), graph, graph)
        assert {n.node_id: n.output for n in diff_fork.nodes} == {"make": "equal", "measure": "equal"}
        diff_other = diff_runs(fold(typed), fold(other_events), graph, graph)
        assert {n.node_id: n.output for n in diff_other.nodes} == {"make": "changed", "measure": "changed"}
        make_diff = next(n for n in diff_other.nodes if n.node_id == "make")
        assert make_diff.json_changes is None and make_diff.output_sha256_a == sha

        # The audit checks the blob too.
        async with pool.acquire() as conn:
            assert (await audit_runs(engine.store, conn, [run_id, fork.run_id])).clean

        # Export -> import into a fresh schema: the blob travels and the value reads back whole.
        path = tmp_path / "big.ndjson"
        exported = await collect_runs(engine.store, engine.workflows, [run_id, fork.run_id])
        write_bundle(path, bundle_lines(exported, engine.store.clock()))
        lines = path.read_bytes().splitlines(keepends=True)
        assert sum(line.startswith(b'{"bundle":"blob"') for line in lines) == 1  # shared, carried once
        check = verify_bundle_file(path)
        assert check.clean, check.problems
        async with scratch_schema(pool, prefix="t_target") as target:
            result = await import_bundle(pool, check, schema=target)
            assert sorted(result.new_runs) == sorted([run_id, fork.run_id])
            assert await _blob_rows(pool, target) == [(sha, len(encoded))]
            assert await BlobStore(pool, schema=target).load({sha: len(encoded)}) == {sha: big_text(BIG)}
            target_store = EventStore(pool, schema=target)
            async with pool.acquire() as conn:
                assert (await audit_runs(target_store, conn, [run_id, fork.run_id])).clean

        # A changed byte in the blob line: verify reports the blob, and import refuses it.
        tampered = tmp_path / "tampered.ndjson"
        (blob_line,) = [i for i, line in enumerate(lines) if line.startswith(b'{"bundle":"blob"')]
        at = lines[blob_line].index(b'"value":"') + len(b'"value":"') + 100
        changed = list(lines)
        flipped = b"0" if changed[blob_line][at : at + 1] != b"0" else b"1"
        changed[blob_line] = changed[blob_line][:at] + flipped + changed[blob_line][at + 1 :]
        tampered.write_bytes(b"".join(changed))
        bad = verify_bundle_file(tampered)
        assert any(p.kind == "blob" and "does not match its contents" in p.problem for p in bad.problems)
        async with scratch_schema(pool, prefix="t_target") as target:
            with pytest.raises(ImportRefused):
                await import_bundle(pool, bad, schema=target)
            assert await _blob_rows(pool, target) == []

        # Without its blob line the bundle names what is missing.
        cut = tmp_path / "cut.ndjson"
        cut.write_bytes(b"".join(line for i, line in enumerate(lines) if i != blob_line))
        missing = verify_bundle_file(cut)
        assert {(p.run_id, p.kind) for p in missing.problems if "does not carry" in p.problem} == {
            (run_id, "blob"),
            (fork.run_id, "blob"),
        }


async def test_a_blob_changed_behind_the_log_is_reported_and_not_used(
    pool: asyncpg.Pool, schema: str
) -> None:
    settings = WorkerSettings(lease_s=5, poll_s=0.2, output_cap_bytes=1024)
    async with engine_on(pool, schema, settings=settings) as engine:
        await engine.register(SPEC)
        run_id = await engine.start("big", {"size": 5000})
        events = await engine.wait_ended(run_id, timeout=60)
        assert _data(events, "measure").output == expected(5000)
        sha = _data(events, "make").output_sha256
        async with pool.acquire() as conn:
            # The table refuses UPDATE and DELETE; an operator with the trigger off is the threat.
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(f'UPDATE "{schema}".blobs SET data = $1', b'"x"')
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(f'DELETE FROM "{schema}".blobs')
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(f'UPDATE "{schema}".blobs SET data = $1, size_bytes = 3', b'"x"')
            report = await audit_runs(engine.store, conn, [run_id])
        assert [(p.kind, p.seq) for p in report.problems] == [
            ("blob", next(e.seq for e in events if e.data is _data(events, "make")))
        ]
        assert "does not match its reference" in report.problems[0].problem
        with pytest.raises(BlobUnavailable, match=sha):
            await BlobStore(pool, schema=schema).load({sha: _data(events, "make").output_bytes})


@pytest.mark.parametrize("on_failure", ["stop", "continue"])
async def test_an_output_over_the_hard_limit_fails_its_node_with_output_too_large(
    pool: asyncpg.Pool, schema: str, on_failure: str
) -> None:
    settings = WorkerSettings(lease_s=5, poll_s=0.2, output_cap_bytes=1024, max_output_bytes=4096)
    spec = {
        **SPEC,
        "nodes": [
            {**SPEC["nodes"][0], "retry": {"max_attempts": 3, "initial_backoff_ms": 10}},
            SPEC["nodes"][1],
            {"id": "side", "type": "noop"},
        ],
        "on_failure": on_failure,
    }
    async with engine_on(pool, schema, settings=settings) as engine:
        await engine.register(spec)
        events = await engine.wait_ended(await engine.start("big", {"size": 5000}), timeout=60)
        afters = [e.data for e in events if isinstance(e.data, NodeExecuteAfter) and e.data.node_id == "make"]
        assert len(afters) == 1, "output_too_large is not retried"
        error = afters[0].error
        assert afters[0].status == "failed" and error is not None
        assert (error.kind, error.retryable) == ("output_too_large", False)
        assert "5002 bytes" in error.message and "4096 bytes" in error.message
        assert events[-1].data.status == "failed"
        state = fold(events)
        assert state.nodes["measure"].status == "skipped"
        if on_failure == "continue":  # under stop, side may or may not have run before the failure
            assert state.nodes["side"].status == "succeeded"
        assert await _blob_rows(pool, schema) == []


async def test_a_node_returning_a_blob_shaped_object_keeps_it_as_its_output(engine_blob: Engine) -> None:
    """``{"$blob": ...}`` from a node is data, not a reference: its hash is not its own sha256."""
    fake = {"$blob": {"sha256": "ab" * 32, "size_bytes": 5}}
    await engine_blob.register(
        wf(
            "fake",
            [
                {"id": "make", "type": "transform", "config": {"expression": "inputs.fake"}},
                {"id": "use", "type": "transform", "config": {"expression": "nodes.make"}},
            ],
            [("make", "use")],
        )
    )
    events = await engine_blob.wait_ended(await engine_blob.start("fake", {"fake": fake}))
    assert events[-1].data.status == "succeeded"
    assert _data(events, "use").output == fake


@pytest.fixture
async def engine_blob(pool: asyncpg.Pool, schema: str) -> Any:
    async with engine_on(pool, schema) as engine:
        yield engine


async def test_the_state_route_returns_a_blob_output_as_its_value(api: httpx.AsyncClient) -> None:
    workflow_id = f"big-{uuid.uuid4().hex[:8]}"
    assert (await api.post("/v1/workflows", json={**SPEC, "id": workflow_id})).status_code == 201
    started = await api.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": {"size": BIG}})
    run_id = started.json()["run_id"]
    events = await wait_ended(api, run_id, timeout=60)
    assert events[-1]["data"]["status"] == "succeeded"
    (made,) = [e for e in events if e["type"] == "node_execute_after_data" and e["data"]["node_id"] == "make"]
    assert set(made["data"]["output"]) == {"$blob"}  # the event (as served and published) holds the reference
    state = await api.get(f"/v1/runs/{run_id}/state", params={"at_seq": made["seq"]})
    assert state.status_code == 200
    body = state.json()
    assert body["nodes"]["make"]["output"] == big_text(BIG)
    assert body["nodes"]["make"]["output_sha256"] == made["data"]["output_sha256"]
    assert body["nodes"]["measure"]["inputs"]["nodes"]["make"] == big_text(BIG)
    latest = (await api.get(f"/v1/runs/{run_id}/state")).json()
    assert latest["nodes"]["measure"]["output"] == expected(BIG)
    audit = (await api.get(f"/v1/runs/{run_id}/audit")).json()
    assert audit["ok"] is True, audit["problems"]
