"""Callables for ``python`` nodes that misbehave, named ``tests.helpers.bad_nodes:<name>``.

They run in the isolated worker processes only: no test imports this module, so a test can
check that the service process never did (``"tests.helpers.bad_nodes" not in sys.modules``).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from pathlib import Path
from typing import Any


def exit_now(document: dict[str, Any]) -> None:
    """``sys.exit(3)``."""
    sys.exit(3)


def exit_hard(document: dict[str, Any]) -> None:
    """``os._exit(7)``: no clean-up, no exception."""
    os._exit(7)


def segfault(document: dict[str, Any]) -> None:
    """A real SIGSEGV."""
    faulthandler._sigsegv()


def hog_memory(document: dict[str, Any]) -> int:
    """Allocates (and touches) 16 MiB blocks until 2 GiB: a memory limit stops it first."""
    blocks = []
    for _ in range(128):
        blocks.append(bytearray(16 * 1024 * 1024))
    return len(blocks)


def spin(document: dict[str, Any]) -> int:
    """Burns CPU for ``inputs.seconds`` of wall time (forever when absent); returns the loop count."""
    seconds = document["inputs"].get("seconds")
    deadline = None if seconds is None else time.monotonic() + float(seconds)
    count = 0
    while deadline is None or time.monotonic() < deadline:
        count += 1
    return count


async def spin_async(document: dict[str, Any]) -> int:
    """A coroutine function that burns CPU for ``inputs.seconds`` without ever awaiting: run on an
    event loop, it would hold that loop the whole time."""
    return spin(document)


def hold_gil(document: dict[str, Any]) -> int:
    """One C call that never releases the GIL (``sum`` over ``inputs.n`` numbers, about a second for
    40 million): run in a thread of the service, it would stall the service's event loop."""
    return sum(range(int(document["inputs"].get("n", 40_000_000))))


def crash_once(document: dict[str, Any]) -> str:
    """``os._exit(1)`` the first time (it leaves ``inputs.marker`` behind), then ``"recovered"``."""
    marker = Path(document["inputs"]["marker"])
    if not marker.exists():
        marker.write_text("crashed once")
        os._exit(1)
    return "recovered"


def sleep_forever(document: dict[str, Any]) -> None:
    """Writes its pid to ``inputs.pid_file``, then sleeps (until killed)."""
    Path(document["inputs"]["pid_file"]).write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def pid(document: dict[str, Any]) -> int:
    """The worker process's pid."""
    return os.getpid()


def noisy(document: dict[str, Any]) -> str:
    """Prints to stdout and stderr (which must not corrupt the worker's replies), then answers."""
    print("to stdout " * 1000)
    print("to stderr", file=sys.stderr)
    sys.stdout.flush()
    return "still fine"


def parent_pid(document: dict[str, Any]) -> int:
    return os.getppid()


class Unserializable:
    pass


def bad_output(document: dict[str, Any]) -> Any:
    return {"thing": Unserializable()}


def raise_value_error(document: dict[str, Any]) -> None:
    raise ValueError("bad input, not a crash")


def is_loaded(document: dict[str, Any]) -> bool:
    """Whether ``inputs.module`` is imported in the worker process."""
    return document["inputs"]["module"] in sys.modules
