"""``serve --processes N``: one listening socket, N ``flowledger serve`` processes sharing it.

Each process is a whole service (its own event loop, pool, worker, relay and projection
runners); the ones that must be single (the relay, each projection's runner) already elect
themselves across processes and instances with PostgreSQL advisory locks, and runs are
claimed with ``FOR UPDATE SKIP LOCKED``, so N processes behave as N instances on one port.

The parent only supervises, with the standard process model of pre-fork servers (bind once,
hand the socket to the children, restart a child that dies, forward Ctrl-C):
- it starts the embedded PostgreSQL and NATS when no URL is configured, so that every
  child uses the same servers (and stops them last);
- it binds ``--host``/``--port`` and passes the socket to each child (``--listen-fd``);
- the first child starts alone (it applies migrations and writes the admin key), the others
  once it is ready;
- a child that exits while the service runs is started again (after 1 s; a child that
  fails at start-up, exit code 2, ends the service with its message);
- SIGINT/SIGTERM are forwarded to the children, which shut down gracefully; after 20 s
  the remaining ones are killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx
import structlog

from service.infra.embedded import EmbeddedServers

log = structlog.get_logger(__name__)

LISTEN_FD_OPTION = "--listen-fd"
STOP_GRACE_S = 20.0
RESTART_DELAY_S = 1.0
STARTUP_EXIT_CODE = 2
"""What ``serve`` exits with when it cannot start (a bad setting, a server it cannot reach)."""


def default_processes() -> int:
    """One process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every child accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts, watches and stops the ``serve`` children."""

    def __init__(self, argv: Sequence[str], sock: socket.socket, env: dict[str, str], processes: int) -> None:
        self.argv = list(argv)
        self.sock = sock
        self.env = env
        self.processes = processes
        self.children: list[Child] = []
        self.stopping = False
        self.failure: str | None = None

    def _spawn(self, index: int) -> Child:
        fd = self.sock.fileno()
        command = [*self.argv, LISTEN_FD_OPTION, str(fd), "--processes", "1"]
        env = {**self.env, "FLOWLEDGER_PROCESS_INDEX": str(index)}
        # Its own session: Ctrl-C reaches the parent only, which forwards one SIGINT (a second one
        # would make a child skip its graceful shutdown); a child watches for its parent's death.
        proc = subprocess.Popen(
            command, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL, start_new_session=True
        )
        return Child(index, proc)

    def _wait_ready(self, child: Child, url: str, timeout_s: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stopping:
            if child.proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return True
            time.sleep(0.1)
        return False

    def run(self, ready_url: str) -> int:
        """Start every child, keep them running until a signal, stop them; the exit code."""
        first = self._spawn(0)
        self.children.append(first)
        if not self._wait_ready(first, ready_url):
            if not self.stopping:
                code = first.proc.wait()
                self._stop_all()
                return code or STARTUP_EXIT_CODE
        for index in range(1, self.processes):
            if self.stopping:
                break
            self.children.append(self._spawn(index))
        while not self.stopping:
            time.sleep(0.2)
            for i, child in enumerate(self.children):
                exited = child.proc.poll()
                if exited is None or self.stopping:
                    continue
                code = exited
                if code == STARTUP_EXIT_CODE and time.monotonic() - child.started_at < 60:
                    self.failure = f"process {child.index} could not start (exit code {code})"
                    self.stopping = True
                    break
                log.warning(
                    "process_exited", index=child.index, pid=child.proc.pid, exit_code=code, restart=True
                )
                time.sleep(RESTART_DELAY_S)
                self.children[i] = self._spawn(child.index)
        self._stop_all()
        if self.failure:
            click.echo(f"flowledger: {self.failure}", err=True)
            return STARTUP_EXIT_CODE
        return 0

    def request_stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()


def supervise(
    *, processes: int, host: str, port: int, home: Path, database_url: str | None, nats_url: str | None
) -> int:
    """Run ``processes`` copies of this ``serve`` command on one socket; returns the exit code."""
    embedded = EmbeddedServers(home)
    sock = bind(host, port)
    supervisor: Supervisor | None = None
    try:
        env = dict(os.environ)
        env["FLOWLEDGER_DATABASE_URL"] = embedded.postgres_url(database_url)
        env["FLOWLEDGER_NATS_URL"] = embedded.nats_url(nats_url)
        supervisor = Supervisor(_own_argv(), sock, env, processes)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, supervisor.request_stop)
        shown = f"[{host}]" if ":" in host else host
        log.info("processes_starting", url=f"http://{shown}:{port}", processes=processes, pid=os.getpid())
        return supervisor.run(f"http://{shown}:{port}/ready")
    finally:
        sock.close()
        embedded.stop()


def _own_argv() -> list[str]:
    """How to start this same command again: the ``flowledger`` script with its arguments."""
    script = Path(sys.argv[0])
    if script.name in ("__main__.py", "-c") or not script.exists():
        return [sys.executable, "-m", "service.cli.main", *sys.argv[1:]]
    return [str(script), *sys.argv[1:]]


def watch_parent(parent_pid: int) -> None:
    """In a child: SIGINT itself (a graceful stop) when the supervising parent is gone, e.g.
    killed with -9, so no child outlives the service it belonged to. Runs in a daemon thread."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
