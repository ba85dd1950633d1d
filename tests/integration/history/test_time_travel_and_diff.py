"""Time travel, run diff and republish against a real engine, PostgreSQL, NATS and HTTP server.

Time travel is pinned against the engine itself: a ``RunExecutor`` subclass records
``self.state`` after every ``_fold``. The engine folds exactly once per append batch
(``_fold`` gets the batch's stored events), so for the last seq of every batch the
engine's live state exists and ``state_at`` must equal it. For a seq inside a batch
(e.g. ``node_execute_after`` before its ``_after_data``) the engine never held a
state; there the state must be the fold of the prefix, and folding the rest of the
batch onto it must give the engine's state at the batch's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from typing import Any

import asyncpg
import click
import httpx
import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from projections.run_state import NodeState, RunState, fold
from schemas.codec import json_encoder, raw_envelope_decoder
from schemas.envelope import EventEnvelope, RawEnvelope
from schemas.events import NodeError, OutputMarker
from schemas.workflow import WorkflowSpec
from service.cli.client import console
from service.cli.history import diff as diff_command
from service.cli.history import republish_command, show_state
from service.config import Settings
from service.domain.run_diff import diff_runs, json_diff
from service.domain.workflow_spec import WorkflowGraph, build_graph
from service.engine.control import UnknownRun, request_cancel
from service.engine.executor import RunExecutor
from service.followers.republish import republish
from service.history.time_travel import fold_at, state_at, view_of
from service.infra.nats import HEADER_TRIMMED, connect_nats
from tests.helpers.engine_harness import engine_on
from tests.helpers.servers import Servers
from tests.helpers.serving import auth_headers, cli_env
from tests.helpers.strategies import random_runs

# -- time travel == the engine's live state ---------------------------------------------------------


class RecordingExecutor(RunExecutor):
    """Records the live state right after each fold (= each append batch, or each catch-up)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.live: dict[int, RunState] = {}
        self.batches: list[list[int]] = []

    def _fold(self, stored: list[RawEnvelope]) -> None:
        super()._fold(stored)
        if stored:
            self.live[stored[-1].seq] = self.state
            self.batches.append([e.seq for e in stored])


def _check_time_travel(events: list[EventEnvelope], graph: WorkflowGraph, ex: RecordingExecutor) -> None:
    last = events[-1].seq
    # Every event was folded by the engine exactly once, in order.
    assert [s for batch in ex.batches for s in batch] == list(range(last + 1))
    for batch in ex.batches:
        end = batch[-1]
        live = ex.live[end]
        for n in batch:
            state = fold_at(events, n)
            assert state.seq == n
            if n == end:
                assert state == live, f"state_at({n}) differs from the engine's live state"
                assert state_at(events, n, graph) == view_of(live, graph, events[n], last)
            else:
                assert state == fold(events[: n + 1])
                assert fold(events[n + 1 : end + 1], state) == live
    # "ready" is what the engine did next: a pending node that is ready at a batch end is next
    # mentioned by its own start (or by a skip, when a failure elsewhere halts the run first).
    for end in ex.live:
        view = state_at(events, end, graph)
        for node_id in view.ready:
            if view.nodes[node_id].status != "pending":
                continue  # running/retry_wait: recovery would restart it; the live task goes on
            later = [e.type for e in events[end + 1 :] if getattr(e.data, "node_id", None) == node_id]
            assert later and later[0] in ("node_execute_before", "node_skipped"), (node_id, end, later)
    final = state_at(events, None, graph)
    assert final.status == ex.state.status and final.ready == [] and final.at_seq == last


@settings(max_examples=30)
@given(case=random_runs())
async def test_state_at_every_seq_is_the_engines_live_state(
    pool: asyncpg.Pool, schema: str, case: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    spec_dict, inputs = case
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(spec_dict)
        run_id = await engine.start("random", inputs)
        executor = await engine.claim_executor(run_id, spec_dict, executor_class=RecordingExecutor)
        graph = executor.graph
        await asyncio.wait_for(executor.execute(), 30)
        events = await engine.events(run_id)
    _check_time_travel(events, graph, executor)


async def test_state_at_follows_a_cancel_appended_by_someone_else(pool: asyncpg.Pool, schema: str) -> None:
    """A cancel request is appended by the API, not the engine: the engine folds it on catch-up."""
    spec = {
        "id": "tt-cancel",
        # Shorter than the 2 s after which a waiting run is parked: the executor stays live.
        "nodes": [{"id": "slow", "type": "delay", "config": {"ms": 1900}}, {"id": "after", "type": "noop"}],
        "edges": [{"from": "slow", "to": "after"}],
    }
    async with engine_on(pool, schema, worker=False) as engine:
        await engine.register(spec)
        run_id = await engine.start("tt-cancel", {})
        executor = await engine.claim_executor(run_id, spec, executor_class=RecordingExecutor, node_slots=8)
        graph = executor.graph
        task = asyncio.create_task(executor.execute())
        await engine.wait_for(run_id, lambda es: any(e.type == "node_execute_before" for e in es))
        await request_cancel(engine.queue, run_id, "stop")
        await executor.refresh()  # what the worker does on the cancel notification
        await asyncio.wait_for(task, 10)
        events = await engine.events(run_id)
    assert events[-1].type == "run_cancelled"
    _check_time_travel(events, graph, executor)
    before = state_at(events, 2, graph)  # right after slow started
    assert before.nodes["slow"].status == "running" and before.ready == ["slow"]
    assert before.nodes["slow"].inputs == {"inputs": {}, "nodes": {}}
    assert before.nodes["after"].inputs is None and not before.nodes["after"].ready


# -- the HTTP routes and the CLI ---------------------------------------------------------------------


def _workflow(workflow_id: str, *, extra_node: bool = False) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"id": "score", "type": "transform", "config": {"expression": "{n: inputs.n, items: inputs.items}"}},
        {"id": "check", "type": "branch", "config": {"expression": "inputs.n > `10`"}},
        {"id": "big", "type": "transform", "config": {"expression": "{size: 'big', n: nodes.score.n}"}},
        {"id": "small", "type": "transform", "config": {"expression": "{size: 'small'}"}},
        {"id": "done", "type": "noop"},
    ]
    edges: list[dict[str, Any]] = [
        {"from": "score", "to": "check"},
        {"from": "check", "to": "big", "when": "true"},
        {"from": "check", "to": "small", "when": "false"},
        {"from": "big", "to": "done"},
        {"from": "small", "to": "done"},
    ]
    if extra_node:
        nodes.append({"id": "audit", "type": "noop"})
        edges.append({"from": "done", "to": "audit"})
    return {"id": workflow_id, "nodes": nodes, "edges": edges}


class _Page(msgspec.Struct):
    items: list[EventEnvelope]
    next_cursor: str | None


async def _run(
    api: httpx.AsyncClient, workflow_id: str, inputs: dict[str, Any]
) -> tuple[str, list[EventEnvelope]]:
    accepted = await api.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": inputs})
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    for _ in range(400):
        response = await api.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})
        page = msgspec.json.decode(response.content, type=_Page)
        if page.items and page.items[-1].type in ("run_finished", "run_cancelled"):
            return run_id, page.items
        await asyncio.sleep(0.025)
    raise AssertionError(f"run {run_id} did not end")


@pytest.fixture(scope="module")
async def runs(api: httpx.AsyncClient) -> dict[str, Any]:
    """Runs a and b: same inputs; c: other inputs; d: the next workflow version (one more node)."""
    wid = f"tt-{uuid.uuid4().hex[:8]}"
    spec = _workflow(wid)
    assert (await api.post("/v1/workflows", json=spec)).status_code == 201
    a = await _run(api, wid, {"n": 20, "items": [1, 2]})
    b = await _run(api, wid, {"n": 20, "items": [1, 2]})
    c = await _run(api, wid, {"n": 5, "items": [1, 2, 3]})
    assert (await api.post("/v1/workflows", json=_workflow(wid, extra_node=True))).status_code == 201
    d = await _run(api, wid, {"n": 20, "items": [1, 2]})
    return {"a": a, "b": b, "c": c, "d": d, "graph": build_graph(msgspec.convert(spec, WorkflowSpec))}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def test_state_route_serves_state_at_for_every_seq(
    api: httpx.AsyncClient, runs: dict[str, Any]
) -> None:
    run_id, events = runs["a"]
    graph = runs["graph"]
    for event in events:
        response = await api.get(f"/v1/runs/{run_id}/state", params={"at_seq": event.seq})
        assert response.status_code == 200, response.text
        expected = msgspec.json.decode(msgspec.json.encode(state_at(events, event.seq, graph)))
        assert response.json() == expected
    latest = (await api.get(f"/v1/runs/{run_id}/state")).json()
    assert latest["at_seq"] == events[-1].seq and latest["status"] == "succeeded" and latest["ready"] == []
    queued = (await api.get(f"/v1/runs/{run_id}/state", params={"at_seq": 0})).json()
    assert queued["status"] == "queued" and queued["ready"] == ["score"]
    assert queued["nodes"]["score"]["inputs"] == {"inputs": {"n": 20, "items": [1, 2]}, "nodes": {}}
    assert latest["nodes"]["big"]["inputs"] == {
        "inputs": {"n": 20, "items": [1, 2]},
        "nodes": {"check": {"branch": "true"}, "score": {"n": 20, "items": [1, 2]}},
    }
    assert latest["nodes"]["small"]["status"] == "skipped" and latest["nodes"]["small"]["inputs"] is None


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/v1/runs/{a}/state", {"at_seq": 10_000}, 400, "between 0 and {last}"),
        ("/v1/runs/{a}/state", {"at_seq": -1}, 400, "between 0 and {last}"),
        ("/v1/runs/{a}/state", {"at_seq": "x"}, 400, "at_seq"),
        ("/v1/runs/{unknown}/state", {}, 404, "no run {unknown}"),
        ("/v1/runs/{unknown}/diff/{a}", {}, 404, "no run {unknown}"),
        ("/v1/runs/{a}/diff/{unknown}", {}, 404, "no run {unknown}"),
    ],
)
async def test_history_route_errors_are_problem_details(
    api: httpx.AsyncClient,
    runs: dict[str, Any],
    path: str,
    params: dict[str, Any],
    status: int,
    says: str,
) -> None:
    run_id, events = runs["a"]
    names = {"a": run_id, "unknown": str(uuid.uuid4()), "last": events[-1].seq}
    body = _problem(await api.get(path.format(**names), params=params), status)
    assert says.format(**names) in body["detail"], body
    if status == 400 and "between" in says:
        assert body["valid_range"] == [0, events[-1].seq]


async def test_same_inputs_diff_equal_other_inputs_change_outputs_and_branch(
    api: httpx.AsyncClient, runs: dict[str, Any]
) -> None:
    (a, _), (b, _), (c, _), (d, _) = runs["a"], runs["b"], runs["c"], runs["d"]

    same = (await api.get(f"/v1/runs/{a}/diff/{b}")).json()
    assert same["equal"] is True and same["inputs_equal"] is True
    assert same["nodes_changed"] == 0 and same["nodes_only_a"] == same["nodes_only_b"] == 0
    by_node = {n["node_id"]: n for n in same["nodes"]}
    assert [n["node_id"] for n in same["nodes"]] == ["score", "check", "big", "small", "done"]
    for node_id in ("score", "check", "big", "done"):
        assert by_node[node_id]["output"] == "equal" and by_node[node_id]["equal"], by_node[node_id]
    assert by_node["small"]["output"] == "none" and by_node["small"]["status_a"] == "skipped"
    assert by_node["check"]["branch_a"] == by_node["check"]["branch_b"] == "true"

    other = (await api.get(f"/v1/runs/{a}/diff/{c}")).json()
    assert other["equal"] is False and other["inputs_equal"] is False
    nodes = {n["node_id"]: n for n in other["nodes"]}
    score = nodes["score"]
    assert score["output"] == "changed" and score["output_sha256_a"] != score["output_sha256_b"]
    assert {(ch["op"], ch["path"], ch["a"], ch["b"]) for ch in score["json_changes"]} == {
        ("changed", "$.n", 20, 5),
        ("added", "$.items[2]", None, 3),
    }
    check = nodes["check"]
    assert (check["branch_a"], check["branch_b"], check["branch_changed"]) == ("true", "false", True)
    assert (nodes["big"]["status_a"], nodes["big"]["status_b"], nodes["big"]["output"]) == (
        "succeeded",
        "skipped",
        "only_a",
    )
    assert (nodes["small"]["status_a"], nodes["small"]["status_b"], nodes["small"]["output"]) == (
        "skipped",
        "succeeded",
        "only_b",
    )
    assert nodes["done"]["output"] == "equal"  # noop: null either way
    assert other["duration_ms_a"] is not None and other["duration_change_ms"] is not None

    versions = (await api.get(f"/v1/runs/{a}/diff/{d}")).json()
    assert versions["workflow_version_a"] != versions["workflow_version_b"]
    audit = next(n for n in versions["nodes"] if n["node_id"] == "audit")
    assert audit["presence"] == "only_b" and audit["status_b"] == "succeeded" and audit["status_a"] is None
    assert versions["nodes_only_b"] == 1 and versions["equal"] is False


@click.group()
@click.option("--api-url")
@click.option("--token", envvar="FLOWLEDGER_TOKEN")
def _cli(api_url: str, token: str | None) -> None:
    """Stands in for the flowledger group: the client commands read --api-url from the root."""


_cli.add_command(diff_command)


async def test_cli_diff_and_show_state(api: httpx.AsyncClient, runs: dict[str, Any]) -> None:
    (a, events), (b, _), (c, _) = runs["a"], runs["b"], runs["c"]
    base = str(api.base_url)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(_cli, ["--api-url", base, "diff", *args], env=cli_env(api))

    # The CLI is synchronous and the server runs on this loop: call it from a thread.
    equal = await asyncio.to_thread(invoke, a, b)
    assert equal.exit_code == 0, equal.output
    assert "runs are equal" in equal.output and "5 equal, 0 changed" in equal.output
    changed = await asyncio.to_thread(invoke, a, c)
    assert changed.exit_code == 0, changed.output
    assert "runs differ" in changed.output and "~ $.n: 20 → 5" in changed.output
    assert "+ $.items[2] = 3" in changed.output
    missing = await asyncio.to_thread(invoke, a, str(uuid.uuid4()))
    assert missing.exit_code == 1 and "404" in missing.output

    def state(at_seq: int | None) -> tuple[dict[str, Any], str]:
        with httpx.Client(base_url=base, headers=auth_headers(api)) as client, console.capture() as captured:
            view = show_state(client, a, at_seq)
        return view, captured.get()

    view, text = await asyncio.to_thread(state, 0)
    assert view["at_seq"] == 0 and "ready to run next: score" in text and "run_queued" in text
    view, text = await asyncio.to_thread(state, None)
    assert view["at_seq"] == events[-1].seq and "succeeded" in text and "ready to run next" not in text


# -- republish ---------------------------------------------------------------------------------------


async def _collect(nc: NATS, subject: str) -> tuple[list[Msg], Any]:
    received: list[Msg] = []

    async def on_message(msg: Msg) -> None:
        received.append(msg)

    sub = await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    return received, sub


async def _wait_count(received: list[Msg], count: int) -> None:
    for _ in range(200):
        if len(received) >= count:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # anything beyond `count` would arrive now


async def _live_stream_messages(nc: NATS) -> int | None:
    try:
        return int((await nc.jetstream().stream_info("FLOWLEDGER")).state.messages)
    except NotFoundError:
        return None


async def test_republish_sends_the_run_in_order_to_replay_subjects_only(
    pool: asyncpg.Pool, schema: str, nats_url: str
) -> None:
    text = "x" * 3000  # makes run_queued and the transform's output too large for a 4.6 KB limit
    spec = {
        "id": "replayed",
        "nodes": [
            {"id": "echo", "type": "transform", "config": {"expression": "inputs.text"}},
            {"id": "end", "type": "noop"},
        ],
        "edges": [{"from": "echo", "to": "end"}],
    }
    subscriber = await connect_nats(nats_url, name="replay-subscriber")
    publisher = await connect_nats(nats_url, name="replay-publisher")
    try:
        async with engine_on(pool, schema) as engine:
            await engine.register(spec)
            run_id = await engine.start("replayed", {"text": text})
            await engine.wait_ended(run_id)
            stored = await engine.store.read_run(run_id)
            live_before = await _live_stream_messages(subscriber)
            received, sub = await _collect(subscriber, "flowledger.replay.>")
            try:
                count = await republish(engine.store, publisher, run_id)
                await _wait_count(received, count)
                small, small_sub = await _collect(subscriber, "smallreplay.>")
                await republish(engine.store, publisher, run_id, "smallreplay", max_payload=4096 + 1500)
                await _wait_count(small, count)
                await small_sub.unsubscribe()
            finally:
                await sub.unsubscribe()
            with pytest.raises(ValueError, match="overlaps the live event subjects"):
                await republish(engine.store, publisher, run_id, "flowledger.events")
            with pytest.raises(UnknownRun):
                await republish(engine.store, publisher, uuid.uuid4())
            installation = await pool.fetchval(f'SELECT id FROM "{schema}".installation')
        assert await _live_stream_messages(subscriber) == live_before  # the live stream got nothing
    finally:
        await subscriber.close()
        await publisher.close()

    assert count == len(stored)
    assert [m.subject for m in received] == [
        f"flowledger.replay.default.replayed.{run_id}.{e.type}" for e in stored
    ]
    for msg, event in zip(received, stored, strict=True):
        headers = msg.headers or {}
        assert headers["Flowledger-Seq"] == str(event.seq)
        assert headers["Flowledger-Global-Position"] == str(event.global_position)
        assert headers["Flowledger-Replay"] == "true"
        assert headers["Flowledger-Source"] == f"{installation}/{schema}"
        assert "Nats-Msg-Id" not in headers and HEADER_TRIMMED not in headers
        assert msg.data == json_encoder.encode(event)  # the envelope exactly as stored

    trimmed = {m.subject.rsplit(".", 1)[1]: m for m in small if (m.headers or {}).get(HEADER_TRIMMED)}
    assert set(trimmed) == {"run_queued", "node_execute_after_data"}
    for msg in trimmed.values():
        envelope = raw_envelope_decoder.decode(msg.data)
        original = next(e for e in stored if e.seq == envelope.seq)
        marker = msgspec.json.decode(envelope.data)
        assert marker["trimmed"] is True and marker["size_bytes"] == len(original.data)
        assert envelope.hash == original.hash


async def test_republish_cli_function_uses_direct_connections(
    api: httpx.AsyncClient, runs: dict[str, Any], servers: Servers
) -> None:
    run_id, events = runs["a"]
    token = uuid.uuid4().hex[:8]
    settings = Settings(
        database_url=servers.database_url,
        nats_url=servers.nats_url,
        nats_stream=f"R_{token}",  # running() ensures the configured stream: give it one of its own
        nats_subject_prefix=f"r{token}.events",
    )
    nc = await connect_nats(servers.nats_url)
    try:
        received, sub = await _collect(nc, f"r{token}.replay.>")
        await asyncio.to_thread(republish_command, settings, run_id, f"r{token}.replay")
        await _wait_count(received, len(events))
        await sub.unsubscribe()
        assert [int((m.headers or {})["Flowledger-Seq"]) for m in received] == [e.seq for e in events]
        assert all(m.subject.startswith(f"r{token}.replay.default.") for m in received)
        stream = await nc.jetstream().stream_info(f"R_{token}")
        assert stream.state.messages == 0
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(f"R_{token}")
        await nc.close()
    with pytest.raises(click.BadParameter):
        republish_command(settings, "not-a-uuid")


# -- diff_runs on constructed states (pure) ----------------------------------------------------------


def _state(run_id: str, **nodes: NodeState) -> RunState:
    return RunState(run_id=run_id, workflow_id="w", status="succeeded", nodes=nodes)


def _done(node_id: str, output: Any, **extra: Any) -> NodeState:
    encoded = msgspec.json.encode(output)
    return NodeState(
        node_id,
        node_type="transform",
        status="succeeded",
        attempts=1,
        output=output,
        output_bytes=len(encoded),
        output_sha256=hashlib.sha256(encoded).hexdigest(),
        **extra,
    )


def test_diff_compares_canonical_json_not_key_order_or_python_equality() -> None:
    a = _state("a", x=_done("x", {"p": 1, "q": [1, 2]}), y=_done("y", 1), z=_done("z", True))
    b = _state("b", x=_done("x", {"q": [1, 2], "p": 1}), y=_done("y", 1.0), z=_done("z", 1))
    result = {n.node_id: n for n in diff_runs(a, b, None, None).nodes}
    assert result["x"].output == "equal" and result["x"].equal  # same JSON, other key order
    assert result["y"].output == "changed" and [(c.op, c.path) for c in result["y"].json_changes or []] == [
        ("changed", "$")
    ]
    assert result["z"].output == "changed"  # true is not 1 in JSON


def test_diff_errors_markers_and_large_outputs() -> None:
    failed = NodeState("f", node_type="fail", status="failed", attempts=1)
    boom = msgspec.structs.replace(failed, error=NodeError(kind="fail", message="boom"))
    bang = msgspec.structs.replace(failed, error=NodeError(kind="timeout", message="slow"))
    marker = OutputMarker(size_bytes=10_000_000, sha256="ab" * 32)
    big = NodeState(
        "m", status="succeeded", attempts=1, output_bytes=10_000_000, output_sha256="ab" * 32, marker=marker
    )
    other_big = msgspec.structs.replace(
        big, output_sha256="cd" * 32, marker=msgspec.structs.replace(marker, sha256="cd" * 32)
    )
    large = _done("l", ["v" * 70_000])
    larger = _done("l", ["w" * 70_000])
    a = _state("a", f=boom, m=big, l=large)
    b = _state("b", f=bang, m=other_big, l=larger)
    result = {n.node_id: n for n in diff_runs(a, b, None, None).nodes}
    assert not result["f"].equal and result["f"].error_b == "timeout: slow"
    assert result["m"].output == "changed" and result["m"].json_changes is None
    assert result["l"].output == "changed" and result["l"].json_changes is None  # >= 64 KiB: hash only
    same = {n.node_id: n for n in diff_runs(a, a, None, None).nodes}
    assert all(n.equal for n in same.values()) and same["m"].output == "equal"


def test_json_diff_lists_paths_and_stops_at_the_limit() -> None:
    changes, truncated = json_diff({"a": {"b c": 1}, "k": [1]}, {"a": {"b c": 2}, "n": None, "k": []})
    assert [(c.op, c.path) for c in changes] == [
        ("changed", '$.a["b c"]'),
        ("removed", "$.k[0]"),
        ("added", "$.n"),
    ] and not truncated
    many, truncated = json_diff(list(range(10)), list(range(1, 11)), limit=3)
    assert len(many) == 3 and truncated
