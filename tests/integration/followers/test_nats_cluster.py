"""Flowledger on a real 3-node NATS cluster (``infra/nats/cluster/`` on free loopback ports):
a seed list naming all three nodes, an R3 stream, and the loss of a node while runs are relayed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from service.followers.relay import Relay
from service.infra.nats import (
    StreamReplicasUnsupported,
    connect_nats,
    ensure_stream,
    stream_config,
)
from service.store.event_store import EventStore
from tests.helpers.nats_cluster import NatsCluster, nats_cluster
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.relay import assert_exactly_once_in_order, stream_messages, wait_relayed, write_runs
from tests.helpers.servers import Servers, StreamTarget
from tests.helpers.serving import free_port, serve_app


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats-cluster")) as started:
        yield started


@pytest.fixture
async def cluster_client(cluster: NatsCluster) -> AsyncIterator[NATS]:
    nc = await connect_nats(cluster.seed_url, name="flowledger-test-cluster")
    yield nc
    await nc.close()


def _target() -> StreamTarget:
    token = uuid.uuid4().hex[:10]
    return StreamTarget(name=f"C_{token}", subject_prefix=f"c{token}.events")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_the_shipped_cluster_configs_sync_every_write_before_acknowledging_it(cluster: NatsCluster) -> None:
    """``infra/nats/cluster/*.conf`` (what ``cluster`` runs): fsync before each ack (Jepsen's
    NATS 2.12.1 analysis: the default 2-minute sync loses acknowledged writes), one cluster."""
    for node in cluster.nodes:
        jsz = cluster.jsz(node.name)
        assert jsz["config"]["sync_always"] is True, node.name
        assert jsz["meta_cluster"]["name"] == "flowledger"
        assert jsz["meta_cluster"]["cluster_size"] == 3


async def _assert_r3(nc: NATS, stream: str) -> None:
    """R3 in its config, and (once the new replicas have caught up: a scaled stream elects a
    leader anew) a leader and two current followers, one per node."""
    assert (await nc.jetstream().stream_info(stream)).config.num_replicas == 3, stream
    await _wait_all_replicas_current(nc, stream)
    info = await nc.jetstream().stream_info(stream)
    assert info.cluster is not None and info.cluster.leader in {"n1", "n2", "n3"}
    followers = {peer.name for peer in info.cluster.replicas or []}
    assert followers | {info.cluster.leader} == {"n1", "n2", "n3"}


async def test_serve_creates_an_r3_stream_from_a_seed_list_and_scales_an_r1_one(
    cluster: NatsCluster, cluster_client: NATS, servers: Servers
) -> None:
    js = cluster_client.jetstream()
    # serve_app deletes its stream on exit: everything is checked while the apps run.
    on_cluster = Servers(servers.database_url, cluster.seed_url, servers.home)
    fresh, existing = _target(), _target()
    await ensure_stream(js, stream_config(existing.name, existing.subject_prefix, replicas=1))
    assert (await js.stream_info(existing.name)).config.num_replicas == 1

    def app(target: StreamTarget, **settings: object) -> contextlib.AbstractAsyncContextManager[object]:
        return serve_app(
            on_cluster,
            own_database=True,
            nats_stream=target.name,
            nats_subject_prefix=target.subject_prefix,
            **settings,
        )

    async with app(existing, nats_replicas=3):
        await _assert_r3(cluster_client, existing.name)  # scaled R1 -> R3 in place
    async with app(fresh, nats_replicas=3):
        await _assert_r3(cluster_client, fresh.name)  # created as R3
        # An instance started without the setting leaves the R3 stream as it is.
        async with app(fresh):
            await _assert_r3(cluster_client, fresh.name)


async def test_runs_are_relayed_exactly_once_while_the_stream_leader_is_down(
    cluster: NatsCluster, cluster_client: NATS, store: EventStore
) -> None:
    target = _target()
    js = cluster_client.jetstream()
    await ensure_stream(js, stream_config(target.name, target.subject_prefix, replicas=3))
    relay = Relay(store, cluster_client, stream=target.name, subject_prefix=target.subject_prefix)
    task = asyncio.create_task(relay.run())
    killed: str | None = None
    try:
        events = await write_runs(store, runs=40, events_per_run=5)
        await wait_relayed([relay], store)

        info = await js.stream_info(target.name)
        assert info.cluster is not None and info.cluster.leader is not None
        killed = info.cluster.leader  # the hardest node to lose: a new leader must be elected
        await asyncio.to_thread(cluster.kill, killed)
        # Runs keep being written and relayed (the log is the outbox) while the node is down.
        writer = asyncio.create_task(write_runs(store, runs=40, events_per_run=5))
        events += await writer
        await wait_relayed([relay], store, timeout=45)
        info = await js.stream_info(target.name)
        assert info.cluster is not None and info.cluster.leader not in (None, killed)
        assert info.state.messages == len(events)
        await _seed_list_reaches_the_cluster_while(killed, cluster)

        await asyncio.to_thread(cluster.restart, killed)
        killed = None
        events += await write_runs(store, runs=40, events_per_run=5)
        await wait_relayed([relay], store, timeout=45)
    finally:
        await _stop(task)
        if killed is not None:  # leave the module's cluster whole for the next test
            await asyncio.to_thread(cluster.restart, killed)

    messages = await stream_messages(cluster_client, target.name)
    ids = [headers["Nats-Msg-Id"] for _subject, headers, _data in messages]
    assert len(ids) == len(set(ids)) == len(events) == 600
    assert set(ids) == {str(e.event_id) for e in events}
    assert_exactly_once_in_order(messages, events, target.subject_prefix)
    # The restarted node caught up: all three replicas hold every message again.
    await _wait_all_replicas_current(cluster_client, target.name)


async def _seed_list_reaches_the_cluster_while(down: str, cluster: NatsCluster) -> None:
    """With node ``down`` dead, a seed list naming it still connects (the client picks its
    servers in random order: tried several times), and so does ``flowledger tail``."""
    await asyncio.to_thread(cluster.wait_healthy)  # the survivors agree on a JetStream leader
    for _ in range(5):
        nc = await connect_nats(cluster.seed_url, connect_timeout=2)
        assert nc.connected_url is not None and nc.connected_url.port != cluster.node(down).client_port
        await nc.close()
    tail = await asyncio.to_thread(
        _flowledger,
        Path(cluster.root),
        "tail",
        timeout=30,
        FLOWLEDGER_NATS_URL=cluster.seed_url,
        FLOWLEDGER_NATS_STREAM="NO_SUCH_STREAM",
    )
    assert "stream NO_SUCH_STREAM does not exist" in _one_clear_line(tail), tail.stderr


async def test_the_relay_waits_out_a_lost_quorum_and_catches_up(
    cluster: NatsCluster, cluster_client: NATS, store: EventStore
) -> None:
    """Two of three nodes down: the R3 stream has no quorum, nothing is published meanwhile, and
    once one node is back every event written meanwhile is relayed exactly once, in order."""
    target = _target()
    js = cluster_client.jetstream()
    await ensure_stream(js, stream_config(target.name, target.subject_prefix, replicas=3))
    await _wait_all_replicas_current(cluster_client, target.name)
    relay = Relay(store, cluster_client, stream=target.name, subject_prefix=target.subject_prefix)
    task = asyncio.create_task(relay.run())
    down: list[str] = []
    try:
        events = await write_runs(store, runs=10, events_per_run=5)
        await wait_relayed([relay], store)
        published = relay.status.published
        info = await js.stream_info(target.name)
        assert info.cluster is not None and info.cluster.leader is not None
        # Keep the node the test's client is on; lose the other two (the leader among them).
        on = cluster_client.connected_url
        assert on is not None
        kept = next(n.name for n in cluster.nodes if n.client_port == on.port)
        down = [n.name for n in cluster.nodes if n.name != kept]
        for name in down:
            await asyncio.to_thread(cluster.kill, name)
        events += await write_runs(store, runs=10, events_per_run=5)
        await asyncio.sleep(3)
        assert relay.status.published == published  # no quorum: nothing stored
        back = down.pop()
        await asyncio.to_thread(cluster.restart, back)
        await wait_relayed([relay], store, timeout=45)
    finally:
        await _stop(task)
        for name in down:
            await asyncio.to_thread(cluster.restart, name)
    messages = await stream_messages(cluster_client, target.name)
    assert len(messages) == len(events) == 100
    assert_exactly_once_in_order(messages, events, target.subject_prefix)
    await _wait_all_replicas_current(cluster_client, target.name)


async def _wait_all_replicas_current(nc: NATS, stream: str, timeout: float = 30.0) -> None:
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await js.stream_info(stream)
        peers = (info.cluster.replicas or []) if info.cluster else []
        leader = info.cluster.leader if info.cluster else None
        if leader and len(peers) == 2 and all(p.current and not p.offline and not p.lag for p in peers):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"replicas of {stream} not current: {info.cluster}")
        await asyncio.sleep(0.2)


async def test_replicas_above_one_on_a_single_server_fail_clearly(nats_client: NATS) -> None:
    """``nats_client``: the session's one non-clustered server."""
    js = nats_client.jetstream()
    target = _target()
    with pytest.raises(StreamReplicasUnsupported, match="not part of a cluster"):
        await ensure_stream(js, stream_config(target.name, target.subject_prefix, replicas=3))
    # An existing R1 stream is not scaled either, and is left as it was.
    await ensure_stream(js, stream_config(target.name, target.subject_prefix, replicas=1))
    try:
        with pytest.raises(StreamReplicasUnsupported, match="FLOWLEDGER_NATS_REPLICAS=1"):
            await ensure_stream(js, stream_config(target.name, target.subject_prefix, replicas=3))
        assert (await js.stream_info(target.name)).config.num_replicas == 1
    finally:
        await js.delete_stream(target.name)


def _flowledger(home: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    return subprocess.run(
        [FLOWLEDGER, *args],
        env={
            **clean,
            "FLOWLEDGER_HOME": str(home),
            "FLOWLEDGER_LOG_FORMAT": "json",
            "FLOWLEDGER_PROCESSES": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_serve_with_replicas_on_a_single_server_stops_with_one_line(tmp_path: Path, servers: Servers) -> None:
    stream = _target()
    proc = _flowledger(
        tmp_path,
        "serve",
        "--port",
        str(free_port()),
        FLOWLEDGER_DATABASE_URL=servers.database_url,
        FLOWLEDGER_NATS_URL=servers.nats_url,
        FLOWLEDGER_NATS_REPLICAS="3",
        FLOWLEDGER_NATS_STREAM=stream.name,
        FLOWLEDGER_NATS_SUBJECT_PREFIX=stream.subject_prefix,
    )
    line = _one_clear_line(proc)
    assert line.startswith(f"flowledger: stream {stream.name} asks for 3 replicas"), proc.stderr
    assert "not part of a cluster" in line


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["tail"]])
def test_a_malformed_seed_list_stops_a_command_with_one_line(tmp_path: Path, command: list[str]) -> None:
    proc = _flowledger(
        tmp_path,
        *command,
        timeout=30,
        FLOWLEDGER_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        FLOWLEDGER_NATS_URL="nats://bob:hunter2@127.0.0.1:14222,127.0.0.1:notaport,nats://127.0.0.1:14224",
    )
    line = _one_clear_line(proc)
    assert line.startswith("flowledger: invalid NATS URL"), proc.stderr
    assert "(entry 2 of 3)" in line
    assert "hunter2" not in proc.stderr + proc.stdout


async def _ready(client: object, want: int, timeout: float = 45.0) -> dict[str, object]:
    """Poll ``/ready`` until it answers ``want``; returns its readiness document."""
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await client.get("/ready")
        body = answer.json()
        if answer.status_code == want:
            return body if want == 200 else body["readiness"] | {"detail": body["detail"]}
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/ready stayed {answer.status_code}: {body}")
        await asyncio.sleep(0.3)


async def test_ready_reports_the_stream_and_refuses_while_it_has_no_quorum(
    cluster: NatsCluster, cluster_client: NATS, servers: Servers
) -> None:
    target = _target()
    on_cluster = Servers(servers.database_url, cluster.seed_url, servers.home)
    down: list[str] = []
    async with serve_app(
        on_cluster,
        own_database=True,
        nats_stream=target.name,
        nats_subject_prefix=target.subject_prefix,
        nats_replicas=3,
    ) as client:
        try:
            await _wait_all_replicas_current(cluster_client, target.name)
            ready = await _ready(client, 200)
            stream = ready["stream"]
            assert isinstance(stream, dict)
            assert stream["name"] == target.name and stream["replicas"] == 3
            assert stream["leader"] in {n.name for n in cluster.nodes}
            assert stream["replicas_current"] == 3
            # Two of three nodes gone: the stream has no quorum and answers nothing.
            on = cluster_client.connected_url
            assert on is not None
            kept = next(n.name for n in cluster.nodes if n.client_port == on.port)
            down = [n.name for n in cluster.nodes if n.name != kept]
            for name in down:
                await asyncio.to_thread(cluster.kill, name)
            refused = await _ready(client, 503)
            assert refused["status"] == "unavailable"
            stream = refused["stream"]
            # Either nothing answers for the stream, or a server answers from what it last knew.
            assert stream is None or (isinstance(stream, dict) and stream["leader"] is None), stream
            # The instance's own connection may have been on a killed node (then it reconnects).
            detail = str(refused["detail"])
            assert f"stream {target.name}" in detail or "NATS is disconnected" in detail, detail
            for name in list(down):
                await asyncio.to_thread(cluster.restart, name)
                down.remove(name)
            assert (await _ready(client, 200))["stream"] is not None
        finally:
            for name in down:
                await asyncio.to_thread(cluster.restart, name)
