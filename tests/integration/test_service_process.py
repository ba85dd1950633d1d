"""The service as a user runs it: a real `flowledger serve` process, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers.paths import FLOWLEDGER
from tests.helpers.serving import free_port


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(FLOWLEDGER_HOME=str(home), FLOWLEDGER_LOG_FORMAT="json", FLOWLEDGER_PROCESSES="1", **extra)
    return env


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> list[int]:
    """Poll /ready until 200; returns every status code seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}")
        try:
            code = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code
            seen.append(code)
            if code == 200:
                return seen
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"/ready never answered 200 (saw {seen[-5:]})")


def _processes_of(home: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(home) in part for part in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _leftovers(home: Path, grace: float = 10.0) -> list[psutil.Process]:
    """Processes still mentioning ``home`` once ``grace`` seconds have passed."""
    deadline = time.monotonic() + grace
    while (found := _processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    proc.wait(timeout=30)


def test_embedded_default_starts_serves_and_stops_without_orphans(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    proc = subprocess.Popen(
        [FLOWLEDGER, "serve", "--port", str(port)],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(port, proc)
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert health == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/ready").json()
        assert ready["postgres"] and ready["nats"] and ready["migrations"]
        assert httpx.get(f"http://127.0.0.1:{port}/schema/openapi.json").status_code == 200
        missing = httpx.get(f"http://127.0.0.1:{port}/v1/nothing-here")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert "/v1/nothing-here" in missing.json()["detail"]
        assert _processes_of(home), "the embedded servers should be running under the temp home"
        # auth is on from the first start: the admin token is written for the client commands
        token_file = home / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        runs = f"http://127.0.0.1:{port}/v1/runs"
        assert httpx.get(runs).status_code == 401
        token = token_file.read_text().strip()
        assert httpx.get(runs, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        _interrupt(proc)
    assert proc.returncode == 0, proc.stdout.read().decode() if proc.stdout else ""
    assert _leftovers(home) == [], "postgres or nats-server outlived the service"

    # A second start reuses the data: migrations are not applied again. A live stream that
    # never ends by itself (/v1/stream) is open when Ctrl-C comes: the service ends it.
    proc = subprocess.Popen(
        [FLOWLEDGER, "serve", "--port", str(port)],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stream_ended = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {(home / 'admin.token').read_text().strip()}"}
        with httpx.stream(
            "GET", f"http://127.0.0.1:{port}/v1/stream", headers=headers, timeout=None
        ) as response:
            assert response.status_code == 200
            for _ in response.iter_bytes():
                pass
        stream_ended.set()

    listener = threading.Thread(target=listen, daemon=True)
    try:
        _wait_ready(port, proc)
        listener.start()
        time.sleep(0.5)  # connected and idle
    finally:
        _interrupt(proc)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "migration_applied" not in output
    assert stream_ended.wait(5), "the live stream was not ended by the shutdown"
    assert "graceful shutdown exceeded" not in output, "the stream was cut off by the timeout, not ended"
    assert _leftovers(home) == []


@pytest.mark.parametrize(
    ("args", "named", "secret"),
    [
        (
            [
                "--database-url",
                "postgresql://alice:s3cr3t@127.0.0.1:{port}/db",
                "--nats-url",
                "nats://127.0.0.1:4222",
            ],
            "cannot connect to PostgreSQL at postgresql://alice:***@127.0.0.1:{port}/db",
            "s3cr3t",
        ),
        (
            ["--nats-url", "nats://bob:hunter2@127.0.0.1:{port}"],
            "cannot connect to NATS at nats://bob:***@127.0.0.1:{port}",
            "hunter2",
        ),
    ],
)
def test_unreachable_server_gives_one_clear_line(
    tmp_path: Path, database_url: str, args: list[str], named: str, secret: str
) -> None:
    dead = free_port()  # nothing listens there
    argv = [a.format(port=dead) for a in args]
    if "--database-url" not in argv:
        argv = ["--database-url", database_url, *argv]
    proc = subprocess.run(
        [FLOWLEDGER, *argv, "serve", "--port", str(free_port())],
        env=_env(tmp_path / "home"),
        capture_output=True,
        timeout=60,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 2
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("flowledger: " + named.format(port=dead)), stderr
    assert secret not in stderr + proc.stdout.decode()
    assert "Traceback" not in stderr


def test_make_run_uses_every_core_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    """The default of `make run` on a machine with more than one core: a supervising parent,
    the embedded servers started once, one service process per core on the one port."""
    home = tmp_path / "home"
    port = free_port()
    proc = subprocess.Popen(
        [FLOWLEDGER, "serve", "--port", str(port), "--processes", "2"],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(port, proc)
        token = (home / "admin.token").read_text().strip()
        runs = httpx.get(f"http://127.0.0.1:{port}/v1/runs", headers={"Authorization": f"Bearer {token}"})
        assert runs.status_code == 200
        deadline = time.monotonic() + 60
        while len(services := _service_children(proc.pid)) < 2:
            assert time.monotonic() < deadline, services
            time.sleep(0.2)
        children = [psutil.Process(pid) for pid in services]
        assert len(_processes_of(home)) >= 2, "postgres and nats-server, started once by the parent"
    finally:
        _interrupt(proc)
    assert proc.returncode == 0, proc.stdout.read().decode() if proc.stdout else ""
    assert _leftovers(home) == [], "postgres or nats-server outlived the service"
    assert not [c for c in children if c.is_running()], "a service process outlived the parent"


def _service_children(parent: int) -> list[int]:
    """The ``serve`` processes the parent started (not the embedded servers)."""
    return [
        c.pid for c in psutil.Process(parent).children() if any("--listen-fd" in part for part in c.cmdline())
    ]
